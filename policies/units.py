"""Selection units: which context tokens are kept or dropped together.

A unit is a run of consecutive context tokens. Three kinds, all built from the tokenizer's character offsets:

* ``token``: one token, except that the byte-level pieces of one character (an emoji, a CJK character, an
  accented letter split by BPE) form one unit, so a kept text never holds half a character;
* ``word``: the tokens of one whitespace-delimited word (a token made only of whitespace joins the word after
  it);
* ``sentence``: the tokens of one sentence; sentences end after ``. ! ? 。 ！ ？`` (and closing quotes or
  brackets) followed by whitespace, or at a line break. A period is no end before a lowercase letter ("e.g. the",
  "approx. five"), after an initial or a title before a capital ("J. K. Rowling", "Dr. Smith"), or after a
  numbering word before a digit ("No. 3 in the charts", "Fig. 2"): a kept sentence is then never half of one.

Every kind is a coarsening of the one before, so a sentence never splits a word and a word never splits a
character.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

Unit = Literal["token", "word", "sentence"]
UNITS: tuple[str, ...] = ("token", "word", "sentence")

_SENTENCE_END = re.compile(r"[.!?。！？][\"'”’)\]]*(?=\s|$)|\n")
_WORD_BEFORE = re.compile(r"(\w+)$")
# before a capital ("Dr. Smith", "St. Louis"); "Inc." or "Jr." often end a sentence too, so they are not listed
_TITLES = frozenset("mr mrs ms dr prof st mt gen col capt lt sgt rev hon gov sen rep".split())
# before a digit ("No. 3", "Vol. 2", "Jan. 5")
_NUMBERING = frozenset(
    "no nos vol vols pp p ch fig figs art sec jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


def _sentence_ends(text: str) -> list[int]:
    """Character offsets where sentences end (see the module docstring)."""
    ends = []
    for m in _SENTENCE_END.finditer(text):
        if text[m.start()] == ".":
            rest = text[m.end() :].lstrip(" \t")
            nxt = rest[:1]
            word = _WORD_BEFORE.search(text[max(0, m.start() - 24) : m.start()])
            w = word.group(1) if word else ""
            if nxt.islower():
                continue
            if nxt.isupper() and ((len(w) == 1 and w.isupper()) or w.lower() in _TITLES):
                continue
            if nxt.isdigit() and w.lower() in _NUMBERING:
                continue
        ends.append(m.end())
    return ends


def _char_groups(offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Group index per token: tokens whose character spans overlap (pieces of one character) share a group.

    A token with an empty span (e.g. a special token) joins the group before it (or after it, if first).
    """
    groups: list[int] = []
    end = -1
    g = -1
    pending = 0  # leading empty-span tokens, assigned to the first real group
    for s, e in offsets:
        if e <= s:
            if g < 0:
                pending += 1
            else:
                groups.append(g)
            continue
        if g < 0 or s >= end:
            g += 1
            if pending:
                groups.extend([g] * pending)
                pending = 0
        groups.append(g)
        end = max(end, e)
    if pending:  # only empty spans: one group
        groups.extend([0] * pending)
    return groups


def _anchor(text: str, s: int, e: int) -> int:
    """The first non-space character of a token span (or its start, if it is all whitespace)."""
    for p in range(s, min(e, len(text))):
        if not text[p].isspace():
            return p
    return s


def _renumber(ids: list[int]) -> np.ndarray:
    """Consecutive unit ids 0..n-1 in order of first appearance (ids are non-decreasing by construction)."""
    out = np.zeros(len(ids), dtype=np.int64)
    cur, last = -1, None
    for i, u in enumerate(ids):
        if u != last:
            cur += 1
            last = u
        out[i] = cur
    return out


def segment(text: str, offsets: Sequence[tuple[int, int]], unit: Unit) -> np.ndarray:
    """Unit index ``[n_tokens]`` (0-based, non-decreasing) of each context token.

    Args:
        text: The context text the offsets point into.
        offsets: ``(start, end)`` character span of each token (a fast tokenizer's offset mapping).
        unit: ``token``, ``word`` or ``sentence``.

    Raises:
        ValueError: On an unknown unit.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(UNITS)}")
    groups = _char_groups(offsets)
    if unit == "token" or not offsets:
        return _renumber(groups)
    # A group's anchor: its first non-space character; whitespace-only groups anchor to the next group.
    first: dict[int, tuple[int, int]] = {}
    for (s, e), g in zip(offsets, groups, strict=True):
        if g not in first:
            first[g] = (s, e)
    n_groups = max(groups) + 1
    anchors = [_anchor(text, *first[g]) for g in range(n_groups)]
    blank = [first[g][1] <= first[g][0] or text[first[g][0] : first[g][1]].isspace() for g in range(n_groups)]
    if unit == "word":
        cuts = [m.start() for m in re.finditer(r"\S+", text)]
    else:
        cuts = [0, *_sentence_ends(text)]
    group_unit = np.searchsorted(np.asarray(cuts, dtype=np.int64), anchors, side="right").tolist()
    for g in range(n_groups - 2, -1, -1):  # whitespace-only pieces belong to what follows them
        if blank[g]:
            group_unit[g] = group_unit[g + 1]
    # Keep unit ids non-decreasing along the tokens (a backward-pointing id would split a unit in two).
    for g in range(1, n_groups):
        group_unit[g] = max(group_unit[g], group_unit[g - 1])
    return _renumber([group_unit[g] for g in groups])


def unit_lengths(unit_index: np.ndarray) -> np.ndarray:
    """Tokens per unit, ``[n_units]``."""
    if len(unit_index) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.bincount(unit_index).astype(np.int64)
