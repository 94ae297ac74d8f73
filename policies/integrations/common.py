"""What the LangChain and LlamaIndex integrations share: the budget check and the one reduction call.

Both reduce a call's retrieved texts together (:meth:`~policies.reducer.TokenReducer.reduce_documents`): one budget
over all of them, order kept, force-keep strings that occur in none of them skipped. Neither framework is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.budget import Budget, BudgetError
from policies.force_keep import occurring_strings
from policies.reducer import TokenReducer
from policies.reduction import DocumentsReduction

SPANS_KEY = "tokenkeep_spans"
"""Metadata key of the kept character spans of a reduced document or node."""


def check_budget(owner: str, rate: float | None, target_tokens: int | None, token_cost: float | None) -> None:
    """Refuse a bad budget when a component is built, not at its first call (ValueError naming ``owner``)."""
    try:
        Budget(rate=rate, target_tokens=target_tokens, token_cost=token_cost)
    except BudgetError as err:
        raise ValueError(f"{owner}: {err}") from err


def reduce_texts(
    reducer: TokenReducer,
    query: str | None,
    texts: Sequence[str],
    rate: float | None,
    target_tokens: int | None,
    token_cost: float | None,
    force_keep: Sequence[str],
) -> DocumentsReduction | None:
    """The texts reduced together for ``query``; None when every text is whitespace only (nothing to reduce).

    Raises:
        ReducerError: If the reduction cannot be done (e.g. the force-kept text alone exceeds the budget).
    """
    if not any(t.strip() for t in texts):
        return None
    forced = occurring_strings(force_keep, texts)
    return reducer.reduce_documents(
        query or None,
        texts,
        rate=rate,
        target_tokens=target_tokens,
        token_cost=token_cost,
        force_keep=forced or None,
    )
