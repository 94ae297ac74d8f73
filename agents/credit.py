"""The evidence teacher: which sentences of an unmarked example matter, found with the frozen model itself.

Users' data rarely marks its evidence. For each training example the teacher

1. scores every sentence **alone** with the frozen model (add-one-in on an empty context): the sentences the
   model's answer comes from stand out, over the whole context and not only a lexical top share;
2. forms a **candidate set** of ``rate`` of the context (the sentences that earned most alone, then each lexical
   channel's best sentence, then the rest by their best channel, ties to the later sentence) and takes each of
   its best candidates out in turn (**leave-one-out**): the sentences the answer needs given the rest, and the
   distractors whose removal helps (the harmful set);
3. picks the **deciding sentence**: the best alone, or of the sentences near it (every sentence that names the
   answer scores high alone) the one the question reaches most directly; a left-out sentence joins it only where
   its credit, its score alone and the question's words all point at it (leave-one-out alone is noisy);
4. **completes the chain** from the question to each deciding sentence with a bridge path over shared words
   (:func:`bridge_path`), inside the deciding sentence's paragraph: a 135M model answers from the only place
   left, so links that only name the next one (the bag that holds the coin, the person who took the bag) never
   earn credit with the frozen model, but the reducer needs them to find the last link.

Details: ``docs/internals.md``, section ``agents.credit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from envs.core import TokenKeepCore
from policies.budget import Budget, fill_units
from policies.lexical import CHANNELS, TextWords, text_words, token_paragraphs, words
from policies.network import PRIOR_CHANNELS
from policies.processor import Encoded

CANDIDATE_CHANNELS = ("q_match", "hop_match", "sent_bm25", "sent_hop2", "sent_hop3", "last_mention")
LEAVE_OUT = 8
"""Candidates taken out one at a time (the best by their score alone): the cost of step 2 stays bounded on long
documents, where a candidate set at rate 0.3 holds dozens of sentences."""
QUESTION_MATCH = 0.9
"""A sentence matches the question as well as the best one when its shared words' idf sum is within this share of
the best sentence's; a deciding sentence answers the question directly when it holds a question word whose idf is
within this share of the question's rarest word present in the context."""
LINK_KEEP = 0.8
"""A bridge path with more links is taken only when its weakest link is stronger than this share of the best
path's weakest link (``bridge_path``)."""
ALONE_NEAR = 0.8
"""Sentences whose score alone is at least this share of the best sentence's may be the deciding one
(:func:`_best_alone` picks among them by the question). The same person's earlier moves score 0.5-0.75 of the
best alone (a 135M model still gives the answer some weight), other people's moves to the answer's place 0.85-1."""
ALONE_SHARE = 0.5
"""A left-out sentence with positive credit is deciding besides the best alone only if its score alone is at least
this share of the best (:func:`_deciding`)."""
MAX_LINKS = 3
"""Sentences a bridge path may put between the question's best match and the deciding sentence, plus one."""


@dataclass(frozen=True)
class UnitCredit:
    """What the teacher found in one example.

    Attributes:
        evidence: ``[n_units]`` bool: the teacher's evidence (deciding sentences and their bridge paths).
        credit: ``[n_units]`` float: the unit's sentence's leave-one-out credit (0 where not taken out).
        assessed: ``[n_units]`` bool: the unit's sentence was taken out of the candidate set (has a credit).
        alone: ``[n_sentences]`` float: each sentence's score alone minus the empty context's.
        candidates: ``[n_sentences]`` bool: the candidate set of step 2.
        base_score: The task score of the whole candidate set.
        prompts: Prompts scored for this example.
        tokens: Context tokens in those prompts.
        model_tokens: Tokens the frozen model read for them: context, question and answer (the chat template's
            prefix is cached and not counted).
        full_tokens: The same for one prompt with the full context (the unit of the teacher's cost).
    """

    evidence: np.ndarray
    credit: np.ndarray
    assessed: np.ndarray
    alone: np.ndarray
    candidates: np.ndarray
    base_score: float
    prompts: int
    tokens: int
    model_tokens: int
    full_tokens: int


