"""Evaluation reports: ``report.json``, ``report.md``, ``pareto.png`` and ``examples.html``, written atomically.

Also a training run's learning curve, ``RUN/learning_curve.png``, drawn from its ``eval_history.json``.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

from policies.fileio import atomic_directory


def _fmt(value: float | None, ci: list[float] | None = None, pct: bool = True) -> str:
    if value is None:
        return "-"
    if pct:
        s = f"{100 * value:.0f}%"
        return s + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")
    s = f"{value:.2f}"
    return s + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


METRIC_LABELS = {
    "choice_acc": "choice accuracy (calibrated)",
    "em": "exact match",
    "loglik": "answer log-likelihood / token",
}


def _metric(rows: list[dict[str, Any]]) -> str:
    """The headline metric of a task's rows (their ``metric``; older reports: choice accuracy, else EM)."""
    for r in rows:
        if r.get("metric"):
            return r["metric"]
    return "choice_acc" if any(r["choice_acc"] is not None for r in rows) else "em"


def markdown_table(report: dict[str, Any]) -> str:
    """One table per task: rows are method @ rate; 95% bootstrap intervals in brackets."""
    lines = [f"Model: `{report['model']}` - {report['created']} - {report['machine']['platform']}", ""]
    for task, n in report["tasks"].items():
        rows = [r for r in report["results"] if r["task"] == task]
        has_choice = any(r["choice_acc"] is not None for r in rows)
        has_recall = any(r.get("evidence_recall") is not None for r in rows)
        lines += [f"### {task} (n={n}; headline: {METRIC_LABELS[_metric(rows)]})", ""]
        head = "| method | rate | kept | tokens in -> out | EM | answer log-lik/token |"
        sep = "|---|---|---|---|---|---|"
        if has_choice:
            head += " choice acc (calibrated) |"
            sep += "---|"
        if has_recall:
            head += " evidence recall |"
            sep += "---|"
        head += " readability | reducer ms | model ms |"
        sep += "---|---|---|"
        lines += [head, sep]
        for r in rows:
            rate = f"{r['rate']:.1f}" if r["rate"] is not None else ("auto" if r.get("budget") == "adaptive" else "-")
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
            if has_recall:
                cells.append(_fmt(r.get("evidence_recall"), pct=False))
            cells += [_fmt(r.get("readability"), pct=False), f"{r['reducer_ms']:.1f}", f"{r['model_ms']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _grid(n_panels: int, columns: int = 4) -> tuple[int, int]:
    """Rows and columns of a grid of ``n_panels`` panels, at most ``columns`` wide."""
    cols = max(1, min(columns, n_panels))
    return -(-n_panels // cols), cols


def pareto_plot(report: dict[str, Any], path: Path) -> None:
    """Per task, its headline metric and, where it marks evidence, the evidence recall, against the kept ratio.

    One line per method; the panels (one or two per task) in a grid at most four wide.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"])
    panels: list[tuple[str, str]] = []
    for task in tasks:
        rows = [r for r in report["results"] if r["task"] == task]
        panels.append((task, _metric(rows)))
        if any(r.get("evidence_recall") is not None for r in rows):
            panels.append((task, "evidence_recall"))
    n_rows, n_cols = _grid(len(panels))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 3.0 * n_rows), squeeze=False)
    colours = {m: f"C{i % 10}" for i, m in enumerate(report["methods"])}
    for ax, (task, metric) in zip(axes.flat, panels, strict=False):
        for method in report["methods"]:
            mine = [r for r in report["results"] if r["task"] == task and r["method"] == method]
            rows = sorted((r for r in mine if r.get(metric) is not None), key=lambda r: r["kept_ratio"])
            if not rows:
                continue
            full = method == "full"
            ax.plot(
                [r["kept_ratio"] for r in rows], [r[metric] for r in rows], marker="*" if full else "o",
                markersize=9 if full else 4, color=colours[method], label=method,
            )  # fmt: skip
        label = "evidence recall" if metric == "evidence_recall" else METRIC_LABELS[metric]
        ax.set_title(f"{task.split(':')[0]}: {label}", fontsize=9)
        ax.set_xlabel("kept ratio", fontsize=8)
        ax.set_xlim(0, 1.05)
        if metric != "loglik":
            ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if n_rows > 1 else 0.12, 1, 1))
    fig.savefig(path, dpi=100)
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
        rate = f"rate {ex['rate']}" if ex["rate"] is not None else ex.get("budget", "full")
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


def learning_curve_plot(curves: dict[str, list[dict[str, Any]]], path: Path, rate: float = 0.3) -> None:
    """Held-out headline score against episodes, one panel per task in a grid, one line per run; heuristics flat.

    Args:
        curves: Run label -> its ``eval_history.json`` entries (from :class:`agents.callbacks.HeldoutEvalCallback`).
        path: The PNG to write.
        rate: The keep rate whose scores are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(curves.values()))
    tasks = sorted({k.split("/")[0] for entry in first for k in entry if "/" in k}, key=lambda t: t.split(":")[0])
    n_rows, n_cols = _grid(len(tasks))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 3.0 * n_rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for label, hist in curves.items():
            xs = [h["timesteps"] for h in hist if f"{task}/policy_rate{rate}" in h]
            ys = [h[f"{task}/policy_rate{rate}"] for h in hist if f"{task}/policy_rate{rate}" in h]
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        last = first[-1]
        best = last.get(f"{task}/best_heuristic_name_rate{rate}", "?")
        for key, style, label in (
            (f"{task}/best_heuristic_rate{rate}", "--", f"best heuristic ({best})"),
            (f"{task}/random_rate{rate}", ":", "random"),
            (f"{task}/full", "-.", "full context"),
        ):
            if key in last:
                ax.axhline(last[key], linestyle=style, color="grey", linewidth=1, label=label)
        metric = last.get(f"{task}/metric", "choice_acc or em")
        ax.set_title(f"{task.split(':')[0]} ({metric}, rate {rate})", fontsize=9)
        ax.set_xlabel("training episodes", fontsize=8)
        if metric != "loglik":
            ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_learning_curve(run_dir: str | os.PathLike[str], rate: float | None = None) -> Path | None:
    """Draw ``run_dir/learning_curve.png`` from ``run_dir/eval_history.json`` (written atomically).

    Args:
        run_dir: A training run directory.
        rate: The keep rate to draw (default: 0.3 if the run evaluated it, else its lowest evaluated rate).

    Returns:
        The PNG's path, or None when the run has no periodic held-out evaluation to draw.

    Raises:
        ValueError: If ``eval_history.json`` is not valid JSON, or ``rate`` was not evaluated.
    """
    run_dir = Path(run_dir)
    source = run_dir / "eval_history.json"
    if not source.exists():
        return None
    try:
        history = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON: {err}") from err
    pattern = re.compile(r"/policy_rate([0-9.]+)$")
    rates = sorted({float(m.group(1)) for entry in history for k in entry if (m := pattern.search(k))})
    if not rates:
        return None
    if rate is None:
        rate = 0.3 if 0.3 in rates else rates[0]
    elif rate not in rates:
        raise ValueError(f"{source} has no evaluation at rate {rate}; it has {rates}")
    path = run_dir / "learning_curve.png"
    tmp = run_dir / ".learning_curve.tmp.png"  # a dot-file: a killed run's leftover is removed on resume
    learning_curve_plot({run_dir.name: history}, tmp, rate=rate)
    os.replace(tmp, path)
    return path
