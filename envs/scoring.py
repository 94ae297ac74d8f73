"""Task metrics of (possibly reduced) prompts under a frozen model, batched: the numbers the evaluator reports.

Every function takes a batch of :class:`~envs.tasks.examples.EncodedExample` and, optionally, one replacement context
(token ids) per example; ``contexts=None`` scores the full contexts. Each runs one batched call of the frozen
model, i.e. one forward pass per micro-batch. The reward the environment trains on is :mod:`envs.rewards`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from envs.lm.frozen_lm import FrozenLM
from envs.tasks.examples import EncodedExample

Contexts = Sequence[Sequence[int]] | None


def build_prompts(lm: FrozenLM, encs: Sequence[EncodedExample], contexts: Contexts = None) -> list[list[int]]:
    """Prompt ids for each example, with its full context or the given replacement."""
    ctxs = [e.context for e in encs] if contexts is None else contexts
    return [lm.build_prompt(c, e.question, e.answer_prefix)[0] for e, c in zip(encs, ctxs, strict=True)]


def exact_match(lm: FrozenLM, encs: Sequence[EncodedExample], contexts: Contexts = None) -> torch.Tensor:
    """``[B]`` bool: greedy decoding emits the answer tokens first (teacher-forced check)."""
    return lm.score_answers(build_prompts(lm, encs, contexts), [e.answer for e in encs]).greedy_match


def answer_loglik(lm: FrozenLM, encs: Sequence[EncodedExample], contexts: Contexts = None) -> torch.Tensor:
    """``[B]`` mean log-probability per answer token."""
    s = lm.score_answers(build_prompts(lm, encs, contexts), [e.answer for e in encs])
    return torch.stack([t.mean() for t in s.token_logprobs])


def choice_priors(lm: FrozenLM, encs: Sequence[EncodedExample]) -> list[torch.Tensor]:
    """Per example, ``[n_choices]`` log-probabilities of each choice with an empty context (the model's prior)."""
    if any(e.choices is None for e in encs):
        raise ValueError("choice_priors needs examples with choices")
    empty = build_prompts(lm, encs, [()] * len(encs))
    return [lp for lp, _ in lm.score_continuations(empty, [e.choices for e in encs])]


@dataclass
class ReducedScores:
    """How the frozen model does on a batch of (possibly reduced) prompts.

    Attributes:
        loglik: ``[B]`` mean log-probability per gold-answer token.
        exact_match: ``[B]`` bool: greedy decoding emits the gold answer.
        choice_raw: ``[B]`` bool: the gold answer has the highest summed log-probability among the choices; None
            unless every example has choices.
        choice_calibrated: ``[B]`` bool: the same after subtracting each choice's empty-context log-probability.
    """

    loglik: torch.Tensor
    exact_match: torch.Tensor
    choice_raw: torch.Tensor | None = None
    choice_calibrated: torch.Tensor | None = None


def continuations(encs: Sequence[EncodedExample]) -> list[list[Sequence[int]]]:
    """What :func:`score_reduced` scores after each prompt: the answer, then the choices if all examples have some."""
    with_choices = all(e.choices is not None for e in encs)
    return [[e.answer, *(e.choices if with_choices else ())] for e in encs]


def reduced_scores(
    encs: Sequence[EncodedExample],
    results: Sequence[tuple[torch.Tensor, torch.Tensor]],
    priors: Sequence[torch.Tensor] | None,
) -> ReducedScores:
    """The metrics of :func:`score_reduced` from each prompt's scored :func:`continuations`.

    Args:
        encs: The examples.
        results: Per example, ``(logprob [k], greedy [k])`` of its continuations (gold answer first).
        priors: Per example, its choices' empty-context log-probabilities; needed when every example has choices.

    Raises:
        ValueError: If the examples have choices and no priors are given.
    """
    loglik = torch.stack([lp[0] / len(e.answer) for (lp, _), e in zip(results, encs, strict=True)])
    em = torch.stack([g[0] for _, g in results])
    if not all(e.choices is not None for e in encs):
        return ReducedScores(loglik, em)
    if priors is None:
        raise ValueError("choice scores need the choices' empty-context log-probabilities (choice_priors)")
    raw, cal = [], []
    for (lp, _), e, prior in zip(results, encs, priors, strict=True):
        raw.append(int(lp[1:].argmax()) == e.answer_index)
        cal.append(int((lp[1:] - prior).argmax()) == e.answer_index)
    return ReducedScores(loglik, em, torch.tensor(raw), torch.tensor(cal))


def score_reduced(
    lm: FrozenLM,
    encs: Sequence[EncodedExample],
    contexts: Contexts = None,
    priors: Sequence[torch.Tensor] | None = None,
) -> ReducedScores:
    """Answer log-likelihood, exact match and, where every example has choices, choice accuracy; one pass.

    Each prompt runs through the model once; the gold answer and every choice are scored as continuations of it
    (:meth:`~envs.lm.frozen_lm.FrozenLM.score_continuations`). A choice's raw score is its summed log-probability;
    its calibrated score subtracts the same choice's log-probability with an empty context
    (:func:`choice_priors`, computed here unless given), which removes the small model's prior over answers.
    """
    res = lm.score_continuations(build_prompts(lm, encs, contexts), continuations(encs))
    if all(e.choices is not None for e in encs) and priors is None:
        priors = choice_priors(lm, encs)
    return reduced_scores(encs, res, priors)
