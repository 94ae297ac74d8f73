"""What a reduction returns, and how retrieved documents map to and from the one context they are reduced as."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.budget import Budget
from policies.reducer_config import ReducerError


@dataclass
class Reduction:
    """The result of reducing one context.

    Attributes:
        text: The reduced context text.
        kept_ids: Token ids kept, in order.
        keep_mask: Bool array over the context's tokens, True = kept.
        kept_ratio: ``kept_tokens / original_tokens``, the achieved ratio.
        original_tokens: Context tokens before reduction.
        kept_tokens: Context tokens after reduction.
        budget: The budget asked for.
        max_tokens: The most tokens the budget allows (the rate's or target's, or the adaptive mode's upper
            limit); ``kept_tokens <= max_tokens`` always, except that one unit is always kept (and, in adaptive
            mode, force-kept units above it).
        kept_spans: Character spans ``(start, end)`` of the context that were kept, in order (runs of kept
            tokens; the whitespace before a kept token belongs to it): ``"".join(context[s:e] for s, e in
            kept_spans)`` is the kept text (exactly ``text`` with byte-level tokenizers such as SmolLM2's).
        forced_tokens: Context tokens kept because of ``force_keep`` (whole units), counted in ``kept_tokens``.
    """

    text: str
    kept_ids: list[int]
    keep_mask: np.ndarray
    kept_ratio: float
    original_tokens: int
    kept_tokens: int
    budget: Budget = Budget()
    max_tokens: int | None = None
    kept_spans: tuple[tuple[int, int], ...] = ()
    forced_tokens: int = 0


DOCUMENT_SEPARATOR = "\n\n"
"""What :meth:`TokenReducer.reduce_documents` puts between documents (a blank line)."""


@dataclass
class KeptDocument:
    """What was kept of one document of :meth:`TokenReducer.reduce_documents`.

    Attributes:
        index: The document's position in the input list.
        spans: Character spans ``(start, end)`` of the document that were kept, in order (none when dropped).
        text: ``"".join(document[s:e] for s, e in spans)``: its kept text ("" when dropped).
    """

    index: int
    spans: tuple[tuple[int, int], ...]
    text: str

    @property
    def dropped(self) -> bool:
        """True when nothing of the document was kept."""
        return not self.spans


@dataclass
class DocumentsReduction:
    """The result of :meth:`TokenReducer.reduce_documents`.

    Attributes:
        documents: One :class:`KeptDocument` per input document, in input order.
        dropped: Indices of the documents of which nothing was kept (whitespace-only documents included).
        reduction: The reduction of the joined documents (token counts, ``kept_ratio``, budget, spans in the
            joined text).
    """

    documents: list[KeptDocument]
    dropped: list[int]
    reduction: Reduction

    @property
    def kept(self) -> list[KeptDocument]:
        """The documents of which something was kept, in input order."""
        return [d for d in self.documents if not d.dropped]

    @property
    def text(self) -> str:
        """The kept documents' texts, each stripped, joined with blank lines: the context to put in a prompt."""
        return DOCUMENT_SEPARATOR.join(d.text.strip() for d in self.kept)


def join_documents(documents: Sequence[str]) -> tuple[str, dict[int, int]]:
    """The non-blank documents joined with :data:`DOCUMENT_SEPARATOR`, and each one's start in the joined text.

    Raises:
        ReducerError: On no documents, a document that is not a string, or only whitespace-only documents.
    """
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise ReducerError(f"documents must be a list of strings, got {type(documents).__name__}")
    if not documents:
        raise ReducerError("no documents to reduce")
    for i, d in enumerate(documents):
        if not isinstance(d, str):
            raise ReducerError(f"document {i} is {type(d).__name__}, not a string")
    used = [i for i, d in enumerate(documents) if d.strip()]
    if not used:
        raise ReducerError(f"all {len(documents)} documents are empty or whitespace only")
    starts, pos = {}, 0
    for i in used:
        starts[i] = pos
        pos += len(documents[i]) + len(DOCUMENT_SEPARATOR)
    return DOCUMENT_SEPARATOR.join(documents[i] for i in used), starts


def split_documents(documents: Sequence[str], starts: dict[int, int], reduction: Reduction) -> DocumentsReduction:
    """The joined text's reduction told per document: each one's kept spans and text."""
    kept_docs = []
    for i, doc in enumerate(documents):
        start = starts.get(i)
        doc_spans = []
        if start is not None:
            for s, e in reduction.kept_spans:
                s, e = max(s, start) - start, min(e, start + len(doc)) - start
                if s < e and doc[s:e].strip():
                    doc_spans.append((s, e))
        kept_docs.append(KeptDocument(i, tuple(doc_spans), "".join(doc[s:e] for s, e in doc_spans)))
    return DocumentsReduction(kept_docs, [d.index for d in kept_docs if d.dropped], reduction)