def sentence_priority(enc: Encoded, alone: np.ndarray | None = None, threshold: float = 0.0) -> np.ndarray:
    """Each sentence's candidate priority (higher first; the order :func:`policies.budget.fill_units` reads).

    First the sentences whose score alone rose above ``threshold`` (best first), then the best sentence of each
    lexical channel of :data:`CANDIDATE_CHANNELS`, each channel ranked on its own; then the rest by their best
    channel. Ties go to the later sentence (a later mention overrides an earlier one). A maximum over the
    max-normalised channels alone let an expansion channel's 1.0 on an unrelated sentence, or an earlier tie,
    push out the deciding one (docs/results/2026-12-03.md, "Chained evidence").
    """
    n_sent = enc.n_sentences
    per_channel = np.zeros((len(CANDIDATE_CHANNELS), n_sent))
    for row, c in zip(per_channel, CANDIDATE_CHANNELS, strict=True):
        if enc.lexical.shape[1]:
            np.maximum.at(row, enc.sentence_index, enc.lexical[:, CHANNELS.index(c)])
    later_first = -np.arange(n_sent)
    earned: list[int] = []
    if alone is not None:
        earned = [s for s in np.lexsort((later_first, -alone)).tolist() if alone[s] > threshold]
    firsts = [int(np.lexsort((later_first, -row))[0]) for row in per_channel if row.max() > 0]
    rest = np.lexsort((later_first, -per_channel.max(0))).tolist() if n_sent else []
    order = list(dict.fromkeys([*earned, *firsts, *rest]))
    priority = np.zeros(n_sent)
    priority[order] = (n_sent - np.arange(len(order))) / max(n_sent, 1)
    return priority


def candidate_sentences(
    enc: Encoded, rate: float, alone: np.ndarray | None = None, threshold: float = 0.0
) -> np.ndarray:
    """Bool per sentence of ``enc``: the candidates in :func:`sentence_priority`'s order, filled to ``rate``."""
    lengths = np.bincount(enc.sentence_index, minlength=enc.n_sentences)
    budget = Budget(rate=rate).max_tokens(len(enc.context)) or 0
    return fill_units(sentence_priority(enc, alone, threshold), lengths, budget)


def bridge_path(tw: TextWords, question: str, target: int, paragraphs: np.ndarray | None = None) -> list[int]:
    """The sentences that lead from ``question`` to sentence ``target`` over shared words, ``target`` included.

    Words are weighted by their inverse sentence frequency in the context (``tw.inv``: no stop list; a word in
    every sentence weighs almost nothing). If ``target`` holds one of the question's rarest words it answers
    the question directly: ``[target]``. Otherwise the path starts at a sentence that matches the question about
    as well as the best one (:data:`QUESTION_MATCH`; for "where was X before Y" the sentence that names X and Y),
    and each link joins two sentences through the rarest word they share; of the paths with up to
    :data:`MAX_LINKS` links, the shortest whose weakest link is within :data:`LINK_KEEP` of the best path's is
    taken (ties to later sentences). With ``paragraphs`` (the paragraph of each sentence), a path that leaves
    ``target``'s paragraph is not taken (``[target]``): across separately written passages (retrieved documents,
    sections of a long text) a shared word ("band", "position", "secretary") joins by chance far more often than
    it names the next link. Measured with the marked answer-bearing sentence as ``target`` on 64 training
    examples per family: the path equals the marked evidence in 64 / 63 / 63 / 59 of state / multihop /
    multihop3 / before, 64 of kv and qa (no blank lines), and 62 of passages and 49 of longdoc (across
    paragraphs: 23 and 48).
    """
    return Bridges(tw, question, paragraphs).chain(target)


class Bridges:
    """The bridge paths of one context and question (:func:`bridge_path`) to any target sentence.

    The widest-path table over the sentences does not depend on the target, so it is built once per example and
    every candidate deciding sentence reads its path from it.
    """

    def __init__(self, tw: TextWords, question: str, paragraphs: np.ndarray | None = None) -> None:
        sets = tw.sentence_sets
        self.paragraphs = paragraphs
        self.sets = sets
        self.inv = tw.inv
        self.q = {w for w in words(question) if w in tw.inv}
        self.rarest = max((tw.inv[w] for w in self.q), default=0.0)
        if not self.q:
            return
        n = len(sets)
        match = np.array([sum(tw.inv[w] for w in self.q & s) for s in sets])
        start = match >= QUESTION_MATCH * match.max()
        link = np.zeros((n, n))
        for a in range(n):
            for b in range(a + 1, n):
                link[a, b] = link[b, a] = max((tw.inv[w] for w in sets[a] & sets[b]), default=0.0)
        # widest[k][s]: the weakest link of the best path from a question match to s through k links
        self.widest = [np.where(start, np.inf, -np.inf)]
        self.back = [np.full(n, -1)]
        for _ in range(MAX_LINKS):
            via = np.minimum(self.widest[-1][:, None], link)
            np.fill_diagonal(via, -np.inf)
            self.back.append(n - 1 - via[::-1].argmax(0))  # ties: the later sentence
            self.widest.append(via.max(0))

    def path(self, target: int) -> tuple[list[int], float]:
        """The path to ``target`` and its strength: inf where ``target`` answers directly, else its weakest link."""
        if not self.q:
            return [target], 0.0
        if any(self.inv[w] >= QUESTION_MATCH * self.rarest for w in self.q & self.sets[target]):
            return [target], np.inf
        reach = np.array([w[target] for w in self.widest])
        finite = reach[np.isfinite(reach)]
        best = finite.max() if len(finite) else -np.inf
        if not np.isfinite(best):  # the target is a question match itself (no links needed), or nothing reaches it
            return [target], float(reach[0]) if np.isfinite(reach[0]) else 0.0
        links = int(np.flatnonzero(reach >= LINK_KEEP * best)[0])
        path, s = [target], target
        for k in range(links, 0, -1):
            s = int(self.back[k][s])
            path.append(s)
        return sorted(set(path)), float(reach[links])

    def chain(self, target: int) -> list[int]:
        """The evidence a deciding sentence brings: its path, or only ``target`` where the path leaves its paragraph.

        (The path's length and strength still rank the candidates in :func:`_best_alone`.)
        """
        path = self.path(target)[0]
        if self.paragraphs is not None and (self.paragraphs[path] != self.paragraphs[target]).any():
            return [target]  # a chain across paragraphs is joined by chance
        return path


