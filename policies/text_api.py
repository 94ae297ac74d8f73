"""What :class:`~policies.reducer.TokenReducer`'s text API does around the selection.

:func:`call_budget` checks a call's budget arguments, :func:`prepare_contexts` encodes contexts and refuses what
cannot be reduced (empty text, too long with ``too_long="error"``, force-kept units that alone exceed the budget),
and :func:`make_reduction` reads a keep mask back as a :class:`~policies.reduction.Reduction`. Every error is a
:class:`~policies.reducer_config.ReducerError` that names the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from policies.budget import Budget, BudgetError, check_forced
from policies.force_keep import ForceKeep, force_keep_mask, kept_spans, resolve_force_keep
from policies.processor import Encoded, process_batch
from policies.reducer_config import ReducerConfig, ReducerError
from policies.reduction import Reduction

if TYPE_CHECKING:
    from policies.reducer import TokenReducer


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
    reducer: TokenReducer,
    contexts: Sequence[str],
    questions: Sequence[str | None] | None,
    budget: Budget,
    force_keep: Sequence[ForceKeep | None] | None,
    too_long: str,
    labels: Sequence[str] | None = None,
) -> list[tuple[Encoded, np.ndarray | None]]:
    """Each context encoded (all together: :func:`~policies.processor.process_batch`), with its force-kept tokens.

    Args:
        reducer: The reducer whose config, tokenizer, sentence encoder and window length apply.
        contexts: The texts.
        questions: One per context, or None (no questions).
        budget: The call's budget.
        force_keep: One list (or None) per context, or None.
        too_long: ``"chunk"`` or ``"error"``.
        labels: How errors name each context (default ``context i``).

    Returns:
        Per context, its :class:`Encoded` and its force-kept tokens (bool per context token, or None).

    Raises:
        ReducerError: On a questions or force_keep list of the wrong length, or naming the context: no text, no
            tokens, longer than the window with ``too_long="error"``, a bad ``force_keep``, or forced units that
            alone exceed the budget.
    """
    n = len(contexts)
    if questions is not None and len(questions) != n:
        raise ReducerError(f"got {n} contexts but {len(questions)} questions")
    if force_keep is not None and (isinstance(force_keep, str) or len(force_keep) != n):
        n_lists = "a string" if isinstance(force_keep, str) else f"{len(force_keep)} lists"
        raise ReducerError(f"force_keep must hold one list (or None) per context: got {n_lists} for {n} contexts")
    labels = labels or [f"context {i}" for i in range(n)]
    config, window_len = reducer.config, reducer.window_len
    for context, label in zip(contexts, labels, strict=True):
        if not isinstance(context, str) or not context.strip():
            raise ReducerError(f"{label} has no text (empty or whitespace only)")
    encs = process_batch(config.processor, reducer.tokenizer, contexts, questions or [None] * n, reducer.encoder)
    return [
        (enc, _forced_tokens(config, window_len, enc, budget, fk, too_long, label))
        for enc, fk, label in zip(encs, force_keep or [None] * n, labels, strict=True)
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
    reducer: TokenReducer, enc: Encoded, keep: np.ndarray, budget: Budget, forced: np.ndarray | None
) -> Reduction:
    """The :class:`Reduction` of a context's keep mask: kept ids and text, ratios, limits and kept spans."""
    n = len(enc.context)
    kept = [int(t) for t, k in zip(enc.context, keep, strict=True) if k]
    return Reduction(
        text=reducer.tokenizer.decode(kept, skip_special_tokens=True),
        kept_ids=kept,
        keep_mask=keep,
        kept_ratio=len(kept) / n,
        original_tokens=n,
        kept_tokens=len(kept),
        budget=budget,
        max_tokens=reducer.config.budget.limits(budget, n).max_tokens,
        kept_spans=kept_spans(enc.offsets, keep, len(enc.text)),
        forced_tokens=0 if forced is None else int(forced.sum()),
    )
