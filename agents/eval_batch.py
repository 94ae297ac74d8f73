"""The evaluator's batched scoring: distinct prompts of a chunk scored in one call, with their time shares.

Identical ``(example, prompt)`` requests of a chunk (``full`` and a rate that keeps everything, two methods that
keep the same tokens) are scored once. A call's time is shared out among its distinct prompts in proportion to the
tokens each computed (:meth:`~envs.lm.frozen_lm.FrozenLM.computed_tokens`: the prompt past the cached prefix plus the
continuations). :class:`EvalTrace` records what was computed, for benchmarks and tests.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from envs.lm.backends import PromptScores
from envs.lm.frozen_lm import FrozenLM


@dataclass
class EvalTrace:
    """What an evaluation computed, for benchmarks and tests: pass one to :func:`evaluate`.

    Attributes:
        keep_prompts: Also keep every distinct prompt scored (:attr:`scored`); memory grows with the tasks.
        calls: Batched scoring calls.
        seconds: Wall time inside them.
        requested: Prompts asked for, before de-duplication.
        prompts: Distinct prompts scored.
        tokens: Tokens those computed (:meth:`~envs.lm.frozen_lm.FrozenLM.computed_tokens`).
        prompt_tokens: Of those, the prompt tokens: ``tokens`` less the continuation tokens past their first (with
            the in-process backend, the prompts past the cached prefix).
        tokens_by_method: Method name (or ``choice priors``) -> tokens its prompts computed; a shared prompt counts
            for every method that asked for it.
        scored: With ``keep_prompts``, per scoring call: ``(lm, [(prompt, span), ...])`` of its distinct prompts.
        per_example: ``(task, method, budget kind, rate)`` -> metric name -> per-example values, in example order
            (``em``, ``loglik``, ``choice_acc`` where the task has choices, ``kept``).
    """

    keep_prompts: bool = False
    calls: int = 0
    seconds: float = 0.0
    requested: int = 0
    prompts: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    tokens_by_method: dict[str, int] = field(default_factory=dict)
    scored: list[tuple[FrozenLM, list[tuple[list[int], slice | None]]]] = field(default_factory=list)
    per_example: dict[tuple[str, str, str, float | None], dict[str, list[float]]] = field(default_factory=dict)

    def count(self, label: str, tokens: int) -> None:
        """Add ``tokens`` to ``label``'s computed tokens."""
        self.tokens_by_method[label] = self.tokens_by_method.get(label, 0) + tokens


@dataclass
class ScoreRequest:
    """One distinct prompt to score: its continuations, its span, and, once scored, its result and time share."""

    prompt: list[int]
    continuations: list[Sequence[int]]
    span: slice | None
    tokens: int = 0
    seconds: float = 0.0
    result: PromptScores | None = None

    def scores(self) -> PromptScores:
        """The scores, once the batch has run."""
        if self.result is None:
            raise RuntimeError("a request was read before it was scored")
        return self.result


class PromptBatch:
    """The distinct prompts one LM scores for one chunk; identical ``(example, prompt)`` requests are scored once.

    Args:
        lm: The scoring LM.
        trace: Where to count calls, prompts and tokens (None: nowhere).
    """

    def __init__(self, lm: FrozenLM, trace: EvalTrace | None) -> None:
        self.lm = lm
        self.trace = trace
        self.requests: dict[Hashable, ScoreRequest] = {}
        self.pending: list[ScoreRequest] = []

    def add(
        self, example: int, prompt: list[int], conts: Sequence[Sequence[int]], span: slice | None = None
    ) -> ScoreRequest:
        """The request for ``prompt`` of example ``example``, new or shared with an earlier identical one.

        Raises:
            RuntimeError: If a request already scored is asked for with continuations or a span it lacked.
        """
        key = (example, tuple(prompt))
        if self.trace is not None:
            self.trace.requested += 1
        req = self.requests.get(key)
        if req is None:
            req = self.requests[key] = ScoreRequest(list(prompt), list(conts), span)
            self.pending.append(req)
            return req
        grows = (conts and not req.continuations) or (span is not None and req.span is None)
        if grows and req.result is not None:
            raise RuntimeError("internal: a scored prompt was asked for again with more to score")
        if conts and not req.continuations:
            req.continuations = list(conts)
        if span is not None and req.span is None:
            req.span = span
        return req

    def run(self) -> None:
        """Score every pending request in one batched call; share the call's time out by computed tokens."""
        reqs, self.pending = self.pending, []
        if not reqs:
            return
        for r in reqs:
            r.tokens = self.lm.computed_tokens(r.prompt, r.continuations, r.span)
        t0 = time.perf_counter()
        res = self.lm.score_continuations_and_spans(
            [r.prompt for r in reqs], [r.continuations for r in reqs], [r.span for r in reqs]
        )
        seconds = time.perf_counter() - t0
        total = max(sum(r.tokens for r in reqs), 1)
        for r, x in zip(reqs, res, strict=True):
            r.result = x
            r.seconds = seconds * r.tokens / total
        if self.trace is not None:
            t = self.trace
            t.calls += 1
            t.seconds += seconds
            t.prompts += len(reqs)
            t.tokens += sum(r.tokens for r in reqs)
            t.prompt_tokens += sum(r.tokens - sum(len(c) - 1 for c in r.continuations) for r in reqs)
            if t.keep_prompts:
                t.scored.append((self.lm, [(r.prompt, r.span) for r in reqs]))
