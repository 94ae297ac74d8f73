"""The budget: how much of a context may be kept, from the training config to the exported reducer.

Two objects, one concept:

* :class:`Budget` is what one reduction is asked for: a keep ``rate`` or a number of ``target_tokens`` (the
  policy ranks units and :func:`fill_units` keeps the best that fit: never above the budget, as close as the
  units allow), or, with neither, the *adaptive* mode: the policy decides how much to keep, conditioned on a
  ``token_cost`` (the price of keeping the whole context, charged in the training reward), within
  ``[adaptive_min_rate, adaptive_max_rate]`` of the context (:func:`adaptive_units`).
  With ``BudgetConfig.ceiling`` a rate or target is a ceiling rather than an amount: the policy keeps the units
  it scores above its STOP score, at most the budget and at least one unit, so where nothing more is relevant
  it keeps less (the adaptive mode's rule, with the budget as its upper limit and no token cost).
* :class:`BudgetConfig` is the range a policy is trained on and the default a deployed reducer uses. It is
  part of the run config and is written unchanged into ``reducer_config.json``; :meth:`BudgetConfig.sample`
  draws training budgets and :meth:`BudgetConfig.observe` is the one place a budget becomes the policy's input.

Force-keep: units the user (or the data) says must stay are kept *first* and counted inside the budget; the
policy's ranking then fills what is left (:func:`select_units` with ``forced``, the one rule of the env and the
reducer). With a rate or target, forced units that alone exceed the budget are refused (:class:`BudgetError`
naming both numbers); in adaptive mode they are kept whatever the adaptive limits say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def tokens_at(rate: float, n: int) -> int:
    """``floor(rate * n)``, with a tolerance so that e.g. ``0.29 * 100`` (28.999...) gives 29."""
    return math.floor(rate * n + 1e-9)


class BudgetError(ValueError):
    """A budget is malformed or out of range; the message names the field."""


@dataclass(frozen=True)
class Budget:
    """What one reduction is asked for: a rate, a target, or neither (adaptive mode).

    Attributes:
        rate: Keep at most this fraction of the context's tokens, in (0, 1].
        target_tokens: Keep at most this many context tokens, >= 1.
        token_cost: Adaptive mode only: the token cost the policy is conditioned on (None: the reducer's
            default).
    """

    rate: float | None = None
    target_tokens: int | None = None
    token_cost: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.target_tokens is not None:
            raise BudgetError("give rate or target_tokens, not both")
        if self.rate is not None and not (isinstance(self.rate, (int, float)) and 0 < self.rate <= 1):
            raise BudgetError(f"rate must be in (0, 1], got {self.rate}")
        if self.target_tokens is not None and not (
            isinstance(self.target_tokens, (int, np.integer)) and self.target_tokens >= 1
        ):
            raise BudgetError(f"target_tokens must be an integer >= 1, got {self.target_tokens}")
        if self.token_cost is not None:
            if self.rate is not None or self.target_tokens is not None:
                raise BudgetError("token_cost applies to the adaptive mode only: give it without rate or target_tokens")
            if not (math.isfinite(self.token_cost) and self.token_cost >= 0):
                raise BudgetError(f"token_cost must be a finite number >= 0, got {self.token_cost}")

    @property
    def adaptive(self) -> bool:
        """True when the policy decides how much to keep (no rate and no target)."""
        return self.rate is None and self.target_tokens is None

    def max_tokens(self, n: int) -> int | None:
        """Most tokens that may be kept out of ``n``: ``floor(rate * n)`` or the target (at least 1, at most n).

        None in adaptive mode.
        """
        if self.rate is not None:
            return min(n, max(1, tokens_at(self.rate, n)))
        if self.target_tokens is not None:
            return min(n, int(self.target_tokens))
        return None


@dataclass
class BudgetConfig:
    """The budgets a policy is trained on, and the default of a deployed reducer.

    Attributes:
        rate_low: Lowest keep rate drawn per training episode.
        rate_high: Highest keep rate drawn per training episode.
        adaptive_fraction: Share of training episodes in adaptive mode (the policy decides how much to keep and
            pays token_cost * kept fraction in the reward).
        cost_low: Lowest token cost drawn for an adaptive episode.
        cost_high: Highest token cost drawn for an adaptive episode; the policy sees cost / cost_high.
        default_token_cost: Token cost of adaptive reductions that give none (the reducer's no-rate default).
        adaptive_min_rate: The adaptive mode keeps at least this fraction of the context (whole units).
        adaptive_max_rate: The adaptive mode keeps at most this fraction of the context (at least one unit).
        ceiling: A rate or target is a ceiling: keep the units the policy scores above its STOP score, up to the
            budget (at least one unit), so that less is kept where nothing more is relevant. False: always fill
            the budget as closely as the units allow.
    """

    rate_low: float = 0.1
    rate_high: float = 0.7
    adaptive_fraction: float = 0.25
    cost_low: float = 0.05
    cost_high: float = 1.0
    default_token_cost: float = 0.3
    adaptive_min_rate: float = 0.1
    adaptive_max_rate: float = 0.9
    ceiling: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.rate_low <= self.rate_high <= 1:
            raise BudgetError(f"need 0 < rate_low <= rate_high <= 1, got {self.rate_low}, {self.rate_high}")
        if not 0 <= self.adaptive_fraction <= 1:
            raise BudgetError(f"adaptive_fraction must be in [0, 1], got {self.adaptive_fraction}")
        if not 0 <= self.cost_low <= self.cost_high or self.cost_high <= 0:
            raise BudgetError(f"need 0 <= cost_low <= cost_high, cost_high > 0, got {self.cost_low}, {self.cost_high}")
        if self.default_token_cost < 0:
            raise BudgetError(f"default_token_cost must be >= 0, got {self.default_token_cost}")
        if not 0 <= self.adaptive_min_rate <= self.adaptive_max_rate <= 1:
            raise BudgetError(
                "need 0 <= adaptive_min_rate <= adaptive_max_rate <= 1, "
                f"got {self.adaptive_min_rate}, {self.adaptive_max_rate}"
            )

    @property
    def observation_size(self) -> int:
        """Length of the budget vector in an observation."""
        return 3

    def sample(self, rng: np.random.Generator) -> Budget:
        """A training budget: adaptive with probability ``adaptive_fraction``, else a uniform rate."""
        if rng.random() < self.adaptive_fraction:
            return Budget(token_cost=float(rng.uniform(self.cost_low, self.cost_high)))
        return Budget(rate=float(rng.uniform(self.rate_low, self.rate_high)))

    def token_cost(self, budget: Budget) -> float:
        """The token cost an adaptive budget asks for (the default when it gives none); 0 for a rate or target."""
        if not budget.adaptive:
            return 0.0
        return self.default_token_cost if budget.token_cost is None else budget.token_cost

    def limits(self, budget: Budget, n_tokens: int) -> TokenLimits:
        """The token limits of ``budget`` on a context of ``n_tokens`` tokens."""
        if budget.adaptive:
            lo = math.ceil(self.adaptive_min_rate * n_tokens - 1e-9)
            return TokenLimits(True, lo, tokens_at(self.adaptive_max_rate, n_tokens))
        return TokenLimits(self.ceiling, 0, int(budget.max_tokens(n_tokens)), ceiling=self.ceiling)

    def observe(self, budget: Budget, n_tokens: int) -> np.ndarray:
        """The policy's budget input ``[adaptive, rate, token_cost / cost_high]`` (float32).

        A target of t tokens out of ``n_tokens`` is seen as the rate ``t / n_tokens``.
        """
        if budget.adaptive:
            return np.array([1.0, 0.0, self.token_cost(budget) / self.cost_high], dtype=np.float32)
        rate = budget.rate if budget.rate is not None else min(1.0, budget.target_tokens / max(n_tokens, 1))
        return np.array([0.0, rate, 0.0], dtype=np.float32)


@dataclass(frozen=True)
class TokenLimits:
    """What a budget allows on one context, in tokens.

    Attributes:
        adaptive: True when the policy's STOP decides how much to keep, within the limits: in adaptive mode, and
            for a rate or target used as a ceiling.
        min_tokens: Fewest tokens to keep (adaptive mode; 0 otherwise).
        max_tokens: Most tokens to keep.
        ceiling: The limits are a rate's or target's, used as a ceiling (``adaptive`` is then True too).
    """

    adaptive: bool
    min_tokens: int
    max_tokens: int
    ceiling: bool = False

    @property
    def budgeted(self) -> bool:
        """True when ``max_tokens`` is what a rate or target allows (force-kept units above it are refused)."""
        return self.ceiling or not self.adaptive

    def as_array(self) -> np.ndarray:
        """``[adaptive, min_tokens, max_tokens, ceiling]`` as float32, the ``limits`` observation."""
        return np.array([float(self.adaptive), self.min_tokens, self.max_tokens, float(self.ceiling)], dtype=np.float32)


def forced_tokens(lengths: np.ndarray, forced_units: np.ndarray | None) -> int:
    """Tokens held by the forced units (``forced_units``: bool per unit, or None for none)."""
    if forced_units is None:
        return 0
    return int(np.asarray(lengths)[np.asarray(forced_units, dtype=bool)].sum())


def forced_limits(limits: TokenLimits, n_forced: int) -> TokenLimits:
    """What ``limits`` leave to the ranked units once ``n_forced`` force-kept tokens are in (never below 0)."""
    return TokenLimits(
        limits.adaptive, max(0, limits.min_tokens - n_forced), max(0, limits.max_tokens - n_forced), limits.ceiling
    )


def check_forced(n_forced: int, limits: TokenLimits, unit: str = "") -> None:
    """Refuse force-kept tokens that alone exceed a rate's or target's budget (adaptive mode accepts any).

    ``unit``: the selection unit's name, for the message.

    Raises:
        BudgetError: Naming the forced tokens and the budget in tokens.
    """
    if limits.budgeted and n_forced > limits.max_tokens:
        whole = f"whole {unit} units" if unit else "whole units"
        raise BudgetError(
            f"the force-kept text alone is {n_forced} tokens ({whole}), more than the budget of "
            f"{limits.max_tokens} tokens; raise the rate or target_tokens, or force-keep less"
        )


def select_units(
    priority: np.ndarray, lengths: np.ndarray, limits: TokenLimits, forced_units: np.ndarray | None = None
) -> np.ndarray:
    """Bool mask of the units kept under ``limits``: by :func:`ceiling_units`, :func:`adaptive_units` or fill.

    With ``forced_units`` (bool per unit), the forced units are kept first and counted inside the budget; the rule
    then runs over the other units within :func:`forced_limits` (so in adaptive mode the policy's choice among
    the others still keeps at least one of them, when there is one).

    Raises:
        BudgetError: If the forced units alone exceed a rate's or target's budget (:func:`check_forced`).
    """
    if forced_units is None or not np.any(forced_units):
        if limits.ceiling:
            return ceiling_units(priority, lengths, limits.max_tokens)
        if limits.adaptive:
            return adaptive_units(priority, lengths, limits.min_tokens, limits.max_tokens)
        return fill_units(priority, lengths, limits.max_tokens)
    forced_units = np.asarray(forced_units, dtype=bool)
    n_forced = forced_tokens(lengths, forced_units)
    check_forced(n_forced, limits)
    rest = np.where(forced_units, 0, np.asarray(lengths))  # a forced unit is no candidate: it is in already
    return select_units(priority, rest, forced_limits(limits, n_forced)) | (forced_units & (np.asarray(lengths) > 0))


def probe_units(
    priority: np.ndarray, lengths: np.ndarray, max_tokens: int, forced_units: np.ndarray | None = None
) -> np.ndarray:
    """Bool mask of the units a selection round before the last keeps (the probe the next round sees).

    :func:`fill_units` within ``max_tokens``; forced units (bool per unit) count as kept and take their tokens
    first. Unlike :func:`select_units` this never refuses: forced units above ``max_tokens`` make a probe of the
    forced units alone.
    """
    if forced_units is None or not np.any(forced_units):
        return fill_units(priority, lengths, max_tokens)
    forced_units = np.asarray(forced_units, dtype=bool)
    lengths = np.asarray(lengths)
    left = max(0, max_tokens - forced_tokens(lengths, forced_units))
    return fill_units(priority, np.where(forced_units, 0, lengths), left) | (forced_units & (lengths > 0))


def adaptive_count(sorted_lengths: np.ndarray, n_before_stop: int, min_tokens: int, max_tokens: int) -> int:
    """How many units, taken in ranked order, the adaptive mode keeps.

    The policy's choice (the units ranked before STOP) is clamped so that the kept tokens reach ``min_tokens``
    and stay within ``max_tokens``; one unit is always kept.
    """
    n = len(sorted_lengths)
    if n == 0:
        return 0
    c = np.cumsum(sorted_lengths)
    k_min = min(int((c < min_tokens).sum()) + 1, n)
    k_max = max(int((c <= max_tokens).sum()), 1)
    return int(min(max(n_before_stop, k_min), k_max))


def adaptive_units(priority: np.ndarray, lengths: np.ndarray, min_tokens: int, max_tokens: int) -> np.ndarray:
    """Bool mask of the units the adaptive mode keeps.

    Units are ranked by priority (ties to the earlier unit); those with priority > 0 are the policy's choice,
    and :func:`adaptive_count` clamps how many of the ranked units are kept.
    """
    priority = np.asarray(priority, dtype=np.float64)
    lengths = np.asarray(lengths)
    valid = np.flatnonzero(lengths > 0)
    order = valid[np.lexsort((valid, -priority[valid]))]
    k = adaptive_count(lengths[order], int((priority[valid] > 0).sum()), min_tokens, max_tokens)
    keep = np.zeros(len(priority), dtype=bool)
    keep[order[:k]] = True
    return keep


def ceiling_units(priority: np.ndarray, lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Bool mask of the units kept under a rate or target used as a ceiling.

    The units with priority > 0 (those the policy ranks above its STOP score) are kept as :func:`fill_units`
    keeps them: in decreasing priority, each if it still fits in ``max_tokens``. When none of them fits, the
    best-ranked unit that fits is kept alone, so a reduction is never empty while a unit fits, and never above
    the budget.
    """
    keep = fill_units(priority, lengths, max_tokens)
    if keep.any():
        return keep
    priority = np.asarray(priority, dtype=np.float64)
    lengths = np.asarray(lengths)
    fits = np.flatnonzero((lengths > 0) & (lengths <= max_tokens))
    if len(fits):
        keep[fits[np.lexsort((fits, -priority[fits]))[0]]] = True
    return keep


def fill_units(priority: np.ndarray, lengths: np.ndarray, max_tokens: int | None) -> np.ndarray:
    """Bool mask of the units kept under a rate or target: the rule of the env, the reducer and the baselines.

    Units with priority > 0 are candidates. Without a budget every candidate is kept. With one, candidates are
    taken in decreasing priority (ties to the earlier unit) and each is kept if it still fits in ``max_tokens``;
    one that does not fit is skipped, so the result is never above the budget and as close to it as the units
    allow.

    Args:
        priority: ``[U]`` priorities (padding units may hold anything).
        lengths: ``[U]`` tokens per unit; 0 marks a padding unit, never kept.
        max_tokens: The budget in tokens, or None.
    """
    priority = np.asarray(priority, dtype=np.float64)
    lengths = np.asarray(lengths)
    cand = np.flatnonzero((priority > 0) & (lengths > 0))
    keep = np.zeros(len(priority), dtype=bool)
    if max_tokens is None:
        keep[cand] = True
        return keep
    order = cand[np.lexsort((cand, -priority[cand]))]
    used = 0
    for u in order:
        if used + lengths[u] <= max_tokens:
            keep[u] = True
            used += int(lengths[u])
            if used == max_tokens:
                break
    return keep


def rank_priorities(scores: np.ndarray) -> np.ndarray:
    """Priorities in (0, 1] that order units like ``scores`` (ties to the earlier unit): ``(U - rank) / U``."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    order = np.lexsort((np.arange(n), -scores))
    out = np.zeros(n)
    out[order] = (n - np.arange(n)) / max(n, 1)
    return out


def keep_top(scores: np.ndarray | list[float], k: int) -> np.ndarray:
    """Bool keep mask of the ``k`` highest scores (one-token units); ties go to earlier positions."""
    n = len(scores)
    return fill_units(rank_priorities(scores), np.ones(n, dtype=np.int64), min(n, max(k, 0)))
