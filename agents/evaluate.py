"""Held-out evaluation of reduction methods at equal kept ratios: the one evaluator.

``eval.py`` and the training-time evaluation (:class:`agents.callbacks.HeldoutEvalCallback`) both call
:func:`evaluate`. A trained reducer is evaluated through its text API (``TokenReducer.reduce_batch``), the
code users run.

Details: ``docs/internals.md``, section ``agents.evaluate``.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.baselines import KeepMethod, SurprisalMethod, kept_tokens
from agents.eval_batch import EvalTrace, PromptBatch, ScoreRequest
from agents.eval_metrics import bootstrap_ci, headline_metric, machine_info, readability
from envs.lm.frozen_lm import FrozenLM
from envs.scoring import continuations, reduced_scores
from envs.tasks.examples import EncodedExample, encode_example
from envs.tasks.jsonl import iter_jsonl, validate_jsonl
from envs.tasks.real_text import REAL_FAMILIES
from envs.tasks.specs import TaskSpec, split_specs
from policies.budget import Budget, keep_top

SCHEMA_VERSION = 2


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
        self.readable: list[float] = []
        self.reducer_s = 0.0
        self.model_s = 0.0
        self.has_choices = True
        self.last_masks: list[np.ndarray] = []  # the latest chunk's keep masks (for the HTML page)


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
    trace: EvalTrace | None = None,
    adaptive: bool = True,
) -> dict[str, Any]:
    """Evaluate every method on every task at every rate, streaming through each task once.

    A task is read ``chunk_size`` examples at a time, every method and budget scored on a chunk in two batched
    calls (``docs/internals.md``, ``agents.evaluate``): memory does not grow with the task; only per-example
    metrics are kept. Results do not depend on ``chunk_size`` (up to float rounding) but for ``random``'s draws.

    Args:
        lm: The frozen model that answers.
        methods: The methods to compare.
        tasks: Task name -> encoded examples (any iterable, read once).
        rates: Kept ratios to ask for, each in (0, 1].
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
        n_html_examples: Examples per task kept for the HTML page.
        progress: Show a progress bar (examples).
        chunk_size: Examples scored together.
        trace: Filled with what was computed (prompts, tokens, time, per-example scores), when given.
        adaptive: Also score each adaptive method (a trained reducer) at its own budget, besides the rates.

    Returns:
        The report dict (its keys: ``docs/internals.md``, ``agents.evaluate``).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    budgets = _method_budgets(methods, rates, adaptive)
    sizes = [len(items) if hasattr(items, "__len__") else None for items in tasks.values()]
    total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    bar = tqdm(desc="evaluating", unit="example", total=total, disable=not progress)
    results, examples, counts = [], [], {}
    for task, items in tasks.items():
        rows, shown, counts[task] = _evaluate_task(
            lm, methods, task, items, budgets, chunk_size, n_html_examples, trace, bar
        )
        results += [_result_row(task, m, budget, a, n_boot, seed, trace) for m, budget, a in rows]
        examples += shown
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


def _method_budgets(methods: Sequence[KeepMethod], rates: Sequence[float], adaptive: bool) -> dict[str, list[Budget]]:
    """Per method, its budgets: every rate (once, rate-free, for a method that ignores it), plus its own if adaptive."""
    for r in rates:
        if not 0 < r <= 1:
            raise ValueError(f"rates must lie in (0, 1], got {r}")
    budgets = {m.name: [Budget(rate=r) for r in rates] if m.uses_rate else [Budget()] for m in methods}
    for m in methods:
        if m.adaptive and adaptive:
            budgets[m.name].append(Budget())  # its own choice of how much to keep
    return budgets


def _evaluate_task(
    lm: FrozenLM,
    methods: Sequence[KeepMethod],
    task: str,
    items: Iterable[EncodedExample],
    budgets: dict[str, list[Budget]],
    chunk_size: int,
    n_html_examples: int,
    trace: EvalTrace | None,
    bar: Any,
) -> tuple[list[tuple[KeepMethod, Budget, _Accumulator]], list[dict[str, Any]], int]:
    """One task, chunk by chunk: per (method, budget) its accumulated metrics, the HTML examples, the count.

    A method that cannot run on some chunk (:meth:`KeepMethod.available`) is left out of the task's rows.
    """
    acc: dict[tuple[str, int], _Accumulator] = {}
    skipped: set[str] = set()
    examples: list[dict[str, Any]] = []
    n_task = 0
    for encs in _chunks(items, chunk_size):
        available = [m.available(encs) for m in methods]
        active = [m for m, ok in zip(methods, available, strict=True) if ok]
        skipped.update(m.name for m, ok in zip(methods, available, strict=True) if not ok)
        span = f"{task}: examples {n_task + 1}-{n_task + len(encs)}"
        _evaluate_chunk(lm, active, encs, budgets, acc, trace, lambda what, s=span: bar.set_postfix_str(f"{s}: {what}"))
        n_html = max(0, min(n_html_examples - n_task, len(encs)))
        examples += [
            _html_example(lm, task, m, budget, acc[(m.name, b)], encs, i, n_task)
            for m in active
            for b, budget in enumerate(budgets[m.name])
            for i in range(n_html)
        ]
        n_task += len(encs)
        bar.update(len(encs))
    rows = [
        (m, budget, acc[(m.name, b)])
        for m in methods
        if m.name not in skipped
        for b, budget in enumerate(budgets[m.name])
        if (m.name, b) in acc
    ]
    return rows, examples, n_task


