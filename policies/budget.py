"""The budget: how much of a context may be kept, from the training config to the exported reducer.

Two objects, one concept:

* :class:`Budget` is what one reduction is asked for: a keep ``rate``, a number of ``target_tokens``, or a
  ``token_cost`` (the price of keeping the whole context, charged in the reward). The policy is conditioned on
  its token cost; a rate or target is met by ranking (:func:`keep_top`).
* :class:`BudgetConfig` is the range a policy is trained on and the default a deployed reducer uses. It is
  part of the run config and is written unchanged into ``reducer_config.json``; :meth:`BudgetConfig.observe`
  is the one place a budget becomes the policy's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class BudgetError(ValueError):
    """A budget is malformed or out of range; the message names the field."""


@dataclass(frozen=True)
class Budget:
    """What one reduction is asked for. Give at most one of ``rate`` and ``target_tokens``.

    Attributes:
        rate: Keep this fraction of the context's tokens, in (0, 1].
        target_tokens: Keep this many context tokens (capped at the context's length), >= 1.
        token_cost: The token cost the policy is conditioned on (None: the reducer's default). Without a rate
            or a target, the policy's own keep decisions at this cost are used.
    """

    rate: float | None = None
    target_tokens: int | None = None
    token_cost: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.target_tokens is not None:
            raise BudgetError("give rate or target_tokens, not both")
        if self.rate is not None and not 0 < self.rate <= 1:
            raise BudgetError(f"rate must be in (0, 1], got {self.rate}")
        if self.target_tokens is not None and self.target_tokens < 1:
            raise BudgetError(f"target_tokens must be >= 1, got {self.target_tokens}")
        if self.token_cost is not None and not (np.isfinite(self.token_cost) and self.token_cost >= 0):
            raise BudgetError(f"token_cost must be a finite number >= 0, got {self.token_cost}")

    @property
    def ranked(self) -> bool:
        """True when a rate or target fixes the number of kept tokens (selection by ranking)."""
        return self.rate is not None or self.target_tokens is not None

    def keep_count(self, n: int) -> int | None:
        """Tokens to keep out of ``n`` (at least 1), or None when the policy decides (no rate or target)."""
        if self.rate is not None:
            return max(1, round(self.rate * n))
        if self.target_tokens is not None:
            return min(n, self.target_tokens)
        return None


@dataclass
class BudgetConfig:
    """The budgets a policy is trained on, and the default a deployed reducer asks for.

    Attributes:
        cost_low: Lowest token cost drawn per training episode.
        cost_high: Highest token cost drawn per training episode; the policy sees ``cost / cost_high``.
        default_token_cost: Token cost of evaluations and of reductions that give none.
    """

    cost_low: float = 0.2
    cost_high: float = 1.0
    default_token_cost: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.cost_low <= self.cost_high:
            raise BudgetError(f"need 0 <= cost_low <= cost_high, got {self.cost_low}, {self.cost_high}")
        if self.cost_high <= 0:
            raise BudgetError(f"cost_high must be > 0, got {self.cost_high}")
        if self.default_token_cost < 0:
            raise BudgetError(f"default_token_cost must be >= 0, got {self.default_token_cost}")

    @property
    def observation_size(self) -> int:
        """Length of the budget vector in an observation."""
        return 1

    def sample(self, rng: np.random.Generator) -> Budget:
        """A training budget: a token cost drawn uniformly from ``[cost_low, cost_high]``."""
        lo, hi = self.cost_low, self.cost_high
        return Budget(token_cost=float(rng.uniform(lo, hi)) if hi > lo else lo)

    def token_cost(self, budget: Budget) -> float:
        """The token cost a budget asks for (the default when it gives none)."""
        return self.default_token_cost if budget.token_cost is None else budget.token_cost

    def observe(self, budget: Budget) -> np.ndarray:
        """The policy's budget input: ``[token_cost / cost_high]`` (float32)."""
        return np.array([self.token_cost(budget) / self.cost_high], dtype=np.float32)


def keep_top(scores: np.ndarray | list[float], k: int) -> np.ndarray:
    """Bool keep mask of the ``k`` highest scores; ties go to earlier positions, so results are deterministic.

    The one ranking rule shared by the reducer, the baselines and the evaluator: every method meets a
    requested budget the same way.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    order = np.lexsort((np.arange(n), -scores))
    keep = np.zeros(n, dtype=bool)
    keep[order[: min(n, max(k, 0))]] = True
    return keep
