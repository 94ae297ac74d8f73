"""Force-keep and character spans: which units every selection keeps, and a keep mask read back as text spans.

:func:`resolve_force_keep` turns ``(start, end)`` character spans or strings into checked spans,
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
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"force_keep must be a list of (start, end) spans or strings, got {type(items).__name__}")
    spans: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise ValueError("force_keep has an empty string")
            start = context.find(item)
            if start < 0:
                raise ValueError(f"force_keep string {item[:60]!r} does not occur in the context")
            while start >= 0:
                spans.append((start, start + len(item)))
                start = context.find(item, start + len(item))
            continue
        if not (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in item)
        ):
            raise ValueError(f"force_keep item {item!r} is neither a (start, end) span of integers nor a string")
        s, e = int(item[0]), int(item[1])
        if not 0 <= s < e <= len(context):
            raise ValueError(
                f"force_keep span ({s}, {e}) is out of range: need 0 <= start < end <= {len(context)} (the context's "
                "length in characters)"
            )
        spans.append((s, e))
    spans.sort()
    for (s0, e0), (s1, e1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise ValueError(
                f"force_keep spans overlap: ({s0}, {e0}) {context[s0:e0][:40]!r} and ({s1}, {e1}) "
                f"{context[s1:e1][:40]!r}"
            )
    return tuple(spans)


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