def _html_example(
    lm: FrozenLM,
    task: str,
    method: KeepMethod,
    budget: Budget,
    a: _Accumulator,
    encs: list[EncodedExample],
    i: int,
    n_task: int,
) -> dict[str, Any]:
    """Example ``i`` of the chunk just scored (``n_task`` examples before it), as the HTML page shows it."""
    return {
        "task": task,
        "method": method.name,
        "rate": budget.rate,
        "budget": _budget_kind(method, budget),
        "index": n_task + i,
        "question": encs[i].example.question,
        "answer": encs[i].example.answer,
        "tokens": [lm.decode([t]) for t in encs[i].context],
        "token_ids": list(encs[i].context),
        "keep": a.last_masks[i].astype(int).tolist(),
        "correct": bool(a.em[len(a.em) - len(encs) + i]),
    }


def _result_row(
    task: str, method: KeepMethod, budget: Budget, a: _Accumulator, n_boot: int, seed: int, trace: EvalTrace | None
) -> dict[str, Any]:
    """One report row: the means and intervals of a (task, method, budget)'s per-example metrics."""
    em, ll = np.asarray(a.em), np.asarray(a.ll)
    choice = np.asarray(a.choice) if a.has_choices else None
    if trace is not None:
        key = (task, method.name, _budget_kind(method, budget), budget.rate)
        trace.per_example[key] = {"em": a.em, "loglik": a.ll, "kept": a.kept}
        if choice is not None:
            trace.per_example[key]["choice_acc"] = a.choice
    return {
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
        "readability": float(np.nanmean(a.readable)) if np.isfinite(a.readable).any() else None,
        "metric": headline_metric(task, choice is not None),
        "reducer_ms": 1000 * a.reducer_s / len(em),
        "model_ms": 1000 * a.model_s / len(em),
    }


