"""Cheap lexical channels: which context tokens and sentences relate to the question, from text alone.

No corpus and no model: statistics come from the context itself (its sentences are the documents), so the
channels work for any text and any tokenizer. Words are regex word-character runs (any script), lowercased; a
token's word is the word its character span overlaps.

Channels per context token, each in [0, 1] (:data:`CHANNELS`):

* ``q_match``: the token's word occurs in the question, weighted by its inverse sentence frequency (words in
  every sentence, like "the", weigh about nothing);
* ``hop_match``: the token's word occurs in the bridge words: the non-question words of the sentence that best
  matches the question, and of the sentence that best matches those (iterated query expansion, as multi-hop
  retrievers do), so an entity linked to the question through another sentence is marked;
* ``sent_bm25``: BM25 of the token's sentence against the question, divided by the best sentence's;
* ``sent_hop2`` / ``sent_hop3``: BM25 of the token's sentence against the first / second expansion;
* ``last_mention``: like ``q_match``, but only on a question word's last occurrence in the context: where
  later statements update earlier ones, the latest mention of what the question asks about is current;
* ``position``: the relative position of the token's sentence in the context (0 first, 1 last).

:func:`bm25_scores` is also the ``bm25`` baseline of ``eval.py`` (LongLLMLingua's retrieval baseline).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

CHANNELS = ("q_match", "hop_match", "sent_bm25", "sent_hop2", "sent_hop3", "last_mention", "position")
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    r"""Lowercased regex ``\w+`` words of a text (Unicode letters and digits, underscore)."""
    return [w.lower() for w in WORD.findall(text)]


def token_words(text: str, offsets: Sequence[tuple[int, int]]) -> list[list[str]]:
    """For each token, the (lowercased) words its character span overlaps."""
    spans = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(text)]
    starts = [s for s, _, _ in spans]
    out: list[list[str]] = []
    for s, e in offsets:
        i = max(0, int(np.searchsorted(starts, s, side="right")) - 1)
        hit = []
        while i < len(spans) and spans[i][0] < e:
            if spans[i][1] > s:
                hit.append(spans[i][2])
            i += 1
        out.append(hit)
    return out


def unit_words(tok_words: Sequence[Sequence[str]], unit_index: np.ndarray) -> list[list[str]]:
    """The words of each unit (a word split over tokens counts once per token run)."""
    n = int(unit_index.max()) + 1 if len(unit_index) else 0
    out: list[list[str]] = [[] for _ in range(n)]
    last: tuple[int, str] | None = None
    for ws, u in zip(tok_words, unit_index, strict=True):
        for w in ws:
            if last != (int(u), w):  # the pieces of one word, token after token, are one occurrence
                out[int(u)].append(w)
            last = (int(u), w)
        if not ws:
            last = None
    return out


def idf(docs: Sequence[Sequence[str]]) -> dict[str, float]:
    """BM25 inverse document frequency of every word over ``docs`` (always >= 0)."""
    n = len(docs)
    df = Counter(w for d in docs for w in set(d))
    return {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}


def bm25_scores(
    docs: Sequence[Sequence[str]], query: Sequence[str] | dict[str, float], k1: float = 1.2, b: float = 0.75
) -> np.ndarray:
    """BM25 score of each doc (a list of words) against a query (words, or word -> weight)."""
    weights = Counter(query) if not isinstance(query, dict) else query
    inv = idf(docs)
    avg = max(float(np.mean([len(d) for d in docs])) if docs else 1.0, 1e-9)
    out = np.zeros(len(docs))
    for i, d in enumerate(docs):
        tf = Counter(d)
        norm = k1 * (1 - b + b * len(d) / avg)
        out[i] = sum(wq * inv.get(w, 0.0) * tf[w] * (k1 + 1) / (tf[w] + norm) for w, wq in weights.items() if tf[w])
    return out


def _normalised(x: np.ndarray) -> np.ndarray:
    top = float(x.max()) if len(x) else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def lexical_channels(
    text: str, offsets: Sequence[tuple[int, int]], sentence_index: np.ndarray, question: str
) -> np.ndarray:
    """The channels of :data:`CHANNELS` for every context token, ``[n_tokens, len(CHANNELS)]`` float32.

    Args:
        text: The context.
        offsets: Character span of each context token.
        sentence_index: Sentence unit of each token (:func:`policies.units.segment` with ``"sentence"``).
        question: The question text (may be empty: question channels are then 0).
    """
    n = len(offsets)
    out = np.zeros((n, len(CHANNELS)), dtype=np.float32)
    if n == 0:
        return out
    tw = token_words(text, offsets)
    sents = unit_words(tw, sentence_index)
    inv = idf(sents)
    top_idf = max(inv.values(), default=0.0) or 1.0
    q = set(words(question))
    scores = [bm25_scores(sents, list(q))]
    seen, bridge, best = set(q), set(), -1
    for _ in range(2):  # two expansions: each takes the best-matching sentence's new words as the next query
        prev = scores[-1].copy()
        if best >= 0:
            prev[best] = -1  # a sentence cannot bridge to itself twice
        best = int(np.argmax(prev)) if prev.max() > 0 else -1
        new = {w for w in sents[best] if w not in seen} if best >= 0 else set()
        seen |= new
        bridge |= new
        scores.append(bm25_scores(sents, {w: inv.get(w, 0.0) for w in new}) if new else np.zeros(len(sents)))
    n_sent = len(sents)
    pos = sentence_index / max(n_sent - 1, 1)
    for t, ws in enumerate(tw):
        out[t, 0] = max((inv.get(w, 0.0) / top_idf for w in ws if w in q), default=0.0)
        out[t, 1] = max((inv.get(w, 0.0) / top_idf for w in ws if w in bridge), default=0.0)
    for c, s in enumerate(scores):
        out[:, 2 + c] = _normalised(s)[sentence_index]
    last_sentence = {w: u for u, ws in enumerate(sents) for w in ws if w in q}  # later sentences overwrite
    for t, ws in enumerate(tw):
        hits = [inv.get(w, 0.0) / top_idf for w in ws if last_sentence.get(w) == sentence_index[t]]
        out[t, 5] = max(hits, default=0.0)
    out[:, 6] = pos
    return out
