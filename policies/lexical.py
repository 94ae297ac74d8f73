"""Cheap lexical channels: which context tokens and sentences relate to the question, from text alone.

No corpus and no model: statistics come from the context itself (its sentences are the documents), so the
channels work for any text and any tokenizer. Words are regex word-character runs (any script), lowercased; a
token's word is the word its character span overlaps.

Details: ``docs/internals.md``, section ``policies.lexical``.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CHANNELS = ("q_match", "hop_match", "sent_bm25", "sent_hop2", "sent_hop3", "last_mention", "position")
PARAGRAPH_CHANNELS = ("para_bm25",)
KEPT_CHANNELS = ("kept", "kept_match", "kept_bm25", "kept_last", "kept_prev", "later_round")
KEPT_SENTENCE = 0.5
"""A sentence counts as kept (for ``kept_last`` / ``kept_prev``) when at least this share of its tokens was kept."""
WORD = re.compile(r"\w+")
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
"""A blank line (possibly holding spaces) between two paragraphs."""


def words(text: str) -> list[str]:
    r"""Lowercased regex ``\w+`` words of a text (Unicode letters and digits, underscore)."""
    return [w.lower() for w in WORD.findall(text)]


def token_words(text: str, offsets: Sequence[tuple[int, int]]) -> list[list[str]]:
    """For each token, the (lowercased) words its character span overlaps."""
    spans = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(text)]
    starts = np.asarray([s for s, _, _ in spans], dtype=np.int64)
    first = np.searchsorted(starts, np.asarray([s for s, _ in offsets], dtype=np.int64), side="right") - 1
    out: list[list[str]] = []
    for (s, e), i in zip(offsets, np.maximum(first, 0).tolist(), strict=True):
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


@dataclass(frozen=True)
class TextWords:
    """The words of a context, computed once and shared by every round's channels (they depend on text only).

    Attributes:
        tokens: The words each token overlaps (:func:`token_words`).
        sentences: The words of each sentence (:func:`unit_words` over the sentence index).
        sentence_sets: ``set(sentences[s])`` per sentence.
        inv: Inverse sentence frequency of every word (:func:`idf` over the sentences).
        top_idf: The largest ``inv`` value (1.0 when there is none).
        occurs: Word -> the sentences it occurs in, ascending.
    """

    tokens: list[list[str]]
    sentences: list[list[str]]
    sentence_sets: list[set[str]]
    inv: dict[str, float]
    top_idf: float
    occurs: dict[str, list[int]]


def text_words(text: str, offsets: Sequence[tuple[int, int]], sentence_index: np.ndarray) -> TextWords:
    """The :class:`TextWords` of a context (``sentence_index``: the sentence of each token)."""
    tw = token_words(text, offsets)
    sents = unit_words(tw, sentence_index)
    inv = idf(sents)
    sets = [set(ws) for ws in sents]
    occurs: dict[str, list[int]] = {}
    for s_i, ws in enumerate(sets):
        for w in ws:
            occurs.setdefault(w, []).append(s_i)
    return TextWords(tw, sents, sets, inv, max(inv.values(), default=0.0) or 1.0, occurs)


def bm25_scores(
    docs: Sequence[Sequence[str]], query: Sequence[str] | dict[str, float], k1: float = 1.2, b: float = 0.75
) -> np.ndarray:
    """BM25 score of each doc (a list of words) against a query (words, or word -> weight)."""
    weights = Counter(query) if not isinstance(query, dict) else query
    inv = idf(docs)
    avg = max(float(np.mean([len(d) for d in docs])) if docs else 1.0, 1e-9)
    out = np.zeros(len(docs))
    terms = sorted(weights.items())  # in word order: a float sum in set order differs between processes
    for i, d in enumerate(docs):
        tf = Counter(d)
        norm = k1 * (1 - b + b * len(d) / avg)
        out[i] = sum(wq * inv.get(w, 0.0) * tf[w] * (k1 + 1) / (tf[w] + norm) for w, wq in terms if tf[w])
    return out


def _normalised(x: np.ndarray) -> np.ndarray:
    top = float(x.max()) if len(x) else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def lexical_channels(
    text: str,
    offsets: Sequence[tuple[int, int]],
    sentence_index: np.ndarray,
    question: str,
    context_words: TextWords | None = None,
) -> np.ndarray:
    """The channels of :data:`CHANNELS` for every context token, ``[n_tokens, len(CHANNELS)]`` float32.

    Args:
        text: The context.
        offsets: Character span of each context token.
        sentence_index: Sentence unit of each token (:func:`policies.units.segment` with ``"sentence"``).
        question: The question text (may be empty: question channels are then 0).
        context_words: The context's :func:`text_words`, when already computed (computed here otherwise).
    """
    n = len(offsets)
    out = np.zeros((n, len(CHANNELS)), dtype=np.float32)
    if n == 0:
        return out
    tx = context_words or text_words(text, offsets, sentence_index)
    tw, sents, inv, top_idf = tx.tokens, tx.sentences, tx.inv, tx.top_idf
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
    last_sentence = {w: u for u, ws in enumerate(sents) for w in ws if w in q}  # later sentences overwrite
    sent_of = sentence_index.tolist()
    for t, ws in enumerate(tw):
        if not ws:
            continue
        out[t, 0] = max((inv.get(w, 0.0) / top_idf for w in ws if w in q), default=0.0)
        out[t, 1] = max((inv.get(w, 0.0) / top_idf for w in ws if w in bridge), default=0.0)
        out[t, 5] = max((inv.get(w, 0.0) / top_idf for w in ws if last_sentence.get(w) == sent_of[t]), default=0.0)
    for c, s in enumerate(scores):
        out[:, 2 + c] = _normalised(s)[sentence_index]
    out[:, 6] = pos
    return out


def token_paragraphs(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """The paragraph of each token, ``[n_tokens]`` int64.

    A token's paragraph counts the breaks (blank lines) that end at or before its first character, so a token that
    holds a break belongs to the paragraph before it.
    """
    cuts = np.asarray([m.end() for m in PARAGRAPH_BREAK.finditer(text)], dtype=np.int64)
    return np.searchsorted(cuts, np.asarray([s for s, _ in offsets], dtype=np.int64), side="right")


def paragraph_channels(
    text: str, offsets: Sequence[tuple[int, int]], question: str, context_words: TextWords
) -> np.ndarray:
    """The channels of :data:`PARAGRAPH_CHANNELS` for every context token, ``[n_tokens, 1]`` float32.

    Args:
        text: The context.
        offsets: Character span of each context token.
        question: The question text (may be empty: the channel is then 0).
        context_words: The context's :func:`text_words`.
    """
    n = len(offsets)
    out = np.zeros((n, len(PARAGRAPH_CHANNELS)), dtype=np.float32)
    if n == 0:
        return out
    para = token_paragraphs(text, offsets)
    docs: list[list[str]] = [[] for _ in range(int(para.max()) + 1)]
    last: tuple[int, str] | None = None
    for p, ws in zip(para.tolist(), context_words.tokens, strict=True):
        for w in ws:
            if last != (p, w):  # the pieces of one word count once, as in unit_words
                docs[p].append(w)
            last = (p, w)
        if not ws:
            last = None
    out[:, 0] = _normalised(bm25_scores(docs, list(set(words(question)))))[para]
    return out


def kept_channels(
    text: str,
    offsets: Sequence[tuple[int, int]],
    sentence_index: np.ndarray,
    question: str,
    kept: np.ndarray | None,
    context_words: TextWords | None = None,
) -> np.ndarray:
    """The channels of :data:`KEPT_CHANNELS` for every context token, ``[n_tokens, len(KEPT_CHANNELS)]`` float32.

    Args:
        text: The context.
        offsets: Character span of each context token.
        sentence_index: Sentence unit of each token.
        question: The question text.
        kept: Bool per token: what the previous round kept; None in the first round (all channels 0).
        context_words: The context's :func:`text_words`, when already computed (computed here otherwise): every
            round of one context shares it.
    """
    n = len(offsets)
    out = np.zeros((n, len(KEPT_CHANNELS)), dtype=np.float32)
    if n == 0 or kept is None:
        return out
    kept = np.asarray(kept, dtype=bool)
    if kept.shape != (n,):
        raise ValueError(f"kept must be one bool per context token ({n}), got shape {kept.shape}")
    out[:, 0] = kept
    out[:, 5] = 1.0
    tx = context_words or text_words(text, offsets, sentence_index)
    tw, sents, inv, top_idf, sent_sets = tx.tokens, tx.sentences, tx.inv, tx.top_idf, tx.sentence_sets
    n_sent = len(sents)
    frac = np.bincount(sentence_index, weights=kept, minlength=n_sent) / np.maximum(
        np.bincount(sentence_index, minlength=n_sent), 1
    )
    q = set(words(question))
    # word -> [(sentence, weight)] over the sentences the previous round kept part of
    sources: dict[str, list[tuple[int, float]]] = {}
    for s_i in np.flatnonzero(frac > 0).tolist():
        for w in sent_sets[s_i]:
            sources.setdefault(w, []).append((s_i, float(frac[s_i]) * inv.get(w, 0.0) / top_idf))
    bridge = {w: max(v for _, v in src) for w, src in sources.items() if w not in q}
    whole = (frac >= KEPT_SENTENCE).tolist()
    last: dict[int, dict[str, float]] = {}  # sentence -> {word: weight} for kept_last
    for w, src in sources.items():
        latest = next((s_i for s_i in reversed(tx.occurs[w]) if not whole[s_i]), None)
        if latest is not None:
            last.setdefault(latest, {})[w] = max(v for _, v in src)
    prev: dict[int, dict[str, float]] = {}  # sentence -> {word: weight} for kept_prev
    for k in (s_i for s_i, full in enumerate(whole) if full):
        for w in sent_sets[k]:
            occ = tx.occurs[w]
            j = bisect.bisect_left(occ, k) - 1
            while j >= 0 and whole[occ[j]]:
                j -= 1
            if j >= 0:
                weight = float(frac[k]) * inv.get(w, 0.0) / top_idf
                slot = prev.setdefault(occ[j], {})
                slot[w] = max(slot.get(w, 0.0), weight)
    # kept_match of a token in sentence s: its bridge words' best weight from a kept sentence other than s; per
    # word, the best source and the best from any other sentence answer that for every s
    best: dict[str, tuple[int, float, float]] = {}
    for w in bridge:
        ranked = sorted(sources[w], key=lambda sv: -sv[1])
        best[w] = (ranked[0][0], ranked[0][1], ranked[1][1] if len(ranked) > 1 else 0.0)
    bm = _normalised(bm25_scores(sents, bridge)) if bridge else np.zeros(n_sent)
    sent_of = sentence_index.tolist()
    for t, ws in enumerate(tw):
        if not ws:
            continue
        s_t = sent_of[t]
        hits = [best[w] for w in ws if w in best]
        out[t, 1] = max((v1 if s1 != s_t else v2 for s1, v1, v2 in hits), default=0.0)
        out[t, 3] = max((last.get(s_t, {}).get(w, 0.0) for w in ws), default=0.0)
        out[t, 4] = max((prev.get(s_t, {}).get(w, 0.0) for w in ws), default=0.0)
    out[:, 2] = bm[sentence_index]
    return out
