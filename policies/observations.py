"""Observations: the layout of the policy's observation arrays, and packing a batch of prepared contexts into them.

The layout (positions of question, context and padding; what each array holds) is in ``docs/internals.md``,
section ``policies.processor``; the env and the deployed reducer both pack with :func:`pack_observations`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from policies.processor import Encoded

FLOAT16_MAX = float(np.finfo(np.float16).max)
"""Features are float16 values, so this bounds them (and every other float in an observation)."""


def observation_layout(
    max_len: int, feature_dim: int, lexical_size: int, budget_size: int, vocab_size: int, attention_size: int = 0
) -> dict[str, tuple]:
    """``name -> (shape, dtype, low, high)`` of every observation array (one example, unbatched).

    ``lexical`` and ``attention`` are present only when the processor has such channels.
    """
    extra = {"lexical": ((max_len, lexical_size), np.float32, 0.0, 1.0)} if lexical_size else {}
    if attention_size:
        extra["attention"] = ((max_len, attention_size), np.float32, 0.0, FLOAT16_MAX)
    return {
        "input_ids": ((max_len,), np.int64, 0, vocab_size - 1),
        "features": ((max_len, feature_dim), np.float32, -FLOAT16_MAX, FLOAT16_MAX),
        **extra,
        "attention_mask": ((max_len,), np.int8, 0, 1),
        "reducible_mask": ((max_len,), np.int8, 0, 1),
        "unit_index": ((max_len,), np.int64, -1, max_len - 1),
        "sentence_index": ((max_len,), np.int64, -1, max_len - 1),
        "unit_lengths": ((max_len,), np.float32, 0.0, float(max_len)),
        "budget": ((budget_size,), np.float32, 0.0, FLOAT16_MAX),
        "limits": ((4,), np.float32, 0.0, float(max_len)),
    }


def pack_observations(
    items: Sequence[Encoded],
    features: Sequence[torch.Tensor],
    budgets: Sequence[np.ndarray],
    *,
    max_len: int,
    pad_id: int,
    limits: Sequence[np.ndarray] | None = None,
    attention_size: int = 0,
    forced_units: Sequence[np.ndarray | None] | None = None,
) -> dict[str, np.ndarray]:
    """Stack a batch of observations ``[B, ...]`` (the layout: ``docs/internals.md``, ``policies.processor``).

    Args:
        items: One prepared window per row.
        features: Features ``[q + c, D]`` of each row's question + context sequence.
        budgets: Budget vectors (:meth:`~policies.budget.BudgetConfig.observe`).
        max_len: Padded length.
        pad_id: Token id of padding.
        limits: Each row's token limits (:meth:`~policies.budget.TokenLimits.as_array`), which the training
            distribution cuts its ranking with; None: zeros (the deployed reducer applies the limits itself).
        attention_size: The last this many feature columns are attention channels, packed as ``attention``.
        forced_units: Per row, bool per unit of the force-kept units (or None): their ``unit_lengths`` are 0, so the
            training distribution never ranks them; ``limits`` should then be what is left of the budget
            (:func:`policies.budget.forced_limits`).

    Raises:
        ValueError: If a row does not fit in ``max_len`` or its features have the wrong length.
    """
    b = len(items)
    d = int(features[0].shape[-1]) - attention_size if b else 0
    c_lex = int(items[0].lexical.shape[-1]) if b else 0
    obs = {
        "input_ids": np.full((b, max_len), pad_id, np.int64),
        "features": np.zeros((b, max_len, d), np.float32),
        "lexical": np.zeros((b, max_len, c_lex), np.float32),
        "attention_mask": np.zeros((b, max_len), np.int8),
        "reducible_mask": np.zeros((b, max_len), np.int8),
        "unit_index": np.full((b, max_len), -1, np.int64),
        "sentence_index": np.full((b, max_len), -1, np.int64),
        "unit_lengths": np.zeros((b, max_len), np.float32),
        "budget": np.stack([np.asarray(x, np.float32) for x in budgets]) if b else np.zeros((0, 3), np.float32),
        "limits": np.stack([np.asarray(x, np.float32) for x in limits]) if limits else np.zeros((b, 4), np.float32),
    }
    if not c_lex:
        del obs["lexical"]
    if attention_size:
        obs["attention"] = np.zeros((b, max_len, attention_size), np.float32)
        for r, f in enumerate(features):
            obs["attention"][r, : f.shape[0]] = f[:, d:].float().numpy()
    for r, (it, f) in enumerate(zip(items, features, strict=True)):
        q, c = len(it.question), len(it.context)
        if q + c > max_len:
            raise ValueError(f"row {r}: {q} question + {c} context tokens > max_len={max_len}")
        if f.shape[0] != q + c:
            raise ValueError(f"row {r}: features cover {f.shape[0]} tokens, expected {q + c}")
        obs["input_ids"][r, : q + c] = [*it.question, *it.context]
        obs["features"][r, : q + c] = f[:, :d].float().numpy()
        if c_lex:
            obs["lexical"][r, q : q + c] = it.lexical
        obs["attention_mask"][r, : q + c] = 1
        obs["reducible_mask"][r, q : q + c] = 1
        obs["unit_index"][r, q : q + c] = it.unit_index
        obs["sentence_index"][r, q : q + c] = it.sentence_index
        lengths = it.unit_lengths
        if forced_units is not None and forced_units[r] is not None:
            lengths = np.where(forced_units[r], 0, lengths)
        obs["unit_lengths"][r, : len(lengths)] = lengths
    return obs
