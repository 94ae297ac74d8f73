"""The selection engine: one episode of keep decisions, round by round, for the env, the warm start and the reducer.

An episode has ``processor.rounds`` rounds over a batch of contexts. Each round before the last keeps a probe of
its best units (``processor.probe_tokens`` of the context, at most the budget; force-kept units count as kept
first) and the next round observes the context conditioned on that probe (:func:`policies.processor.condition`).
The last round keeps what :func:`policies.budget.select_units` picks under the budget's limits. Whoever ranks the
units (the network in the reducer and the warm start, a PPO action in the env) passes one priority per unit; the
engine decides the rest, so training and deployment run the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from policies.budget import Budget, BudgetConfig, TokenLimits, probe_units, select_units
from policies.processor import Encoded, ProcessorConfig, condition

Units = tuple[np.ndarray, np.ndarray]
"""``(token_unit, lengths)``: the unit of each context token, and the tokens of each unit."""


def forced_units(forced: np.ndarray | None, token_unit: np.ndarray, n_units: int) -> np.ndarray | None:
    """Bool per unit: the units holding a force-kept token (``forced``: bool per token); None without any."""
    if forced is None or not forced.any():
        return None
    return np.bincount(token_unit, weights=forced.astype(np.float64), minlength=n_units) > 0


@dataclass
class Selection:
    """A batch of selection episodes in progress, one per context, all in the same round.

    Attributes:
        processor: How many rounds, and the probe's size.
        inputs: Each context as prepared for the first round.
        limits: Each context's token limits in the last round (its budget's).
        forced: Per context, bool per context token of the force-kept tokens (whole units), or None.
        round: The round being played, from 0.
        current: What each context looks like in this round: ``inputs`` in the first, then conditioned on the
            probe the round before kept.
    """

    processor: ProcessorConfig
    inputs: list[Encoded]
    limits: list[TokenLimits]
    forced: list[np.ndarray | None]
    round: int = 0
    current: list[Encoded] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not len(self.inputs) == len(self.limits) == len(self.forced):
            raise ValueError(f"{len(self.inputs)} contexts, {len(self.limits)} limits, {len(self.forced)} forced masks")
        if not self.current:
            self.current = list(self.inputs)

    @classmethod
    def start(
        cls,
        processor: ProcessorConfig,
        budget_config: BudgetConfig,
        inputs: Sequence[Encoded],
        budgets: Sequence[Budget],
        forced: Sequence[np.ndarray | None] | None = None,
        last_round: bool = False,
    ) -> Selection:
        """An episode per context under ``budgets`` (one per context), in its first round.

        ``last_round``: open it in its last round instead (to apply a final keep decision on its own).
        """
        limits = [budget_config.limits(b, len(enc.context)) for enc, b in zip(inputs, budgets, strict=True)]
        forced = list(forced) if forced is not None else [None] * len(inputs)
        return cls(processor, list(inputs), limits, forced, round=processor.rounds - 1 if last_round else 0)

    @property
    def final(self) -> bool:
        """Whether this round is the last (its keep decision is the episode's)."""
        return self.round == self.processor.rounds - 1

    def round_limits(self, k: int) -> TokenLimits:
        """Context ``k``'s limits in this round: the budget's in the last, the probe's before it."""
        if self.final:
            return self.limits[k]
        n = len(self.inputs[k].context)
        return TokenLimits(False, 0, self.processor.probe_tokens(n, self.limits[k].max_tokens))

    def advance(self, priorities: Sequence[np.ndarray], units: Sequence[Units] | None = None) -> list[np.ndarray]:
        """End a round before the last: keep each context's probe; the next round observes them conditioned on it.

        Args:
            priorities: Per context, one priority per unit (higher first; extra entries are ignored).
            units: Per context, its units when they are not its own (``unit_index``, ``unit_lengths``): the
                reducer's windows of a long context.

        Returns:
            Per context, what its probe kept: bool per context token.
        """
        if self.final:
            raise RuntimeError("advance() ends a round before the last; the last round ends with keep()")
        nxt, kept = [], []
        for k, enc in enumerate(self.inputs):
            token_unit, lengths = units[k] if units is not None else (enc.unit_index, enc.unit_lengths)
            probe = probe_units(
                np.asarray(priorities[k])[: len(lengths)],
                lengths,
                self.round_limits(k).max_tokens,
                forced_units(self.forced[k], token_unit, len(lengths)),
            )
            kept.append(probe[token_unit])
            nxt.append(condition(enc, kept[-1]))
        self.round += 1
        self.current = nxt
        return kept

    def keep(self, priorities: Sequence[np.ndarray], units: Sequence[Units] | None = None) -> list[np.ndarray]:
        """End the last round: each context's keep mask, bool per context token (arguments as :meth:`advance`).

        Raises:
            BudgetError: If a context's force-kept units alone exceed its rate's or target's budget.
        """
        if not self.final:
            raise RuntimeError(f"keep() ends the last round; round {self.round} of {self.processor.rounds} is not")
        out = []
        for k, enc in enumerate(self.inputs):
            token_unit, lengths = units[k] if units is not None else (enc.unit_index, enc.unit_lengths)
            keep = select_units(
                np.asarray(priorities[k])[: len(lengths)],
                lengths,
                self.limits[k],
                forced_units(self.forced[k], token_unit, len(lengths)),
            )
            out.append(keep[token_unit])
        return out