def _overhead(core: TokenKeepCore, i: int) -> int:
    """Tokens of a prompt beyond its context that the frozen model reads (the cached template prefix excluded)."""
    e = core.pool[i]
    layout = core.lm.layout
    return len(layout.middle) + len(e.question) + len(layout.suffix) + len(e.answer_prefix) + len(e.answer)


def unit_credit(
    core: TokenKeepCore,
    indices: Sequence[int],
    rate: float = 0.3,
    threshold: float = 0.3,
    batch: int = 16,
    progress: bool = False,
) -> dict[int, UnitCredit]:
    """The teacher's evidence for pool examples ``indices`` (module docstring; ``docs/internals.md``).

    Args:
        core: The training core (its pool, prepared inputs, frozen model and reward score).
        indices: Pool examples to assess.
        rate: Size of the candidate set, as a share of the context.
        threshold: Score gain (the reward's units) that makes a sentence count: alone against the empty
            context, or as the leave-one-out credit in the candidate set.
        batch: Examples whose prompts are scored in one call.
        progress: Show a progress bar.

    Returns:
        Pool index -> its :class:`UnitCredit`.

    Raises:
        ValueError: If the processor has no lexical channels (the candidates and bridges are built on them).
    """
    if not core.processor.lexical:
        raise ValueError("the evidence teacher ranks sentences by the lexical channels: enable processor.lexical")
    out: dict[int, UnitCredit] = {}
    bar = tqdm(total=len(indices), desc="evidence teacher", unit="example", disable=not progress)
    for start in range(0, len(indices), batch):
        chunk = list(indices[start : start + batch])
        sentences = {i: _sentence_tokens(core, i) for i in chunk}
        # step 1: every sentence alone, and the empty context, in one call
        rows = [i for i in chunk for _ in range(len(sentences[i]) + 1)]
        contexts = [c for i in chunk for c in [(), *sentences[i]]]
        scores = core.score_contexts(rows, contexts)
        alone, at = {}, 0
        for i in chunk:
            n = len(sentences[i])
            alone[i] = scores[at + 1 : at + 1 + n] - scores[at]
            at += 1 + n
        # step 2: the candidate set, and its best candidates taken out one at a time
        rows, contexts, plans = [], [], []
        for i in chunk:
            enc = core.inputs[i]
            cand = candidate_sentences(enc, rate, alone[i], threshold)
            order = np.flatnonzero(cand)
            out_one = order[np.lexsort((-order, -alone[i][order]))][:LEAVE_OUT]
            plans.append((i, cand, out_one, len(contexts)))
            for left_out in (None, *out_one):
                keep = cand.copy()
                if left_out is not None:
                    keep[left_out] = False
                rows.append(i)
                contexts.append(tuple(t for s in np.flatnonzero(keep) for t in sentences[i][s]))
        scores = core.score_contexts(rows, contexts)
        for i, cand, out_one, first in plans:
            enc = core.inputs[i]
            base = float(scores[first])
            n_sent = len(sentences[i])
            sent_credit = np.zeros(n_sent)
            sent_credit[out_one] = base - scores[first + 1 : first + 1 + len(out_one)]
            bridges = Bridges(_words(enc), enc.question_text, sentence_paragraphs(enc))
            deciding = _deciding(alone[i], sent_credit, out_one, threshold, relevance(core, enc), bridges)
            sent_evidence = np.zeros(n_sent, bool)
            for s in deciding:
                sent_evidence[bridges.chain(s)] = True
            unit_sent = np.zeros(enc.n_units, dtype=np.int64)
            unit_sent[enc.unit_index] = enc.sentence_index
            assessed = np.isin(unit_sent, out_one)
            # step 1 read the empty context and every sentence once; step 2 the set and its variants
            prompts = len(sentences[i]) + 1 + 1 + len(out_one)
            tokens = sum(map(len, sentences[i])) + sum(map(len, contexts[first : first + 1 + len(out_one)]))
            out[i] = UnitCredit(
                evidence=sent_evidence[unit_sent],
                credit=sent_credit[unit_sent] * assessed,
                assessed=assessed,
                alone=alone[i],
                candidates=cand,
                base_score=base,
                prompts=prompts,
                tokens=tokens,
                model_tokens=tokens + prompts * _overhead(core, i),
                full_tokens=len(enc.context) + _overhead(core, i),
            )
        bar.update(len(chunk))
    bar.close()
    return out


