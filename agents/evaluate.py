"""Held-out evaluation of reduction methods at equal kept ratios, and the reports it writes.

For every task x method x rate the frozen model scores the reduced prompts in one batched pass per
micro-batch. Metrics (means over examples, with 95% bootstrap confidence intervals on the task scores):

    em          greedy decoding emits the gold answer (teacher-forced check, exact)
    loglik      mean log-probability per answer token
    choice_acc  calibrated multiple-choice accuracy (tasks with choices; choice log-prob minus its log-prob
                with an empty context)
    kept_ratio  kept / original context tokens actually reached
    evidence_recall  share of the recorded evidence tokens kept (tasks that record evidence)
    tokens_in, tokens_out   mean context tokens before / after reduction
    reducer_ms  ranking time per example (the method's own cost)
    model_ms    frozen-model scoring time per example

``report.json`` keys (schema_version 1): ``schema_version``, ``created``, ``machine``, ``model``, ``rates``,
``tasks`` (name -> n_examples), ``methods``, ``results`` (list of rows with ``task``, ``method``, ``rate``,
the metrics above, and ``<metric>_ci`` = [low, high] for em, loglik and choice_acc), ``examples``.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.baselines import KeepMethod, select
from envs.frozen_lm import FrozenLM
from envs.scoring import build_prompts, choice_accuracy
from envs.tasks import EncodedExample
from policies.fileio import atomic_directory

SCHEMA_VERSION = 1


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def evaluate(
    lm: FrozenLM,
    methods: Sequence[KeepMethod],
    tasks: dict[str, list[EncodedExample]],
    rates: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    n_html_examples: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every method on every task at every rate.

    Args:
        lm: The frozen model that answers.
        methods: The methods to compare.
        tasks: Task name -> encoded examples.
        rates: Kept ratios to ask for, each in (0, 1].
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
        n_html_examples: Examples per task kept for the HTML page.
        progress: Show a progress bar.

    Returns:
        The report dict (see the module docstring).
    """
    for r in rates:
        if not 0 < r <= 1:
            raise ValueError(f"rates must lie in (0, 1], got {r}")
    jobs = [(t, m) for t in tasks for m in methods if m.available(tasks[t])]
    total = sum(len(rates) if m.uses_rate else 1 for _, m in jobs)
    bar = tqdm(total=total, desc="evaluating", disable=not progress)
    results, examples = [], []
    for task, method in jobs:
        encs = tasks[task]
        t0 = time.perf_counter()
        scores = method.scores(encs)
        reducer_ms = 1000 * (time.perf_counter() - t0) / len(encs)
        for rate in rates if method.uses_rate else [1.0]:
            masks = [select(s, rate) if method.uses_rate else np.ones(len(s), bool) for s in scores]
            contexts = [
                tuple(t for t, k in zip(e.context, m, strict=True) if k) for e, m in zip(encs, masks, strict=True)
            ]
            t1 = time.perf_counter()
            res = lm.score_answers(build_prompts(lm, encs, contexts), [e.answer for e in encs])
            choice = None
            if all(e.choices is not None for e in encs):
                choice = choice_accuracy(lm, encs, contexts)[1].numpy().astype(np.float64)
            model_ms = 1000 * (time.perf_counter() - t1) / len(encs)
            em = res.greedy_match.numpy().astype(np.float64)
            ll = np.array([t.mean().item() for t in res.token_logprobs])
            kept = np.array([m.sum() / len(m) for m in masks])
            recall = [
                (m & np.asarray(e.evidence)).sum() / sum(e.evidence)
                for e, m in zip(encs, masks, strict=True)
                if any(e.evidence)
            ]
            row = {
                "task": task,
                "method": method.name,
                "rate": float(rate) if method.uses_rate else None,
                "n": len(encs),
                "kept_ratio": float(kept.mean()),
                "tokens_in": float(np.mean([len(e.context) for e in encs])),
                "tokens_out": float(np.mean([len(c) for c in contexts])),
                "em": float(em.mean()),
                "em_ci": bootstrap_ci(em, n_boot, seed),
                "loglik": float(ll.mean()),
                "loglik_ci": bootstrap_ci(ll, n_boot, seed),
                "choice_acc": None if choice is None else float(choice.mean()),
                "choice_acc_ci": None if choice is None else bootstrap_ci(choice, n_boot, seed),
                "evidence_recall": float(np.mean(recall)) if recall else None,
                "reducer_ms": reducer_ms,
                "model_ms": model_ms,
            }
            results.append(row)
            for i in range(min(n_html_examples, len(encs))):
                examples.append(
                    {
                        "task": task,
                        "method": method.name,
                        "rate": row["rate"],
                        "index": i,
                        "question": encs[i].example.question,
                        "answer": encs[i].example.answer,
                        "tokens": [lm.decode([t]) for t in encs[i].context],
                        "keep": masks[i].astype(int).tolist(),
                        "correct": bool(em[i]),
                    }
                )
            bar.update(1)
    bar.close()
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": lm.spec,
        "rates": [float(r) for r in rates],
        "tasks": {t: len(v) for t, v in tasks.items()},
        "methods": [m.name for m in methods],
        "results": results,
        "examples": examples,
    }


