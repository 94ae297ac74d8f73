"""What :class:`~policies.reducer.TokenReducer`'s text API does around the selection.

:func:`call_budget` checks a call's budget arguments, :func:`prepare_contexts` encodes contexts and refuses what
cannot be reduced (empty text, too long with ``too_long="error"``, force-kept units that alone exceed the budget),
and :func:`make_reduction` reads a keep mask back as a :class:`~policies.reduction.Reduction`. Every error is a
:class:`~policies.reducer_config.ReducerError` that names the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.budget import Budget, BudgetError, check_forced
from policies.force_keep import ForceKeep, force_keep_mask, kept_spans, resolve_force_keep
from policies.processor import Encoded, process_batch
from policies.reducer_config import ReducerConfig, ReducerError
from policies.reduction import Reduction
from policies.semantic import SentenceEncoder


def call_budget(rate: float | None, target_tokens: int | None, token_cost: float | None, too_long: str) -> Budget:
    """The budget a text API call asks for.

    Raises:
        ReducerError: On a bad budget or a ``too_long`` other than ``"chunk"`` or ``"error"``.
    """
    try:
        budget = Budget(rate=rate, target_tokens=target_tokens, token_cost=token_cost)
    except BudgetError as err:
        raise ReducerError(str(err)) from err
    if too_long not in ("chunk", "error"):
        raise ReducerError(f"too_long must be 'chunk' or 'error', got {too_long!r}")
    return budget


def prepare_contexts(
    config: ReducerConfig,
    tokenizer: Any,
    encoder: SentenceEncoder | None,
    window_len: int,
    contexts: Sequence[str],
    questions: Sequence[str | None],
    budget: Budget,
    force_keep: Sequence[ForceKeep | None],
    too_long: str,
    labels: Sequence[str],
) -> list[tuple[Encoded, np.ndarray | None]]:
    """Each context encoded (all together: :func:`~policies.processor.process_batch`), with its force-kept tokens.

    Returns:
        Per context, its :class:`Encoded` and its force-kept tokens (bool per context token, or None).

    Raises:
        ReducerError: Naming the context (its label): no text, no tokens, longer than ``window_len`` with
            ``too_long="error"``, a bad ``force_keep``, or forced units that alone exceed the budget.
    """
    for context, label in zip(contexts, labels, strict=True):
        if not isinstance(context, str) or not context.strip():
            raise ReducerError(f"{label} has no text (empty or whitespace only)")
    encs = process_batch(config.processor, tokenizer, contexts, questions, encoder)
    return [
        (enc, _forced_tokens(config, window_len, enc, budget, fk, too_long, label))
        for enc, fk, label in zip(encs, force_keep, labels, strict=True)
    ]


def _forced_tokens(
    config: ReducerConfig,
    window_len: int,
    enc: Encoded,
    budget: Budget,
    force_keep: ForceKeep | None,
    too_long: str,
    label: str,
) -> np.ndarray | None:
    """One encoded context's checks, and its force-kept tokens (None without ``force_keep``)."""
    if not enc.context:
        raise ReducerError(f"{label} encodes to no tokens")
    if too_long == "error" and len(enc.context) + len(enc.question) > window_len:
        raise ReducerError(
            f"{label} has {len(enc.context)} tokens + {len(enc.question)} question tokens > "
            f"window_len={window_len} (pass too_long='chunk' to reduce it window by window)"
        )
    if force_keep is None:
        return None
    try:
        spans = resolve_force_keep(enc.text, force_keep)
    except ValueError as err:
        raise ReducerError(f"{label}: {err}") from err
    forced = force_keep_mask(enc, spans)
    n = len(enc.context)
    try:
        check_forced(int(forced.sum()), config.budget.limits(budget, n), config.processor.unit)
    except BudgetError as err:
        asked = f"rate {budget.rate} of {n} tokens" if budget.rate is not None else f"{budget.target_tokens} tokens"
        raise ReducerError(f"{label}: {err} (asked: {asked})") from err
    return forced


def make_reduction(
    config: ReducerConfig, tokenizer: Any, enc: Encoded, keep: np.ndarray, budget: Budget, forced: np.ndarray | None
) -> Reduction:
    """The :class:`Reduction` of a context's keep mask: kept ids and text, ratios, limits and kept spans."""
    n = len(enc.context)
    kept = [int(t) for t, k in zip(enc.context, keep, strict=True) if k]
    return Reduction(
        text=tokenizer.decode(kept, skip_special_tokens=True),
        kept_ids=kept,
        keep_mask=keep,
        kept_ratio=len(kept) / n,
        original_tokens=n,
        kept_tokens=len(kept),
        budget=budget,
        max_tokens=config.budget.limits(budget, n).max_tokens,
        kept_spans=kept_spans(enc.offsets, keep, len(enc.text)),
        forced_tokens=0 if forced is None else int(forced.sum()),
    )
