"""Reduction methods behind one interface: the trained TokenReducer and heuristic baselines.

Every method turns a batch of examples and a :class:`~policies.budget.Budget` into keep masks over their
context tokens (:meth:`KeepMethod.keep`). Token heuristics rank the tokens (:meth:`KeepMethod.scores`, higher =
keep first) and keep the top ``floor(rate * n)``; ``bm25`` ranks sentences and fills the budget with
:func:`policies.budget.fill_units`, the rule the reducer uses; a trained reducer reduces the example's *text*
through :meth:`~policies.reducer.TokenReducer.reduce_batch`, the API users call. No method ever keeps more
than the budget, so methods compare at equal kept ratios.

Methods:
    full               no reduction (rate ignored)
    random             uniform random ranking
    bm25               sentences ranked by BM25 against the question, kept while they fit (LongLLMLingua's
                       retrieval baseline; statistics from the context's own sentences)
    head / tail        keep the first / last tokens
    selective_context  Selective-Context-style: rank by self-information -log p(token | instruction prefix,
                       preceding context) under the frozen model, read off the full prompt's forward
    llmlingua          LLMLingua-style: rank by perplexity (surprisal) under a small LM, question-aware
                       (the question is placed before the context, as LongLLMLingua does)
    oracle             the task's recorded evidence tokens first, then the rest by position (only for tasks that
                       record evidence)
    evidence           the recorded evidence tokens alone, nothing else (a reference: what keeping exactly the
                       facts gives the frozen model; at most the budget, the earliest first). Where the marks are
                       the answer span itself (the real-text families) this hands the model its answer
    reducer:NAME       a trained :class:`~policies.reducer.TokenReducer`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from envs.lm.frozen_lm import FrozenLM
from envs.tasks.examples import EncodedExample
from policies.budget import Budget, fill_units, keep_top, rank_priorities
from policies.lexical import bm25_scores, token_words, unit_words, words
from policies.reducer import TokenReducer
from policies.reduction import Reduction
from policies.retokenize import project_keep, retokenize
from policies.semantic import SentenceEncoder, similarity_columns
from policies.tokenization import encode_context
from policies.units import segment, unit_lengths


class KeepMethod:
    """A way to choose which context tokens to keep.

    Attributes:
        name: Label in reports.
        uses_rate: False for methods that ignore the budget (``full``).
        static: True when :meth:`scores` ranks tokens once for every rate (token heuristics), so an evaluation
            may rank once and select at each rate.
        adaptive: True when the method can choose how much to keep without a rate (a trained reducer).
    """

    name = "base"
    uses_rate = True
    static = True
    adaptive = False

    def scores(self, encs: Sequence[EncodedExample]) -> list[np.ndarray]:
        """Per-context-token keep scores for each example (higher = keep first)."""
        raise NotImplementedError

    def keep(self, encs: Sequence[EncodedExample], budget: Budget) -> list[np.ndarray]:
        """Bool keep masks over each example's context tokens under ``budget``."""
        return [keep_top(s, budget.max_tokens(len(s))) for s in self.scores(encs)]

    def reduce(self, encs: Sequence[EncodedExample], budget: Budget) -> tuple[list[np.ndarray], list[tuple[int, ...]]]:
        """Keep masks and the reduced contexts the frozen model scores (the kept tokens, unless re-tokenized)."""
        masks = self.keep(encs, budget)
        return masks, [kept_tokens(e.context, m) for e, m in zip(encs, masks, strict=True)]

    def available(self, encs: Sequence[EncodedExample]) -> bool:
        """Whether the method applies to these examples."""
        return True


def kept_tokens(context: Sequence[int], mask: np.ndarray) -> tuple[int, ...]:
    """The context tokens a keep mask keeps, in order."""
    return tuple(t for t, k in zip(context, mask, strict=True) if k)


class FullContext(KeepMethod):
    """Keep everything."""

    name = "full"
    uses_rate = False

    def scores(self, encs):  # noqa: D102
        return [np.ones(len(e.context)) for e in encs]

    def keep(self, encs, budget):  # noqa: D102
        return [np.ones(len(e.context), dtype=bool) for e in encs]