def _sentence_tokens(core: TokenKeepCore, i: int) -> list[tuple[int, ...]]:
    """The context token ids of each sentence of pool example ``i``."""
    enc = core.inputs[i]
    n_sent = enc.n_sentences
    ids = np.asarray(enc.context)
    return [tuple(ids[enc.sentence_index == s].tolist()) for s in range(n_sent)]


def _deciding(
    alone: np.ndarray,
    credit: np.ndarray,
    left_out: np.ndarray,
    threshold: float,
    about: np.ndarray,
    bridges: Bridges,
) -> list[int]:
    """The deciding sentences: the best alone, and the left-out ones that both alone and in the set count.

    Leave-one-out alone is noisy with a 135M model: taking out one unrelated sentence moved the answer's score by
    0.4-2.5 nats in about one example in three (state, qa), more than the deciding sentence's own credit where a
    second copy or another sentence naming the answer stays in the set, and other people's moves to the answer's
    place earned both credit and a high score alone. So a left-out sentence is deciding besides the best alone
    only if its credit, its score alone (:data:`ALONE_SHARE` of the best) and the question all point at it: it
    holds one of the question's rarest words (``bridges`` reaches it directly).
    """
    top = float(alone.max()) if len(alone) else 0.0
    if top <= threshold:  # nothing raises the answer alone: only facts that matter together, found left out
        return [int(s) for s in left_out if credit[s] > threshold]
    chosen = {_best_alone(alone, about, bridges)}
    chosen |= {
        int(s)
        for s in left_out
        if credit[s] > threshold and alone[s] >= ALONE_SHARE * top and bridges.path(s)[1] == np.inf
    }
    return sorted(chosen)


def _best_alone(alone: np.ndarray, about: np.ndarray, bridges: Bridges) -> int:
    """The deciding sentence by the score alone (called where the best score alone is above the threshold).

    Among the sentences whose score alone is at least :data:`ALONE_NEAR` of the best (every sentence that names
    the answer, for a model that copies it, also other people's moves to the same place): of those the question
    reaches about as strongly as the best (:meth:`Bridges.path`'s weakest link within :data:`LINK_KEEP`; a sentence
    holding one of the question's rarest words is the strongest), the one with the shortest path, then, among
    sentences that hold such a word, the one most ``about`` the question (:func:`relevance`: in "Where is Jack
    now?", "is" is as rare in the context as "Jack", so "Carol is in the garden" answers as directly as "Jack
    walked to the garden" by words alone), then the later one (a copy of a sentence, or a later move, overrides
    an earlier one).
    """
    top = float(alone.max())
    near = np.flatnonzero(alone >= ALONE_NEAR * top).tolist()
    paths = [bridges.path(s) for s in near]
    strongest = max(strength for _, strength in paths)
    # the shortest of the paths about as strong as the strongest: a longer path joins more by chance
    return max(
        (-len(path), round(float(about[s]), 6) if strength == np.inf else 0.0, s)
        for s, (path, strength) in zip(near, paths, strict=True)
        if strength >= LINK_KEEP * strongest
    )[-1]


def relevance(core: TokenKeepCore, enc: Encoded) -> np.ndarray:
    """Each sentence's relevance to the question.

    Its similarity from the sentence encoder where the processor has the semantic channel (it reads meaning, not
    word rarity), else its BM25 against the question.
    """
    column = PRIOR_CHANNELS["semantic" if core.processor.semantic else "bm25"]
    out = np.zeros(enc.n_sentences)
    if enc.lexical.shape[1] > column:
        np.maximum.at(out, enc.sentence_index, enc.lexical[:, column])
    return out


def sentence_paragraphs(enc: Encoded) -> np.ndarray:
    """The paragraph of each sentence of ``enc`` (that of its last token: a first token may hold the blank line)."""
    last = np.zeros(enc.n_sentences, dtype=np.int64)
    np.maximum.at(last, enc.sentence_index, np.arange(len(enc.sentence_index)))
    return token_paragraphs(enc.text, enc.offsets)[last]


def _words(enc: Encoded) -> TextWords:
    """The context's words (computed by the processor, or here for an input prepared without them)."""
    return enc.context_words or text_words(enc.text, enc.offsets, enc.sentence_index)
