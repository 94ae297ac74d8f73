"""The train/deploy contract: how a (context, question, budget) becomes the policy's observation.

Like a Hugging Face processor, this module is saved with the model (its :class:`ProcessorConfig` is part of
``reducer_config.json``) and is called unchanged by the training environment and the deployed
:class:`~policies.reducer.TokenReducer`, so the two cannot drift. It owns:

* encoding text: :func:`encode_text`, :func:`encode_question` (the question follows ``Question:``, so it is
  encoded with one leading space) and :func:`encode_context` (with evidence spans mapped onto tokens);
* long contexts: :func:`context_windows` splits a context into windows that fit ``max_len`` with the question;
* observations: :func:`observation_layout` (names, shapes, dtypes, bounds) and :func:`pack_observations`.

Observation layout (arrays padded to ``max_len``; features are float16-rounded, see :mod:`policies.features`)::

    position:   0 .. q-1          q .. q+c-1           q+c .. max_len-1
    tokens:     question tokens   context tokens       padding
    reducible:  0                 1                    0

The question comes first so that, for feature layers > 0, the causal frozen model's context features can
attend to it. Actions and keep logits are aligned with these positions; only reducible positions count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class ProcessorConfig:
    """How observations are built.

    Attributes:
        max_len: Observation length: question + context tokens of one window.
        feature_layer: Frozen-model layer whose hidden states are the per-token features (0 = input
            embeddings; layer k costs about k/L of a prefill at deploy time).
    """

    max_len: int = 256
    feature_layer: int = 0

    def __post_init__(self) -> None:
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if self.feature_layer < 0:
            raise ValueError(f"feature_layer must be >= 0, got {self.feature_layer}")


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id: its pad token, else EOS, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def encode_text(tokenizer: Any, text: str) -> tuple[int, ...]:
    """Token ids of ``text`` without special tokens (empty text gives no tokens)."""
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()


def encode_question(tokenizer: Any, question: str | None) -> tuple[int, ...]:
    """Token ids of a question as it appears in the prompt (after ``Question:``): stripped, one leading space."""
    if question is None or not question.strip():
        return ()
    return encode_text(tokenizer, " " + question.strip())


def encode_context(
    tokenizer: Any, context: str, evidence: Sequence[tuple[int, int]] = ()
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Context token ids and, per token, whether it overlaps one of the ``evidence`` character spans."""
    if not evidence:
        ids = encode_text(tokenizer, context)
        return ids, (False,) * len(ids)
    batch = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    flags = tuple(any(s < end and e > start for start, end in evidence) for s, e in batch["offset_mapping"])
    return tuple(batch["input_ids"]), flags


def context_windows(n_question: int, n_context: int, max_len: int) -> list[slice]:
    """Consecutive context slices that each fit in ``max_len`` together with the question.

    Raises:
        ValueError: If the question leaves no room for context.
    """
    room = max_len - n_question
    if room < 1:
        raise ValueError(f"the question has {n_question} tokens, leaving no room in max_len={max_len}")
    return [slice(s, min(s + room, n_context)) for s in range(0, n_context, room)]


FLOAT16_MAX = float(np.finfo(np.float16).max)
"""Features are float16 values, so this bounds them (and the budget vector, which is far smaller)."""


def observation_layout(max_len: int, feature_dim: int, budget_size: int, vocab_size: int) -> dict[str, tuple]:
    """``name -> (shape, dtype, low, high)`` of every observation array (one example, unbatched)."""
    return {
        "input_ids": ((max_len,), np.int64, 0, vocab_size - 1),
        "features": ((max_len, feature_dim), np.float32, -FLOAT16_MAX, FLOAT16_MAX),
        "attention_mask": ((max_len,), np.int8, 0, 1),
        "reducible_mask": ((max_len,), np.int8, 0, 1),
        "budget": ((budget_size,), np.float32, 0.0, FLOAT16_MAX),
    }


def pack_observations(
    questions: Sequence[Sequence[int]],
    contexts: Sequence[Sequence[int]],
    features: Sequence[torch.Tensor],
    budgets: Sequence[np.ndarray],
    *,
    max_len: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Stack a batch of observations ``[B, ...]`` (see the module docstring for the layout).

    Args:
        questions: Question token ids per row.
        contexts: Context token ids per row (one window).
        features: Features ``[q + c, D]`` of each row's question + context sequence.
        budgets: Budget vectors (:meth:`~policies.budget.BudgetConfig.observe`).
        max_len: Padded length.
        pad_id: Token id of padding.

    Raises:
        ValueError: If a row does not fit in ``max_len`` or its features have the wrong length.
    """
    b = len(questions)
    d = int(features[0].shape[-1]) if b else 0
    obs = {
        "input_ids": np.full((b, max_len), pad_id, np.int64),
        "features": np.zeros((b, max_len, d), np.float32),
        "attention_mask": np.zeros((b, max_len), np.int8),
        "reducible_mask": np.zeros((b, max_len), np.int8),
        "budget": np.stack([np.asarray(x, np.float32) for x in budgets]) if b else np.zeros((0, 1), np.float32),
    }
    for r, (q, c, f) in enumerate(zip(questions, contexts, features, strict=True)):
        n = len(q) + len(c)
        if n > max_len:
            raise ValueError(f"row {r}: {len(q)} question + {len(c)} context tokens > max_len={max_len}")
        if f.shape[0] != n:
            raise ValueError(f"row {r}: features cover {f.shape[0]} tokens, expected {n}")
        obs["input_ids"][r, :n] = [*q, *c]
        obs["features"][r, :n] = f.float().numpy()
        obs["attention_mask"][r, :n] = 1
        obs["reducible_mask"][r, len(q) : n] = 1
    return obs


def context_logits(logits: np.ndarray | torch.Tensor, n_question: int, n_context: int) -> np.ndarray:
    """The keep logits (or actions) of one observation row that belong to its context tokens."""
    row = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    return row[n_question : n_question + n_context]
