"""Serving a reducer to a frozen model with another tokenizer: the kept text, re-tokenized.

A reducer selects tokens of its own tokenizer (the one its features were trained on). When the model that
answers uses another tokenizer (a reducer trained against one model, serving another), its kept token ids mean
nothing to that model: what crosses over is the kept *text* (``Reduction.text``, the kept tokens decoded), which
:func:`retokenize` encodes with the serving model's tokenizer. Where the same tokenizer is used, the kept ids are
passed on unchanged and nothing here runs.

For reports that count the serving model's context tokens (kept ratio, evidence recall, highlighted examples),
:func:`project_keep` maps the kept characters onto that tokenization: one of its tokens counts as kept when at
least half of its characters were kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.tokenization import encode_text

Offsets = Sequence[tuple[int, int]]


def retokenize(text: str, tokenizer: Any) -> tuple[int, ...]:
    """Token ids of a reducer's kept text under the serving model's tokenizer (no special tokens)."""
    return encode_text(tokenizer, text)


def kept_characters(offsets: Offsets, keep: Sequence[bool], n_chars: int) -> np.ndarray:
    """Bool ``[n_chars]``: the characters covered by the kept tokens (``offsets`` are character spans)."""
    chars = np.zeros(n_chars, dtype=bool)
    for (start, end), k in zip(offsets, keep, strict=True):
        if k:
            chars[start:end] = True
    return chars


def project_keep(src_offsets: Offsets, src_keep: Sequence[bool], dst_offsets: Offsets) -> np.ndarray:
    """Keep mask over another tokenization of the same text: a token is kept when half its characters are.

    Args:
        src_offsets: Character spans of the reducer's tokens.
        src_keep: The reducer's keep mask.
        dst_offsets: Character spans of the serving model's tokens of the same text.

    Returns:
        Bool ``[len(dst_offsets)]``.
    """
    n = max([e for _, e in src_offsets] + [e for _, e in dst_offsets] + [0])
    chars = kept_characters(src_offsets, src_keep, n)
    out = np.zeros(len(dst_offsets), dtype=bool)
    for i, (start, end) in enumerate(dst_offsets):
        if end > start:
            out[i] = chars[start:end].mean() >= 0.5
    return out