class RandomKeep(KeepMethod):
    """Uniform random ranking, seeded per example position in the batch."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, encs):  # noqa: D102
        return [np.random.default_rng([self.seed, i]).random(len(e.context)) for i, e in enumerate(encs)]


class HeadKeep(KeepMethod):
    """Keep the first tokens."""

    name = "head"

    def scores(self, encs):  # noqa: D102
        return [-np.arange(len(e.context), dtype=np.float64) for e in encs]


class TailKeep(KeepMethod):
    """Keep the last tokens."""

    name = "tail"

    def scores(self, encs):  # noqa: D102
        return [np.arange(len(e.context), dtype=np.float64) for e in encs]


class SurprisalMethod(KeepMethod):
    """Ranks context tokens by surprisal: -log p(token | the tokens before it in a scoring prompt) under ``lm``.

    A subclass says which prompt holds the context (:meth:`surprisal_prompt`); the scores are the negated
    log-probabilities of that prompt's context span, from one batched
    :meth:`~envs.lm.frozen_lm.FrozenLM.score_continuations_and_spans` call. The evaluator instead batches these
    prompts with the rest of its work (a selective-context prompt *is* the full prompt, scored anyway) and ranks
    with :meth:`scores_from`.

    Attributes:
        lm: The scoring LM.
    """

    lm: FrozenLM

    def surprisal_prompt(self, enc: EncodedExample) -> tuple[list[int], slice]:
        """The prompt whose span ``slice`` is exactly the example's context tokens."""
        raise NotImplementedError

    @staticmethod
    def scores_from(span_logprobs: torch.Tensor) -> np.ndarray:
        """Keep scores (surprisal, float64) from the context span's log-probabilities."""
        return -span_logprobs.numpy().astype(np.float64)

    def scores(self, encs):  # noqa: D102
        prompts = [self.surprisal_prompt(e) for e in encs]
        no_continuations: list[list[tuple[int, ...]]] = [[] for _ in encs]
        res = self.lm.score_continuations_and_spans([p for p, _ in prompts], no_continuations, [s for _, s in prompts])
        return [self.scores_from(r.span_logprobs) for r in res]


class SelectiveContext(SurprisalMethod):
    """Self-information of each context token under the frozen model, Selective-Context style (no question).

    The surprisal of a context token is taken in the full prompt: given the chat header and instruction (the
    layout prefix) and the context before it; the question comes after the context, so it is not seen. This is
    the forward that scores the full context, so an evaluation gets it for free. (Until issue 17 the context was
    scored alone, its first token kept first; conditioning on the instruction changes the ranking slightly.)
    """

    name = "selective_context"

    def __init__(self, lm: FrozenLM) -> None:
        self.lm = lm

    def surprisal_prompt(self, enc):  # noqa: D102
        return self.lm.build_prompt(enc.context, enc.question, enc.answer_prefix)


class LLMLinguaStyle(SurprisalMethod):
    """Token surprisal under a small LM with the question placed before the context (question-aware).

    The scoring prompt is "Question:", the question and a line break, then the context (no chat template).

    Args:
        small_lm: The small scoring LM; it must share the frozen model's tokenizer.
    """

    name = "llmlingua"

    def __init__(self, small_lm: FrozenLM) -> None:
        self.lm = small_lm

    def surprisal_prompt(self, enc):  # noqa: D102
        head = [*self.lm.encode("Question:"), *enc.question, *self.lm.encode("\n")]
        return head + list(enc.context), slice(len(head), len(head) + len(enc.context))


class Oracle(KeepMethod):
    """Evidence tokens first (in order), then the rest by position."""

    name = "oracle"

    def available(self, encs):  # noqa: D102
        return all(any(e.evidence) for e in encs)

    def scores(self, encs):  # noqa: D102
        out = []
        for e in encs:
            n = len(e.context)
            out.append(np.asarray(e.evidence, dtype=np.float64) * n + (n - np.arange(n)) / (n + 1))
        return out


class EvidenceOnly(Oracle):
    """The recorded evidence tokens alone (the earliest first where they exceed the budget)."""

    name = "evidence"
    static = False  # keeps less than the budget: not a ranking cut at each rate

    def keep(self, encs, budget):  # noqa: D102
        out = []
        for e, s in zip(encs, self.scores(encs), strict=True):
            evidence = np.asarray(e.evidence, dtype=bool)
            out.append(keep_top(s, min(int(evidence.sum()), budget.max_tokens(len(s)))) & evidence)
        return out


class BM25Sentences(KeepMethod):
    """Sentences ranked by BM25 against the question (idf from the context's own sentences), filled in order."""

    name = "bm25"
    static = False

    def keep(self, encs, budget):  # noqa: D102
        out = []
        for e in encs:
            text = e.example.context
            sentence = segment(text, e.offsets, "sentence")
            docs = unit_words(token_words(text, e.offsets), sentence)
            scores = bm25_scores(docs, words(e.example.question))
            keep = fill_units(rank_priorities(scores), unit_lengths(sentence), budget.max_tokens(len(e.context)))
            out.append(keep[sentence])
        return out


