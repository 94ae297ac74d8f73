"""Force-keep and character spans: which units every selection keeps, and a keep mask read back as text spans.

:func:`resolve_force_keep` turns ``(start, end)`` character spans or strings into checked spans (and
:func:`document_force_keep` the items of several documents into spans of their joined text),
:func:`force_keep_mask` marks the whole units they touch (of a context prepared by :mod:`policies.processor`),
and :func:`kept_spans` gives a keep mask back as character spans of the text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.processor import Encoded

ForceKeep = Sequence[tuple[int, int] | str]
"""What may be force-kept in one context: ``(start, end)`` character spans and strings (every occurrence)."""


def resolve_force_keep(context: str, items: ForceKeep) -> tuple[tuple[int, int], ...]:
    """Checked character spans of ``items`` in ``context``, sorted.

    A ``(start, end)`` item is a span of ``context[start:end]``; a string item stands for *every*
    non-overlapping occurrence of it in the context.

    Raises:
        ValueError: If ``items`` is not a list, an item is malformed (neither two ints nor a non-empty string), a
            span is out of range, a string does not occur, or two spans overlap; the message names the item.
    """
    _check_list(items, "(start, end) spans or strings")
    spans: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, str):
            spans += _occurrences([(0, context)], item, "the context")
            continue
        span = _int_tuple(item, 2)
        if span is None:
            raise ValueError(f"force_keep item {item!r} is neither a (start, end) span of integers nor a string")
        s, e = span
        _check_range(span, s, e, len(context), "the context's")
        spans.append((s, e))
    spans.sort()
    for (s0, e0), (s1, e1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise ValueError(
                f"force_keep spans overlap: ({s0}, {e0}) {context[s0:e0][:40]!r} and ({s1}, {e1}) "
                f"{context[s1:e1][:40]!r}"
            )
    return tuple(spans)


def document_force_keep(
    documents: Sequence[str], starts: dict[int, int], items: Sequence[str | tuple[int, int, int]]
) -> list[tuple[int, int]]:
    """``force_keep`` of :meth:`TokenReducer.reduce_documents` as spans of the joined text.

    Strings stand for every occurrence in every document; ``(document, start, end)`` spans are spans of one
    document. ``starts`` maps each document that is in the joined text to its offset there. The spans are
    :func:`resolve_force_keep` items of the joined text, which sorts them and refuses overlaps.

    Raises:
        ValueError: On a malformed item, a span outside its document, a span of a missing or whitespace-only
            document, or a string that occurs in no document.
    """
    _check_list(items, "strings and (document, start, end) spans")
    parts = [(start, documents[i]) for i, start in starts.items()]
    spans: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, str):
            spans += _occurrences(parts, item, "any document")
            continue
        span = _int_tuple(item, 3)
        if span is None:
            raise ValueError(f"force_keep item {item!r} is neither a (document, start, end) span nor a string")
        d, s, e = span
        if not 0 <= d < len(documents):
            raise ValueError(f"force_keep span {span} names document {d}, but there are {len(documents)}")
        if d not in starts:
            raise ValueError(f"force_keep span {span} is in document {d}, which is whitespace only")
        _check_range(span, s, e, len(documents[d]), f"document {d}'s")
        spans.append((starts[d] + s, starts[d] + e))
    return spans


def occurring_strings(items: Sequence[str], texts: Sequence[str]) -> list[str]:
    """The strings of ``items`` that occur in one of ``texts``, once each, in order; whitespace-only ones dropped.

    For callers whose force-keep strings are a wish list (LLMLingua's ``force_tokens``, the RAG integrations'
    ``force_keep``): a string absent from this call's text is skipped instead of refused.
    """
    return [s for s in dict.fromkeys(items) if s.strip() and any(s in t for t in texts)]


def _check_list(items: object, what: str) -> None:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"force_keep must be a list of {what}, got {type(items).__name__}")


def _int_tuple(item: object, n: int) -> tuple[int, ...] | None:
    """``item`` as ``n`` ints, or None if it is not a tuple or list of ``n`` integers (bools are not integers)."""
    if isinstance(item, (tuple, list)) and len(item) == n:
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in item):
            return tuple(int(x) for x in item)
    return None


def _check_range(item: tuple[int, ...], s: int, e: int, length: int, whose: str) -> None:
    if not 0 <= s < e <= length:
        raise ValueError(
            f"force_keep span {item} is out of range: need 0 <= start < end <= {length} ({whose} length in characters)"
        )


def _occurrences(parts: Sequence[tuple[int, str]], item: str, where: str) -> list[tuple[int, int]]:
    """Spans of every non-overlapping occurrence of ``item`` in each ``(offset, text)`` part, offset added."""
    if not item:
        raise ValueError("force_keep has an empty string")
    out = []
    for offset, text in parts:
        at = text.find(item)
        while at >= 0:
            out.append((offset + at, offset + at + len(item)))
            at = text.find(item, at + len(item))
    if not out:
        raise ValueError(f"force_keep string {item[:60]!r} does not occur in {where}")
    return out


def char_coverage(offsets: Sequence[tuple[int, int]], n_chars: int) -> np.ndarray:
    """``[n_tokens, 2]`` the characters each token stands for: from the previous token's end to its own end.

    Tokenizers may leave whitespace out of a token's offsets; here it belongs to the token after it (as in the
    units), and the text after the last token to the last one, so the tokens cover the text without gaps.
    """
    n = len(offsets)
    out = np.zeros((n, 2), dtype=np.int64)
    end = 0
    for t, (_, e) in enumerate(offsets):
        out[t, 0] = end
        end = max(end, int(e))
        out[t, 1] = end
    if n:
        out[-1, 1] = max(int(out[-1, 1]), n_chars)
    return out


def force_keep_mask(enc: Encoded, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Bool per context token of a prepared (whole) context: the tokens of every unit that a span touches.

    A unit is forced when one of its tokens covers a character of a span (:func:`char_coverage`), so forced text
    is kept as whole units: with word units, a span over part of a word keeps the whole word.
    """
    keep = np.zeros(len(enc.context), dtype=bool)
    if not spans or not len(enc.context):
        return keep
    cov = char_coverage(enc.offsets, len(enc.text))
    for s, e in spans:
        keep |= (cov[:, 0] < e) & (cov[:, 1] > s)
    units = np.unique(enc.unit_index[keep])
    return np.isin(enc.unit_index, units)


def kept_spans(offsets: Sequence[tuple[int, int]], keep: np.ndarray, n_chars: int) -> tuple[tuple[int, int], ...]:
    """The character spans of a text that a keep mask over its tokens keeps (runs of kept tokens, merged).

    Joining ``text[s:e]`` over the spans gives the kept text (the whitespace before a kept token included).
    """
    cov = char_coverage(offsets, n_chars)
    out: list[list[int]] = []
    for (s, e), k in zip(cov.tolist(), np.asarray(keep, dtype=bool).tolist(), strict=True):
        if not k or e <= s:
            continue
        if out and out[-1][1] == s:
            out[-1][1] = e
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)
