"""LangChain: ``TokenKeepCompressor``, a ``BaseDocumentCompressor`` backed by a ``TokenReducer``.

Needs ``langchain-core`` (``pip install tokenkeep[langchain]``); without it, importing this module raises an
ImportError that says so.

``compress_documents(documents, query)`` reduces the documents' ``page_content`` together under one budget
(:meth:`~policies.reducer.TokenReducer.reduce_documents`, the query conditioning the policy) and returns, in
the input order, one ``Document`` per document of which something was kept: ``page_content`` is the kept text
(stripped), ``metadata`` the input's plus ``tokenkeep_spans`` (the kept ``[start, end]`` character spans of the
original ``page_content``), ``id`` the input's. Documents without text are returned unchanged (they cost no
tokens); documents of which nothing was kept are left out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "policies.integrations.langchain needs langchain-core, which is not installed: pip install tokenkeep[langchain]"
    ) from err
from pydantic import ConfigDict, Field

from policies.integrations.common import SPANS_KEY, check_budget, reduce_texts
from policies.reducer import TokenReducer


class TokenKeepCompressor(BaseDocumentCompressor):
    """A LangChain document compressor that keeps what a trained tokenkeep policy ranks best for the query.

    Attributes:
        reducer: The :class:`~policies.reducer.TokenReducer` (e.g. ``TokenReducer.from_pretrained(dir)``).
        rate: Keep at most this fraction of all the documents' tokens together.
        target_tokens: Keep at most this many tokens in all (instead of ``rate``).
        token_cost: Adaptive mode (neither rate nor target): the token cost the policy is conditioned on (None:
            the reducer's default).
        force_keep: Strings kept wherever they occur (whole units, inside the budget); a string that occurs in
            none of the documents of a call is skipped for that call (retrieval decides what is there).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reducer: TokenReducer
    rate: float | None = None
    target_tokens: int | None = None
    token_cost: float | None = None
    force_keep: list[str] = Field(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        """Refuse a bad budget when the component is built, not at its first call."""
        check_budget("TokenKeepCompressor", self.rate, self.target_tokens, self.token_cost)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **kwargs: Any) -> TokenKeepCompressor:
        """A compressor over the reducer saved in ``directory``; ``kwargs`` are the other attributes."""
        return cls(reducer=TokenReducer.from_pretrained(directory), **kwargs)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Reduce the documents together for ``query`` (see the module docstring for what is returned).

        Raises:
            ReducerError: If the reduction cannot be done (e.g. the force-kept text alone exceeds the budget).
        """
        texts = [d.page_content for d in documents]
        res = reduce_texts(self.reducer, query, texts, self.rate, self.target_tokens, self.token_cost, self.force_keep)
        if res is None:
            return list(documents)
        out = []
        for doc, kept in zip(documents, res.documents, strict=True):
            if not doc.page_content.strip():
                out.append(doc)
            elif not kept.dropped:
                metadata = {**doc.metadata, SPANS_KEY: [[s, e] for s, e in kept.spans]}
                out.append(Document(page_content=kept.text.strip(), metadata=metadata, id=doc.id))
        return out