class SemanticSentences(KeepMethod):
    """Sentences ranked by a sentence encoder's similarity to the question (the semantic channel), filled in order.

    The dense-retrieval counterpart of :class:`BM25Sentences`; also what an untrained reducer with the semantic
    prior ranks by.

    Args:
        encoder: The sentence encoder (default: :meth:`SentenceEncoder.default`, loaded at first use).
    """

    name = "semantic"
    static = False

    def __init__(self, encoder: SentenceEncoder | None = None) -> None:
        self.encoder = encoder

    def keep(self, encs, budget):  # noqa: D102
        self.encoder = self.encoder or SentenceEncoder.default()
        sents = [segment(e.example.context, e.offsets, "sentence") for e in encs]
        items = [(e.example.context, e.offsets, s, e.example.question) for e, s in zip(encs, sents, strict=True)]
        out = []
        for e, sentence, sim in zip(encs, sents, similarity_columns(items, self.encoder), strict=True):
            scores = np.zeros(int(sentence.max()) + 1 if len(sentence) else 0)
            np.maximum.at(scores, sentence, sim[:, 0])
            keep = fill_units(rank_priorities(scores), unit_lengths(sentence), budget.max_tokens(len(e.context)))
            out.append(keep[sentence])
        return out


class ReducerMethod(KeepMethod):
    """A TokenReducer, called through its text API (:meth:`~policies.reducer.TokenReducer.reduce_batch`).

    Args:
        reducer: The reducer.
        name: Label in reports.
        token_cost: Token cost the policy is conditioned on (None: the reducer's default).
        retokenize_with: The frozen model's tokenizer when it differs from the reducer's: the reducer's kept text
            is re-tokenized with it (:mod:`policies.retokenize`), and its keep mask over the evaluation's tokens
            is the projection of the kept characters. None: the tokenizers are the same.
    """

    static = False
    adaptive = True

    def __init__(
        self, reducer: TokenReducer, name: str, token_cost: float | None = None, retokenize_with: Any = None
    ) -> None:
        self.reducer = reducer
        self.name = name
        self.token_cost = token_cost
        self.retokenize_with = retokenize_with

    def _reductions(self, encs: Sequence[EncodedExample], budget: Budget) -> list[Reduction]:
        return self.reducer.reduce_batch(
            [e.example.context for e in encs],
            [e.example.question for e in encs],
            rate=budget.rate,
            target_tokens=budget.target_tokens,
            token_cost=(budget.token_cost if budget.token_cost is not None else self.token_cost)
            if budget.adaptive
            else None,
        )

    def keep(self, encs, budget):  # noqa: D102
        return self.reduce(encs, budget)[0]

    def reduce(self, encs, budget):  # noqa: D102
        reductions = self._reductions(encs, budget)
        if self.retokenize_with is not None:
            masks, contexts = [], []
            for e, red in zip(encs, reductions, strict=True):
                src = encode_context(self.reducer.tokenizer, e.example.context)[1]
                masks.append(project_keep(src, red.keep_mask, e.offsets))
                contexts.append(retokenize(red.text, self.retokenize_with))
            return masks, contexts
        masks = []
        for e, red in zip(encs, reductions, strict=True):
            if red.original_tokens != len(e.context):
                raise ValueError(
                    f"{self.name}: the reducer tokenised a {e.example.family} context into {red.original_tokens} "
                    f"tokens, the evaluation into {len(e.context)}; they must share a tokenizer (or re-tokenize)"
                )
            masks.append(np.asarray(red.keep_mask, dtype=bool))
        return masks, [kept_tokens(e.context, m) for e, m in zip(encs, masks, strict=True)]


HEURISTICS = ("random", "head", "tail", "bm25", "semantic", "selective_context", "llmlingua")
"""The baselines that rank without the answer (what a reducer must beat)."""
BASELINES = ("full", *HEURISTICS, "oracle", "evidence")
"""Every baseline ``eval.py --baselines`` knows: the full context, the heuristics and the two evidence oracles."""


def make_baselines(
    names: Sequence[str], lm: FrozenLM, small_lm: FrozenLM | None = None, seed: int = 0
) -> list[KeepMethod]:
    """Instantiate baselines by name.

    Raises:
        ValueError: On an unknown name, or a small LM whose tokenizer differs from the frozen model's.
    """
    out: list[KeepMethod] = []
    for n in names:
        if n == "full":
            out.append(FullContext())
        elif n == "random":
            out.append(RandomKeep(seed))
        elif n == "head":
            out.append(HeadKeep())
        elif n == "tail":
            out.append(TailKeep())
        elif n == "bm25":
            out.append(BM25Sentences())
        elif n == "semantic":
            out.append(SemanticSentences())
        elif n == "selective_context":
            out.append(SelectiveContext(lm))
        elif n == "llmlingua":
            small = small_lm or lm
            if small.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
                raise ValueError("the llmlingua small LM must share the frozen model's tokenizer")
            out.append(LLMLinguaStyle(small))
        elif n == "oracle":
            out.append(Oracle())
        elif n == "evidence":
            out.append(EvidenceOnly())
        else:
            raise ValueError(f"unknown baseline {n!r}; choose from {', '.join(BASELINES)}")
    return out
