"""Held-out evaluation of reduction methods at equal kept ratios: the one evaluator.

``eval.py`` and the training-time evaluation (:class:`agents.callbacks.HeldoutEvalCallback`) both call
:func:`evaluate`. A trained reducer is evaluated through its text API (``TokenReducer.reduce_batch``), the
code users run. For every task x method x rate the frozen model scores the reduced prompts in one batched pass
per micro-batch. Metrics (means over examples, with 95% bootstrap confidence intervals on the task scores):

    em          greedy decoding emits the gold answer (teacher-forced check, exact)
    loglik      mean log-probability per answer token
    choice_acc  calibrated multiple-choice accuracy (tasks with choices; choice log-prob minus its log-prob
                with an empty context)
    kept_ratio  scored / original context tokens actually reached (a re-tokenizing reducer's kept text counts
                in the frozen model's tokens)
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
import os
import platform
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.baselines import KeepMethod, kept_tokens
from envs.examples import EncodedExample, encode_example
from envs.frozen_lm import FrozenLM
from envs.jsonl_tasks import iter_jsonl, validate_jsonl
from envs.scoring import choice_priors, score_reduced
from envs.task_specs import TaskSpec, split_specs
from policies.budget import Budget, keep_top

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


class _Accumulator:
    """Per-example metrics of one (task, method, budget), gathered chunk by chunk."""

    def __init__(self) -> None:
        self.em: list[float] = []
        self.ll: list[float] = []
        self.choice: list[float] = []
        self.kept: list[float] = []
        self.tokens_in: list[int] = []
        self.tokens_out: list[int] = []
        self.recall: list[float] = []
        self.reducer_s = 0.0
        self.model_s = 0.0
        self.has_choices = True


def _chunks(items: Iterable[EncodedExample], size: int) -> Iterator[list[EncodedExample]]:
    chunk: list[EncodedExample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def evaluate(
    lm: FrozenLM,
    methods: Sequence[KeepMethod],
    tasks: dict[str, Iterable[EncodedExample]],
    rates: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    n_html_examples: int = 2,
    progress: bool = True,
    chunk_size: int = 128,
) -> dict[str, Any]:
    """Evaluate every method on every task at every rate, streaming through each task once.

    A task is read ``chunk_size`` examples at a time and every method and budget is scored on that chunk before
    the next is read, so memory does not grow with the task (a generator of examples is fine); only the
    per-example metrics (a few floats each) are kept, for the means and bootstrap intervals.

    Args:
        lm: The frozen model that answers.
        methods: The methods to compare.
        tasks: Task name -> encoded examples (any iterable, read once).
        rates: Kept ratios to ask for, each in (0, 1].
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
        n_html_examples: Examples per task kept for the HTML page.
        progress: Show a progress bar (examples x methods x budgets).
        chunk_size: Examples scored together.

    Returns:
        The report dict (see the module docstring).
    """
    for r in rates:
        if not 0 < r <= 1:
            raise ValueError(f"rates must lie in (0, 1], got {r}")
    budgets = {m.name: [Budget(rate=r) for r in rates] if m.uses_rate else [Budget()] for m in methods}
    for m in methods:
        if m.adaptive:
            budgets[m.name].append(Budget())  # its own choice of how much to keep
    bar = tqdm(desc="evaluating", unit="example", disable=not progress)
    results, examples, counts = [], [], {}
    for task, items in tasks.items():
        acc: dict[tuple[str, int], _Accumulator] = {}
        skipped: set[str] = set()
        n_task = 0
        for encs in _chunks(items, chunk_size):
            priors = choice_priors(lm, encs) if all(e.choices is not None for e in encs) else None
            for method in methods:
                bar.set_postfix_str(f"{task}: {method.name} on examples {n_task + 1}-{n_task + len(encs)}")
                if not method.available(encs):
                    skipped.add(method.name)
                    continue
                score_s, scores = 0.0, None
                if method.static and method.uses_rate:  # rank once, select at every rate
                    t0 = time.perf_counter()
                    scores = method.scores(encs)
                    score_s = time.perf_counter() - t0
                for b, budget in enumerate(budgets[method.name]):
                    a = acc.setdefault((method.name, b), _Accumulator())
                    t0 = time.perf_counter()
                    if scores is not None:
                        masks = [keep_top(s, budget.max_tokens(len(s))) for s in scores]
                        contexts = [kept_tokens(e.context, m) for e, m in zip(encs, masks, strict=True)]
                    else:  # a re-tokenizing reducer's contexts are its kept text in the frozen model's tokens
                        masks, contexts = method.reduce(encs, budget)
                    a.reducer_s += score_s + time.perf_counter() - t0
                    t1 = time.perf_counter()
                    res = score_reduced(lm, encs, contexts, priors)
                    calibrated = res.choice_calibrated
                    a.model_s += time.perf_counter() - t1
                    em = res.exact_match.numpy().astype(np.float64)
                    a.em += em.tolist()
                    a.ll += res.loglik.tolist()
                    if calibrated is None:
                        a.has_choices = False
                    else:
                        a.choice += calibrated.numpy().astype(np.float64).tolist()
                    a.kept += [len(c) / len(e.context) for e, c in zip(encs, contexts, strict=True)]
                    a.tokens_in += [len(e.context) for e in encs]
                    a.tokens_out += [len(c) for c in contexts]
                    a.recall += [
                        (m & np.asarray(e.evidence)).sum() / sum(e.evidence)
                        for e, m in zip(encs, masks, strict=True)
                        if any(e.evidence)
                    ]
                    for i in range(max(0, min(n_html_examples - n_task, len(encs)))):
                        examples.append(
                            {
                                "task": task,
                                "method": method.name,
                                "rate": budget.rate,
                                "budget": _budget_kind(method, budget),
                                "index": n_task + i,
                                "question": encs[i].example.question,
                                "answer": encs[i].example.answer,
                                "tokens": [lm.decode([t]) for t in encs[i].context],
                                "token_ids": list(encs[i].context),
                                "keep": masks[i].astype(int).tolist(),
                                "correct": bool(em[i]),
                            }
                        )
            n_task += len(encs)
            bar.update(len(encs))
        counts[task] = n_task
        for method in methods:
            for b, budget in enumerate(budgets[method.name]):
                a = acc.get((method.name, b))
                if a is None or method.name in skipped:
                    continue
                em, ll = np.asarray(a.em), np.asarray(a.ll)
                choice = np.asarray(a.choice) if a.has_choices else None
                results.append(
                    {
                        "task": task,
                        "method": method.name,
                        "rate": budget.rate,
                        "budget": _budget_kind(method, budget),
                        "n": len(em),
                        "kept_ratio": float(np.mean(a.kept)),
                        "tokens_in": float(np.mean(a.tokens_in)),
                        "tokens_out": float(np.mean(a.tokens_out)),
                        "em": float(em.mean()),
                        "em_ci": bootstrap_ci(em, n_boot, seed),
                        "loglik": float(ll.mean()),
                        "loglik_ci": bootstrap_ci(ll, n_boot, seed),
                        "choice_acc": None if choice is None else float(choice.mean()),
                        "choice_acc_ci": None if choice is None else bootstrap_ci(choice, n_boot, seed),
                        "evidence_recall": float(np.mean(a.recall)) if a.recall else None,
                        "reducer_ms": 1000 * a.reducer_s / len(em),
                        "model_ms": 1000 * a.model_s / len(em),
                    }
                )
    bar.close()
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": lm.spec,
        "rates": [float(r) for r in rates],
        "tasks": counts,
        "methods": [m.name for m in methods],
        "results": results,
        "examples": examples,
    }


def _budget_kind(method: KeepMethod, budget: Budget) -> str:
    return "full" if not method.uses_rate else ("adaptive" if budget.adaptive else "rate")


class StreamedTask:
    """A JSONL task read and encoded example by example each time it is iterated (constant memory)."""

    def __init__(self, path: Path, tokenizer: Any) -> None:
        self.path = path
        self.tokenizer = tokenizer

    def __iter__(self) -> Iterator[EncodedExample]:
        for ex in iter_jsonl(self.path):
            yield encode_example(self.tokenizer, ex)


def load_eval_tasks(spec: str, tokenizer: Any, n: int, seed: int = 0) -> dict[str, Iterable[EncodedExample]]:
    """The examples of each task spec in a comma-joined spec string, keyed by the spec text.

    Synthetic specs give lists; a JSONL spec is checked line by line now (so a bad line fails before any work)
    and then streamed: :class:`StreamedTask`.

    Args:
        spec: E.g. ``"passkey:heldout,kv:heldout:n=50,jsonl:data.jsonl"``.
        tokenizer: The frozen model's tokenizer.
        n: Examples per synthetic spec that gives no ``n``.
        seed: Seed for synthetic specs that give none.

    Raises:
        ValueError: On an unknown or malformed spec, or a bad JSONL line.
    """
    specs = split_specs(spec)
    parsed = [TaskSpec.parse(s) for s in specs]  # fail early on a bad spec, before any file is read
    out: dict[str, Iterable[EncodedExample]] = {}
    for text, p in zip(specs, parsed, strict=True):
        if p.family == "jsonl":
            validate_jsonl(p.split)
            out[text] = StreamedTask(Path(p.split), tokenizer)
        else:
            out[text] = [encode_example(tokenizer, ex) for ex in p.examples(n, seed)]
    return out


def task_metric(row: dict[str, Any]) -> float:
    """The headline score of a report row: calibrated choice accuracy where the task has choices, else EM."""
    return row["choice_acc"] if row["choice_acc"] is not None else row["em"]
