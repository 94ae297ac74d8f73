"""Task scores of (possibly reduced) prompts under a frozen model, batched.

Every function takes a batch of :class:`~envs.examples.EncodedExample` and, optionally, one replacement context
(token ids) per example; ``contexts=None`` scores the full contexts. Each runs one
:meth:`~envs.frozen_lm.FrozenLM.score_answers` call, i.e. one forward pass per micro-batch.

Reward scores (higher is better) used by the environment:

* ``loglik``: mean log p(answer token | prompt), per answer token. Relative: the reward uses
  ``score - full_context_score``, so keeping everything scores 0.
* ``choice``: where an example has choices, the log-softmax over the choices of their calibrated
  log-probabilities (empty-context prior subtracted) at the gold choice; ``loglik`` elsewhere. Relative.
* ``em``: 1.0 when greedy decoding emits the answer tokens first, else 0.0 (computed by teacher forcing:
  greedy decoding emits the answer iff each answer token is the argmax given the ones before it).
* ``kl``: minus the mean KL divergence, per answer position, from the full-context next-token distribution
  to the reduced one. 0 for the full context.
* a user-supplied callable ``fn(lm, encs, contexts) -> sequence of floats`` (see :class:`CallableScore`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from envs.examples import EncodedExample
from envs.frozen_lm import FrozenLM

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
    (:meth:`~envs.frozen_lm.FrozenLM.score_continuations`). A choice's raw score is its summed log-probability;
    its calibrated score subtracts the same choice's log-probability with an empty context
    (:func:`choice_priors`, computed here unless given), which removes the small model's prior over answers.
    """
    res = lm.score_continuations(build_prompts(lm, encs, contexts), continuations(encs))
    if all(e.choices is not None for e in encs) and priors is None:
        priors = choice_priors(lm, encs)
    return reduced_scores(encs, res, priors)


@dataclass
class ScoreResult:
    """Scores for a batch plus, for full-context calls, per-example reference data to cache.

    Attributes:
        scores: ``[B]`` float32 scores, higher is better.
        references: Per-example data a later reduced-context call needs (e.g. full-context distributions for
            KL), or None entries when the score needs none.
    """

    scores: torch.Tensor
    references: list[Any]


class TaskScore:
    """Base class of reward scores.

    Attributes:
        name: Registry name.
        relative: If True the env's reward uses ``score - full_context_score``.
        needs_reference: If True a reduced call needs the full-context call's references (so the full context is
            always scored).
    """

    name = "base"
    relative = False
    needs_reference = False

    def __call__(
        self,
        lm: FrozenLM,
        encs: Sequence[EncodedExample],
        contexts: Contexts = None,
        references: Sequence[Any] | None = None,
    ) -> ScoreResult:
        """Score a batch.

        Args:
            lm: The frozen model.
            encs: The examples.
            contexts: Reduced contexts, or None for the full contexts.
            references: For reduced calls, the references returned by the full-context call.

        Returns:
            Scores and references.
        """
        raise NotImplementedError


class LogLikScore(TaskScore):
    """Mean answer log-likelihood per answer token; the reward is relative to the full context."""

    name = "loglik"
    relative = True

    def __call__(self, lm, encs, contexts=None, references=None) -> ScoreResult:  # noqa: D102
        s = answer_loglik(lm, encs, contexts)
        return ScoreResult(s, [None] * len(encs))