def _evaluate_chunk(
    lm: FrozenLM,
    methods: Sequence[KeepMethod],
    encs: list[EncodedExample],
    budgets: dict[str, list[Budget]],
    acc: dict[tuple[str, int], _Accumulator],
    trace: EvalTrace | None,
    status: Callable[[str], None],
) -> None:
    """Reduce and score one chunk with every method at every budget; add the metrics to ``acc``.

    ``status`` is told what is being done (the progress bar's text).
    """
    conts = continuations(encs)
    with_choices = all(e.choices is not None for e in encs)
    batches: dict[int, PromptBatch] = {id(lm): PromptBatch(lm, trace)}
    main = batches[id(lm)]
    # Step 1: what depends on the example only.
    prior_reqs = []
    if with_choices:
        prior_reqs = [
            main.add(i, lm.build_prompt((), e.question, e.answer_prefix)[0], conts[i]) for i, e in enumerate(encs)
        ]
    full_prompts = [lm.build_prompt(e.context, e.question, e.answer_prefix)[0] for e in encs]
    surprisal: dict[str, list[ScoreRequest]] = {}
    for m in methods:
        if isinstance(m, SurprisalMethod):
            batch = batches.setdefault(id(m.lm), PromptBatch(m.lm, trace))
            reqs = []
            for i, e in enumerate(encs):
                prompt, span = m.surprisal_prompt(e)
                # The full prompt's continuations cost little more than its forward, which this request runs anyway.
                answers = conts[i] if m.lm is lm and prompt == full_prompts[i] else []
                reqs.append(batch.add(i, prompt, answers, span))
            surprisal[m.name] = reqs
    status(f"scoring {sum(len(b.pending) for b in batches.values())} full-context / prior / surprisal prompts")
    for batch in batches.values():
        batch.run()
    priors = [r.scores().logprob[1:] for r in prior_reqs] if with_choices else None
    if trace is not None and prior_reqs:
        trace.count("choice priors", sum(r.tokens for r in prior_reqs))
    # Step 2: every method reduces at every budget, then all reduced prompts are scored together.
    rows: list[tuple[KeepMethod, int, list[np.ndarray], list[tuple[int, ...]], list[ScoreRequest]]] = []
    for m in methods:
        status(f"reducing with {m.name}")
        rank_s, scores = 0.0, None
        if m.static and m.uses_rate:  # rank once, select at every rate
            t0 = time.perf_counter()
            if isinstance(m, SurprisalMethod):  # its ranking forward ran in step 1: count its share of it
                scores = [m.scores_from(r.scores().span_logprobs) for r in surprisal[m.name]]
                rank_s = sum(r.seconds for r in surprisal[m.name])
                if trace is not None:
                    trace.count(m.name, sum(r.tokens for r in surprisal[m.name]))
            else:
                scores = m.scores(encs)
            rank_s += time.perf_counter() - t0
        for b, budget in enumerate(budgets[m.name]):
            a = acc.setdefault((m.name, b), _Accumulator())
            t0 = time.perf_counter()
            if scores is not None:
                masks = [keep_top(s, budget.max_tokens(len(s))) for s in scores]
                contexts = [kept_tokens(e.context, k) for e, k in zip(encs, masks, strict=True)]
            else:  # a re-tokenizing reducer's contexts are its kept text in the frozen model's tokens
                masks, contexts = m.reduce(encs, budget)
            a.reducer_s += rank_s + time.perf_counter() - t0
            reqs = [
                main.add(i, lm.build_prompt(c, e.question, e.answer_prefix)[0], conts[i])
                for i, (e, c) in enumerate(zip(encs, contexts, strict=True))
            ]
            rows.append((m, b, masks, contexts, reqs))
    status(f"scoring {len(main.pending)} distinct reduced prompts")
    main.run()
    for m, b, masks, contexts, reqs in rows:
        a = acc[(m.name, b)]
        a.model_s += sum(r.seconds for r in reqs)
        if trace is not None:
            trace.count(m.name, sum(r.tokens for r in reqs))
        res = reduced_scores(encs, [(r.scores().logprob, r.scores().greedy) for r in reqs], priors)
        em = res.exact_match.numpy().astype(np.float64)
        a.em += em.tolist()
        a.ll += res.loglik.tolist()
        if res.choice_calibrated is None:
            a.has_choices = False
        else:
            a.choice += res.choice_calibrated.numpy().astype(np.float64).tolist()
        a.kept += [len(c) / len(e.context) for e, c in zip(encs, contexts, strict=True)]
        a.tokens_in += [len(e.context) for e in encs]
        a.tokens_out += [len(c) for c in contexts]
        a.recall += [
            (k & np.asarray(e.evidence)).sum() / sum(e.evidence)
            for e, k in zip(encs, masks, strict=True)
            if any(e.evidence)
        ]
        a.readable += [readability(e.example.context, e.offsets, k) for e, k in zip(encs, masks, strict=True)]
        a.last_masks = masks


def _budget_kind(method: KeepMethod, budget: Budget) -> str:
    return "full" if not method.uses_rate else ("adaptive" if budget.adaptive else "rate")


class StreamedTask:
    """A JSONL task read and encoded example by example each time it is iterated (constant memory).

    ``n``: its number of examples (:func:`~envs.tasks.jsonl.validate_jsonl` counts them), its ``len``.
    """

    def __init__(self, path: Path, tokenizer: Any, n: int) -> None:
        self.path = path
        self.tokenizer = tokenizer
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[EncodedExample]:
        for ex in iter_jsonl(self.path):
            yield encode_example(self.tokenizer, ex)


def load_eval_tasks(
    spec: str, tokenizer: Any, n: int, seed: int = 0, n_real: int | None = None
) -> dict[str, Iterable[EncodedExample]]:
    """The examples of each task spec in a comma-joined spec string, keyed by the spec text.

    Synthetic specs give lists; a JSONL spec is checked line by line now (so a bad line fails before any work)
    and then streamed: :class:`StreamedTask`.

    Args:
        spec: E.g. ``"passkey:heldout,kv:heldout:n=50,jsonl:data.jsonl"``.
        tokenizer: The frozen model's tokenizer.
        n: Examples per built-in spec that gives no ``n``.
        seed: Seed for built-in specs that give none.
        n_real: Examples per real-text spec (:data:`envs.tasks.real_text.REAL_FAMILIES`) that gives no ``n``
            (default: ``n``).

    Raises:
        ValueError: On an unknown or malformed spec, or a bad JSONL line.
    """
    specs = split_specs(spec)
    parsed = [TaskSpec.parse(s) for s in specs]  # fail early on a bad spec, before any file is read
    out: dict[str, Iterable[EncodedExample]] = {}
    for text, p in zip(specs, parsed, strict=True):
        if p.family == "jsonl":
            out[text] = StreamedTask(Path(p.split), tokenizer, n=validate_jsonl(p.split))
        else:
            count = n_real if n_real is not None and p.family in REAL_FAMILIES else n
            out[text] = [encode_example(tokenizer, ex) for ex in p.examples(count, seed)]
    return out