def _fmt(value: float | None, ci: list[float] | None = None, pct: bool = True) -> str:
    if value is None:
        return "-"
    if pct:
        s = f"{100 * value:.0f}%"
        return s + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")
    s = f"{value:.2f}"
    return s + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def markdown_table(report: dict[str, Any]) -> str:
    """One table per task: rows are method @ rate; 95% bootstrap intervals in brackets."""
    lines = [f"Model: `{report['model']}` - {report['created']} - {report['machine']['platform']}", ""]
    for task, n in report["tasks"].items():
        rows = [r for r in report["results"] if r["task"] == task]
        has_choice = any(r["choice_acc"] is not None for r in rows)
        lines += [f"### {task} (n={n})", ""]
        head = "| method | rate | kept | tokens in -> out | EM | answer log-lik/token |"
        sep = "|---|---|---|---|---|---|"
        if has_choice:
            head += " choice acc (calibrated) |"
            sep += "---|"
        head += " reducer ms | model ms |"
        sep += "---|---|"
        lines += [head, sep]
        for r in rows:
            rate = "-" if r["rate"] is None else f"{r['rate']:.1f}"
            cells = [
                r["method"],
                rate,
                f"{100 * r['kept_ratio']:.0f}%",
                f"{r['tokens_in']:.0f} -> {r['tokens_out']:.0f}",
                _fmt(r["em"], r["em_ci"]),
                _fmt(r["loglik"], r["loglik_ci"], pct=False),
            ]
            if has_choice:
                cells.append(_fmt(r["choice_acc"], r["choice_acc_ci"]))
            cells += [f"{r['reducer_ms']:.1f}", f"{r['model_ms']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def pareto_plot(report: dict[str, Any], path: Path) -> None:
    """EM against kept ratio, one line per method, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for method in report["methods"]:
            rows = sorted(
                (r for r in report["results"] if r["task"] == task and r["method"] == method),
                key=lambda r: r["kept_ratio"],
            )
            if not rows:
                continue
            xs, ys = [r["kept_ratio"] for r in rows], [r["em"] for r in rows]
            ax.plot(
                xs, ys, marker="*" if method == "full" else "o", label=method, markersize=10 if method == "full" else 5
            )
        ax.set_title(task)
        ax.set_xlabel("kept ratio of context tokens")
        ax.set_ylabel("exact match")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples_html(report: dict[str, Any]) -> str:
    """A page with a few examples per task and method; kept tokens highlighted, dropped tokens greyed."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>tokenkeep examples</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:auto}"
        " .k{background:#ffe58a} .d{color:#aaa} .ex{border:1px solid #ddd;padding:8px;margin:8px 0}"
        " .ok{color:#080} .bad{color:#c00}</style>",
        f"<h1>tokenkeep: kept tokens</h1><p>Model {html.escape(report['model'])}, {report['created']}. "
        "<span class='k'>highlighted</span> = kept, <span class='d'>grey</span> = dropped.</p>",
    ]
    mid = report["rates"][len(report["rates"]) // 2] if report["rates"] else None
    for ex in report["examples"]:
        if ex["rate"] is not None and ex["rate"] != mid:
            continue
        body = "".join(
            f"<span class='{'k' if k else 'd'}'>{html.escape(t)}</span>"
            for t, k in zip(ex["tokens"], ex["keep"], strict=True)
        )
        verdict = "<span class='ok'>correct</span>" if ex["correct"] else "<span class='bad'>wrong</span>"
        rate = "full" if ex["rate"] is None else f"rate {ex['rate']}"
        parts.append(
            f"<div class='ex'><b>{html.escape(ex['task'])} #{ex['index']} - {html.escape(ex['method'])} ({rate})"
            f"</b> {verdict}<br>Q: {html.escape(ex['question'])} A: {html.escape(ex['answer'])}<p>{body}</p></div>"
        )
    return "\n".join(parts)


def write_report(report: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write report.json, report.md, pareto.png and examples.html atomically into ``out``.

    Raises:
        FileExistsError: If ``out`` exists and is not empty.
    """
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown_table(report) + "\n")
        pareto_plot(report, tmp / "pareto.png")
        (tmp / "examples.html").write_text(examples_html(report) + "\n")
    return Path(out)