class ChoiceScore(TaskScore):
    """The calibrated contrastive choice score where an example has choices, the answer log-likelihood elsewhere.

    With choices: the log-softmax, over the choices, of each choice's log-probability minus its log-probability
    with an empty context (the model's prior, computed once per example and cached), at the gold choice. That is
    the metric's own quantity (calibrated choice accuracy takes its argmax), where the gold answer's raw
    log-likelihood moves little when a deciding fact is lost. Without choices: the mean log-probability per
    answer token, as ``loglik``. Relative to the full context, as ``loglik``; one forward per prompt (the gold
    answer and every choice are continuations of it).
    """

    name = "choice"
    relative = True

    def __init__(self) -> None:
        self._priors: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def _prior_key(e: EncodedExample) -> tuple:
        """What the empty-context prompt and its continuations depend on."""
        return e.question, e.answer_prefix, e.choices

    def __call__(self, lm, encs, contexts=None, references=None) -> ScoreResult:  # noqa: D102
        missing = {self._prior_key(e): e for e in encs if e.choices is not None}
        missing = {k: e for k, e in missing.items() if k not in self._priors}
        if missing:
            self._priors.update(zip(missing, choice_priors(lm, list(missing.values())), strict=True))
        conts = [[e.answer, *(e.choices or ())] for e in encs]
        res = lm.score_continuations(build_prompts(lm, encs, contexts), conts)
        out = []
        for (lp, _), e in zip(res, encs, strict=True):
            if e.choices is None:
                out.append(lp[0] / len(e.answer))
            else:
                calibrated = lp[1:] - self._priors[self._prior_key(e)]
                out.append(torch.log_softmax(calibrated.double(), 0)[e.answer_index].float())
        return ScoreResult(torch.stack(out).float(), [None] * len(encs))


class ExactMatchScore(TaskScore):
    """1.0 when greedy decoding emits the answer tokens first, else 0.0."""

    name = "em"

    def __call__(self, lm, encs, contexts=None, references=None) -> ScoreResult:  # noqa: D102
        return ScoreResult(exact_match(lm, encs, contexts).float(), [None] * len(encs))


class KLScore(TaskScore):
    """Minus the mean per-position KL(full || reduced) over the answer positions (0 for the full context).

    The full-context distributions are kept as references (``[n_answer, vocab]`` float16 per example).
    """

    name = "kl"
    needs_reference = True

    def __call__(self, lm, encs, contexts=None, references=None) -> ScoreResult:  # noqa: D102
        s = lm.score_answers(build_prompts(lm, encs, contexts), [e.answer for e in encs], return_distributions=True)
        assert s.answer_logprobs_full is not None
        if contexts is None or references is None:
            return ScoreResult(torch.zeros(len(encs)), [d.half() for d in s.answer_logprobs_full])
        scores = []
        for full, red in zip(references, s.answer_logprobs_full, strict=True):
            full = full.float()
            kl = (full.exp() * (full - red)).sum(-1).mean()
            scores.append(-kl)
        return ScoreResult(torch.stack(scores).float(), [None] * len(encs))


class CallableScore(TaskScore):
    """Wrap a user function ``fn(lm, encs, contexts) -> sequence of B floats`` as a reward score.

    Args:
        fn: The function; ``contexts`` is None for the full-context call.
        relative: Whether the reward subtracts the full-context score.
        name: A name for logs.
    """

    def __init__(self, fn: Callable[..., Sequence[float]], relative: bool = False, name: str = "custom") -> None:
        self.fn = fn
        self.relative = relative
        self.name = name

    def __call__(self, lm, encs, contexts=None, references=None) -> ScoreResult:  # noqa: D102
        out = torch.as_tensor(list(self.fn(lm, encs, contexts)), dtype=torch.float32)
        if out.shape != (len(encs),):
            raise ValueError(f"score function {self.name!r} returned shape {tuple(out.shape)}, expected ({len(encs)},)")
        return ScoreResult(out, [None] * len(encs))


SCORES: dict[str, type[TaskScore]] = {
    "loglik": LogLikScore,
    "choice": ChoiceScore,
    "em": ExactMatchScore,
    "kl": KLScore,
}


def make_score(score: str | TaskScore | Callable[..., Sequence[float]]) -> TaskScore:
    """Resolve a score name, instance or user callable.

    Raises:
        ValueError: On an unknown name.
    """
    if isinstance(score, TaskScore):
        return score
    if callable(score):
        return CallableScore(score)
    if score not in SCORES:
        raise ValueError(f"unknown reward score {score!r}; choose one of {sorted(SCORES)} or pass a callable")
    return SCORES[score]()
