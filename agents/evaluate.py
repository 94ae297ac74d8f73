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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.baselines import KeepMethod, kept_tokens
from envs.examples import EncodedExample, encode_example
from envs.frozen_lm import FrozenLM
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
    budgets = {m.name: [Budget(rate=r) for r in rates] if m.uses_rate else [Budget()] for m in methods}
    for m in methods:
        if m.adaptive:
            budgets[m.name].append(Budget())  # its own choice of how much to keep
    total = sum(len(budgets[m.name]) for _, m in jobs)
    bar = tqdm(total=total, desc="evaluating", disable=not progress)
    results, examples = [], []
    priors = {t: choice_priors(lm, e) if all(x.choices is not None for x in e) else None for t, e in tasks.items()}
    for task, method in jobs:
        encs = tasks[task]
        score_s, scores = 0.0, None
        if method.static and method.uses_rate:  # rank once, select at every rate
            t0 = time.perf_counter()
            scores = method.scores(encs)
            score_s = time.perf_counter() - t0
        for budget in budgets[method.name]:
            t0 = time.perf_counter()
            if scores is not None:
                masks = [keep_top(s, budget.max_tokens(len(s))) for s in scores]
                contexts = [kept_tokens(e.context, m) for e, m in zip(encs, masks, strict=True)]
            else:  # a re-tokenizing reducer's contexts are its kept text in the frozen model's tokens
                masks, contexts = method.reduce(encs, budget)
            reducer_ms = 1000 * (score_s + time.perf_counter() - t0) / len(encs)
            t1 = time.perf_counter()
            res, _, calibrated = score_reduced(lm, encs, contexts, priors[task])
            choice = None if calibrated is None else calibrated.numpy().astype(np.float64)
            model_ms = 1000 * (time.perf_counter() - t1) / len(encs)
            em = res.greedy_match.numpy().astype(np.float64)
            ll = np.array([t.mean().item() for t in res.token_logprobs])
            kept = np.array([len(c) / len(e.context) for e, c in zip(encs, contexts, strict=True)])
            recall = [
                (m & np.asarray(e.evidence)).sum() / sum(e.evidence)
                for e, m in zip(encs, masks, strict=True)
                if any(e.evidence)
            ]
            row = {
                "task": task,
                "method": method.name,
                "rate": budget.rate,
                "budget": "full" if not method.uses_rate else ("adaptive" if budget.adaptive else "rate"),
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
                        "budget": row["budget"],
                        "index": i,
                        "question": encs[i].example.question,
                        "answer": encs[i].example.answer,
                        "tokens": [lm.decode([t]) for t in encs[i].context],
                        "token_ids": list(encs[i].context),
                        "keep": masks[i].astype(int).tolist(),
                        "correct": bool(em[i]),
                    }
                )
            bar.update(1)
    bar.close()
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": lm.spec,
        "rates": [float(r) for r in rates],
        "tasks": {t: len(v) for t, v in tasks.items()},
        "methods": [m.name for m in methods],
        "results": results,
        "examples": examples,
    }


def load_eval_tasks(spec: str, tokenizer: Any, n: int, seed: int = 0) -> dict[str, list[EncodedExample]]:
    """Encoded examples of each task spec in a comma-joined spec string, keyed by the spec text.

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
    return {
        text: [encode_example(tokenizer, ex) for ex in p.examples(n, seed)]
        for text, p in zip(specs, parsed, strict=True)
    }


def task_metric(row: dict[str, Any]) -> float:
    """The headline score of a report row: calibrated choice accuracy where the task has choices, else EM."""
    return row["choice_acc"] if row["choice_acc"] is not None else row["em"]
