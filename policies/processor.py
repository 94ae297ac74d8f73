"""The train/deploy contract: how a (context, question, budget) becomes the policy's observation.

Like a Hugging Face processor, this module is saved with the model (its :class:`ProcessorConfig` is part of
``reducer_config.json``) and is called unchanged by the training environment and the deployed
:class:`~policies.reducer.TokenReducer`, so the two cannot drift. It owns:

* encoding text is :mod:`policies.tokenization` (always plain text: special-token strings are split into
  ordinary tokens);
* :func:`prepare`: selection units (:mod:`policies.units`) and lexical channels (:mod:`policies.lexical`) of an
  encoded context, as an :class:`Encoded`; :func:`process` does both steps for a (context, question) pair, as
  the deployed reducer does;
* long contexts: :func:`windows` cuts an :class:`Encoded` into pieces that fit ``max_len`` with the question,
  at unit boundaries;
* observations (names, shapes, dtypes, bounds; packing a batch) are :mod:`policies.observations`;
* force-keep and character spans are :mod:`policies.force_keep`;
* rounds: with ``rounds`` R > 1 the policy selects R times; round k+1's observation is :func:`condition` of the
  prepared context on what round k kept (its lexical channels gain :data:`~policies.lexical.KEPT_CHANNELS`),
  and round k keeps the best units within :meth:`ProcessorConfig.probe_tokens`. Only the last round's
  selection, under the real budget, is the reduction.

Details: ``docs/internals.md``, section ``policies.processor``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from policies.budget import tokens_at
from policies.lexical import (
    CHANNELS,
    KEPT_CHANNELS,
    PARAGRAPH_CHANNELS,
    TextWords,
    kept_channels,
    lexical_channels,
    paragraph_channels,
    text_words,
)
from policies.semantic import SEMANTIC_CHANNELS, SentenceEncoder, similarity_columns
from policies.tokenization import encode_context, encode_question
from policies.units import Unit, segment, unit_lengths


@dataclass
class ProcessorConfig:
    """How observations are built.

    Attributes:
        max_len: Observation length: question + context tokens of one window.
        feature_layer: Frozen-model layer whose hidden states are the per-token features (0 = input
            embeddings; layer k costs about k/L of a prefill at deploy time).
        unit: Selection unit: token (characters are never split), word or sentence.
        lexical: Add the lexical question-match channels of policies/lexical.py to the observation.
        attention_layers: Add the frozen model's per-head attention from the question to each context token, in
            its first this many layers (0: off; costs about that many layers of a prefill at deploy time).
        rounds: Selection rounds: each round after the first sees what the one before kept, through the lexical
            channels of policies/lexical.py recomputed with the kept words (1: one selection; needs lexical).
        probe_rate: In rounds before the last, keep the best units up to this share of the context (or the
            budget, if smaller): what the next round is conditioned on.
        paragraphs: Add the paragraph channel of policies/lexical.py (BM25 of the token's paragraph, the text
            between blank lines: a retrieved passage, a section of a document); needs lexical.
        semantic: Add the semantic channel of policies/semantic.py (each sentence's similarity to the question
            from a small sentence encoder, which sees paraphrase where the lexical channels see shared words);
            needs lexical. The encoder is then part of the reducer.
        read_len: Question + context tokens the deployed reducer reads at once (0: ``max_len``). Training
            observations have a fixed ``max_len``; the network has no absolute positions, so with local token
            attention (``NetworkConfig.token_window``) and input-embedding features it reads a longer context
            whole at a cost linear in its length, where windows of ``max_len`` would each be ranked without
            the rest of the document (docs/results/2026-12-06.md, "Real text and the previous default `d5`").
    """

    max_len: int = 256
    feature_layer: int = 0
    unit: Unit = "word"
    lexical: bool = True
    attention_layers: int = 0
    rounds: int = 1
    probe_rate: float = 0.15
    paragraphs: bool = False
    semantic: bool = False
    read_len: int = 0

    def __post_init__(self) -> None:
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if self.feature_layer < 0 or self.attention_layers < 0:
            raise ValueError(
                f"feature_layer and attention_layers must be >= 0, got {self.feature_layer}, {self.attention_layers}"
            )
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.rounds > 1 and not self.lexical:
            raise ValueError("rounds > 1 condition on kept words through the lexical channels: they need lexical")
        if (self.paragraphs or self.semantic) and not self.lexical:
            raise ValueError("paragraphs and semantic are channels of the lexical block: they need lexical")
        if not 0 < self.probe_rate <= 1:
            raise ValueError(f"probe_rate must be in (0, 1], got {self.probe_rate}")
        if self.read_len and self.read_len < self.max_len:
            raise ValueError(f"read_len must be 0 or >= max_len={self.max_len}, got {self.read_len}")

    @property
    def window_len(self) -> int:
        """Question + context tokens the reducer reads at once: ``read_len``, or ``max_len`` when it is 0."""
        return self.read_len or self.max_len

    @property
    def lexical_size(self) -> int:
        """Lexical channels per token (0 when off): CHANNELS, SEMANTIC_CHANNELS, PARAGRAPH_CHANNELS, KEPT_CHANNELS."""
        if not self.lexical:
            return 0
        kept = len(KEPT_CHANNELS) if self.rounds > 1 else 0
        return len(CHANNELS) + len(SEMANTIC_CHANNELS) * self.semantic + len(PARAGRAPH_CHANNELS) * self.paragraphs + kept

    def probe_tokens(self, n_tokens: int, max_tokens: int) -> int:
        """Tokens a round before the last keeps: ``probe_rate`` of the context, at most ``max_tokens``, at least 1."""
        return max(1, min(max_tokens, tokens_at(self.probe_rate, n_tokens)))


@dataclass(frozen=True)
class Encoded:
    """A question and a context (or a window of one) prepared for the policy.

    Attributes:
        question: Question token ids.
        context: Context token ids.
        unit_index: ``[n_context]`` unit of each context token (0-based, non-decreasing).
        lexical: ``[n_context, lexical_size]`` lexical channels (float32).
        sentence_index: ``[n_context]`` sentence of each context token (0-based, non-decreasing).
        text: The context text (of the whole context, also in a window), for :func:`condition`.
        offsets: Character span of each context token in ``text``.
        question_text: The question text.
        context_words: The words of ``text`` (:func:`policies.lexical.text_words`), computed once by :func:`prepare`
            for the kept channels of every round (None without lexical channels, and in windows).
    """

    question: tuple[int, ...]
    context: tuple[int, ...]
    unit_index: np.ndarray
    lexical: np.ndarray
    sentence_index: np.ndarray
    text: str
    offsets: tuple[tuple[int, int], ...]
    question_text: str
    context_words: TextWords | None = field(default=None, repr=False, compare=False)

    @property
    def n_units(self) -> int:
        """Number of units."""
        return int(self.unit_index[-1]) + 1 if len(self.unit_index) else 0

    @property
    def n_sentences(self) -> int:
        """Number of sentences."""
        return int(self.sentence_index.max()) + 1 if len(self.sentence_index) else 0

    @property
    def unit_lengths(self) -> np.ndarray:
        """Tokens per unit."""
        return unit_lengths(self.unit_index)


def prepare(
    config: ProcessorConfig,
    context: str,
    context_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    question: str | None,
    question_ids: Sequence[int],
    encoder: SentenceEncoder | None = None,
) -> Encoded:
    """Units and lexical channels of an encoded context (:func:`policies.tokenization.encode_context`), round 1.

    Several contexts: :func:`prepare_batch` (one sentence-encoder call for all of them).

    Raises:
        ValueError: If ``config.semantic`` is on and no sentence ``encoder`` is given.
    """
    return prepare_batch(config, [(context, context_ids, offsets, question, question_ids)], encoder)[0]


def prepare_batch(
    config: ProcessorConfig,
    items: Sequence[tuple[str, Sequence[int], Sequence[tuple[int, int]], str | None, Sequence[int]]],
    encoder: SentenceEncoder | None = None,
) -> list[Encoded]:
    """:func:`prepare` for ``(context, context_ids, offsets, question, question_ids)`` items.

    Raises:
        ValueError: If ``config.semantic`` is on and no sentence ``encoder`` is given.
    """
    sentences = [segment(c, offsets, "sentence") for c, _, offsets, _, _ in items]
    sims: list[np.ndarray | None] = [None] * len(items)
    if config.lexical and config.semantic:
        if encoder is None:
            raise ValueError("processor.semantic needs a sentence encoder (policies.semantic.SentenceEncoder)")
        sims = list(
            similarity_columns(
                [(c, o, s, q or "") for (c, _, o, q, _), s in zip(items, sentences, strict=True)], encoder
            )
        )
    return [_prepare_one(config, *item, sent, sim) for item, sent, sim in zip(items, sentences, sims, strict=True)]


def _prepare_one(
    config: ProcessorConfig,
    context: str,
    context_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    question: str | None,
    question_ids: Sequence[int],
    sentences: np.ndarray,
    similarity: np.ndarray | None,
) -> Encoded:
    unit_index = sentences if config.unit == "sentence" else segment(context, offsets, config.unit)
    context_words = None
    if config.lexical:
        context_words = text_words(context, offsets, sentences)
        lexical = lexical_channels(context, offsets, sentences, question or "", context_words)
        if similarity is not None:
            lexical = np.concatenate([lexical, similarity], 1)
        if config.paragraphs:
            lexical = np.concatenate([lexical, paragraph_channels(context, offsets, question or "", context_words)], 1)
        if config.rounds > 1:
            lexical = np.concatenate([lexical, kept_channels(context, offsets, sentences, question or "", None)], 1)
    else:
        lexical = np.zeros((len(context_ids), 0), np.float32)
    return Encoded(
        tuple(question_ids),
        tuple(context_ids),
        unit_index,
        lexical,
        sentences,
        context,
        tuple((int(a), int(b)) for a, b in offsets),
        question or "",
        context_words,
    )


def condition(enc: Encoded, kept: np.ndarray) -> Encoded:
    """The next round's view of a prepared (whole) context: its kept channels recomputed from ``kept``.

    Args:
        enc: A context prepared by :func:`prepare` with ``rounds > 1`` (not a window).
        kept: Bool per context token: what the previous round kept.

    Raises:
        ValueError: If ``enc`` has no kept channels or ``kept`` has the wrong length.
    """
    base = enc.lexical.shape[1] - len(KEPT_CHANNELS)  # the channels before the kept ones
    optional = {a * len(SEMANTIC_CHANNELS) + b * len(PARAGRAPH_CHANNELS) for a in (0, 1) for b in (0, 1)}
    if base - len(CHANNELS) not in optional:
        raise ValueError("condition needs a context prepared with rounds > 1 (kept channels in its lexical)")
    if len(kept) != len(enc.context):
        raise ValueError(f"kept has {len(kept)} entries for {len(enc.context)} context tokens")
    extra = kept_channels(
        enc.text, enc.offsets, enc.sentence_index, enc.question_text, np.asarray(kept, bool), enc.context_words
    )
    return replace(enc, lexical=np.concatenate([enc.lexical[:, :base], extra], 1))


def process_batch(
    config: ProcessorConfig,
    tokenizer: Any,
    contexts: Sequence[str],
    questions: Sequence[str | None],
    encoder: SentenceEncoder | None = None,
) -> list[Encoded]:
    """Tokenise and prepare (context, question) pairs, as the deployed reducer does."""
    items = []
    for context, question in zip(contexts, questions, strict=True):
        ids, offsets, _ = encode_context(tokenizer, context)
        items.append((context, ids, offsets, question, encode_question(tokenizer, question)))
    return prepare_batch(config, items, encoder)


def process(
    config: ProcessorConfig, tokenizer: Any, context: str, question: str | None, encoder: SentenceEncoder | None = None
) -> Encoded:
    """Tokenise and prepare one (context, question) pair (:func:`process_batch`)."""
    return process_batch(config, tokenizer, [context], [question], encoder)[0]


def windows(enc: Encoded, max_len: int) -> list[Encoded]:
    """Cut a long context into consecutive windows that fit ``max_len`` with the question, at unit boundaries.

    A single unit longer than a window is cut into window-sized pieces, each its own unit.

    Raises:
        ValueError: If the question leaves no room for context.
    """
    room = max_len - len(enc.question)
    if room < 1:
        raise ValueError(f"the question has {len(enc.question)} tokens, leaving no room in max_len={max_len}")
    n = len(enc.context)
    if n <= room:
        return [enc]
    starts = np.flatnonzero(np.r_[True, np.diff(enc.unit_index) != 0])  # first token of each unit
    out, s = [], 0
    while s < n:
        fits = starts[(starts > s) & (starts <= s + room)]
        e = int(fits[-1]) if len(fits) and s + room < n else min(s + room, n)
        idx, sent = enc.unit_index[s:e], enc.sentence_index[s:e]
        out.append(
            replace(
                enc,
                context=enc.context[s:e],
                unit_index=idx - idx[0],
                lexical=enc.lexical[s:e],
                sentence_index=sent - sent[0] if len(sent) else sent,
                offsets=enc.offsets[s:e],
                context_words=None,
            )
        )
        s = e
    return out
