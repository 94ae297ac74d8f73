"""The reward: what the environment pays for a keep decision, and the task scores it is built from.

For an episode that keeps ``kept`` of a context's ``n`` tokens, with the task score ``s`` of its reduced prompt:

    r = gain - token_cost * kept / n        gain = s - s_full  (a relative score)   or  s  (otherwise)

``s_full`` is the same score with the full context (cached per example). With a rate the budget is enforced by
the selection and ``token_cost`` is 0; in adaptive mode the policy chooses how much to keep and pays it
(:meth:`policies.budget.BudgetConfig.token_cost`). The task scores (higher is better), by name (:data:`SCORES`):

* ``loglik``: mean log p(answer token | prompt), per answer token. Relative.
* ``choice``: where an example has choices, the log-softmax over the choices of their calibrated
  log-probabilities (empty-context prior subtracted) at the gold choice; ``loglik`` elsewhere. Relative.
* ``em``: 1.0 when greedy decoding emits the answer tokens first, else 0.0 (teacher-forced check).
* ``kl``: minus the mean KL divergence, per answer position, from the full-context next-token distribution
  to the reduced one. 0 for the full context.
* a user-supplied callable ``fn(lm, encs, contexts) -> sequence of floats`` (:class:`CallableScore`).

A new score is a :class:`TaskScore` subclass and one line in :data:`SCORES` (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from envs.lm.frozen_lm import FrozenLM
from envs.scoring import Contexts, answer_loglik, build_prompts, choice_priors, exact_match
from envs.tasks.examples import EncodedExample
from policies.budget import Budget


@dataclass
class StepResult:
    """Outcome of a batch of keep decisions.

    Attributes:
        rewards: ``[B]`` rewards.
        infos: One info dict per episode (kept_ratio, task_score, full_score, token_cost, rate, reduced_text, ...).
    """

    rewards: np.ndarray
    infos: list[dict[str, Any]]


def task_gain(score: float, full_score: float, relative: bool) -> float:
    """An episode's task gain: its score, less the full context's where the score is relative."""
    return score - full_score if relative else score


def episode_reward(gain: float, token_cost: float, kept_ratio: float) -> float:
    """The reward of a keep decision: its task gain minus the token cost of the share of the context it keeps."""
    return gain - token_cost * kept_ratio


def results(
    episodes: Sequence[EncodedExample],
    indices: Sequence[int],
    budgets: Sequence[Budget],
    kept_ids: Sequence[Sequence[int]],
    gains: Sequence[float],
    scores: Sequence[float],
    costs: Sequence[float],
    decode: Callable[[Sequence[int]], str],
    full: Sequence[float] | None = None,
) -> StepResult:
    """Rewards and infos of a batch of scored keep decisions.

    Args:
        episodes: Each episode's example.
        indices: Their indices in the pool (recorded in the infos).
        budgets: Each episode's budget.
        kept_ids: The tokens each kept.
        gains: Each one's task gain (:func:`task_gain`).
        scores: Each one's task score (NaN where none was computed).
        costs: Each one's token cost.
        decode: Token ids to text (the infos' ``reduced_text``).
        full: The full context's score per episode (NaN: not computed).
    """
    full = full if full is not None else [float("nan")] * len(indices)
    rewards = np.zeros(len(indices), np.float32)
    infos = []
    for r, (e, i) in enumerate(zip(episodes, indices, strict=True)):
        ratio = len(kept_ids[r]) / len(e.context)
        rewards[r] = episode_reward(gains[r], costs[r], ratio)
        infos.append(
            {
                "kept_ratio": ratio,
                "kept_tokens": len(kept_ids[r]),
                "context_tokens": len(e.context),
                "task_score": scores[r],
                "full_score": full[r],
                "token_cost": float(costs[r]),
                "rate": budgets[r].rate,
                "adaptive": budgets[r].adaptive,
                "example_index": int(i),
                "family": e.example.family,
                "reduced_text": decode(kept_ids[r]),
            }
        )
    return StepResult(rewards, infos)


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
