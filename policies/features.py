"""Per-token features from a frozen causal LM: its input embeddings (layer 0) or the output of its first k blocks.

One :class:`FeatureModule` class serves training and deployment. The environment builds it around the loaded
frozen model with :meth:`FeatureModule.from_causal_lm` (sharing its weights, nothing copied); the exported
reducer rebuilds it from the base model's config with :meth:`FeatureModule.empty` and loads the saved weights.
Both return features rounded to float16 (the environment caches them at that precision), so training and
deployment see bit-identical inputs.

Layer k is the raw output of block k, before the model's final norm: the same tensor as the full model's
``hidden_states[k]`` for k < L. Layer-k features cost about k/L of a prefill.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

FEATURE_DTYPE = torch.float16
"""Precision of features in caches and observations (cast to float32 when packed)."""


def micro_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices, sorted by decreasing length, into batches of at most ``max_tokens`` padded tokens.

    A single sequence longer than ``max_tokens`` forms its own batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and width * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, each ``[B, max_len]`` int64, right-padded with ``pad_id``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def _truncated_decoder(decoder: nn.Module, layer: int, *, share: bool) -> nn.Module:
    """A decoder with only the first ``layer`` blocks and no final norm.

    Args:
        decoder: A decoder with ``embed_tokens``, ``layers`` and ``norm`` (Llama, Mistral, Qwen, SmolLM, ...).
        layer: Number of blocks to keep (>= 1).
        share: Reuse ``decoder``'s modules (no copy), else build fresh, uninitialised ones.
    """
    if not all(hasattr(decoder, a) for a in ("embed_tokens", "layers", "norm")):
        raise ValueError(
            f"feature layers > 0 need a decoder with embed_tokens, layers and norm; {type(decoder).__name__} has not"
        )
    config = copy.deepcopy(decoder.config)
    config.num_hidden_layers = layer
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:layer])
    if share:
        with torch.device("meta"):
            out = type(decoder)(config)
        out.embed_tokens = decoder.embed_tokens
        out.layers = nn.ModuleList(list(decoder.layers[:layer]))
        if hasattr(decoder, "rotary_emb"):
            out.rotary_emb = decoder.rotary_emb
    else:
        out = type(decoder)(config)
    out.norm = nn.Identity()
    left = [n for n, t in [*out.named_parameters(), *out.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"cannot share the first {layer} blocks of {type(decoder).__name__}: {left[:3]} unset")
    return out


class FeatureModule(nn.Module):
    """Features of layer ``layer`` (0 = input embeddings) of a frozen causal LM, rounded to float16.

    Args:
        layer: The feature layer.
        embedding: For layer 0, the input embedding table.
        decoder: For layer k > 0, a decoder with k blocks and an identity final norm.
    """

    def __init__(self, layer: int, embedding: nn.Embedding | None = None, decoder: nn.Module | None = None) -> None:
        super().__init__()
        if (layer == 0) != (embedding is not None) or (layer > 0) != (decoder is not None):
            raise ValueError("give an embedding for layer 0, or a decoder for layer k > 0")
        self.layer = layer
        self.embedding = embedding
        self.decoder = decoder
        self.requires_grad_(False)

    @classmethod
    def from_causal_lm(cls, model: nn.Module, layer: int) -> FeatureModule:
        """Features of a loaded ``*ForCausalLM``, sharing its weights (used by the training environment)."""
        n_layers = int(model.config.num_hidden_layers)
        if not 0 <= layer <= n_layers:
            raise ValueError(f"feature layer must be in [0, {n_layers}], got {layer}")
        if layer == 0:
            return cls(0, embedding=model.get_input_embeddings())
        return cls(layer, decoder=_truncated_decoder(model.get_decoder(), layer, share=True))

    @classmethod
    def empty(cls, hf_config: dict[str, Any], layer: int) -> FeatureModule:
        """An uninitialised module for a base model config (``config.to_dict()``), to load saved weights into.

        Layer 0 keeps the embedding table in float16: features are rounded to float16 anyway, so the saved
        table is half the size and gives identical features.
        """
        vocab, width = int(hf_config["vocab_size"]), int(hf_config["hidden_size"])
        if layer == 0:
            return cls(0, embedding=nn.Embedding(vocab, width, dtype=FEATURE_DTYPE))
        from transformers import AutoConfig, AutoModel

        cfg = {k: v for k, v in hf_config.items() if k not in ("transformers_version", "model_type")}
        config = AutoConfig.for_model(hf_config["model_type"], **cfg)
        return cls(layer, decoder=_truncated_decoder(AutoModel.from_config(config), layer, share=False))

    @property
    def width(self) -> int:
        """Feature width (the base model's hidden size)."""
        if self.embedding is not None:
            return int(self.embedding.embedding_dim)
        return int(self.decoder.config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` float16 features of right-padded ``ids`` ``[B, L]`` with ``mask`` ``[B, L]``."""
        if self.embedding is not None:
            h = self.embedding(ids)
        else:
            h = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return h.to(FEATURE_DTYPE)

    @torch.inference_mode()
    def encode(self, seqs: Sequence[Sequence[int]], pad_id: int, max_batch_tokens: int = 16384) -> list[torch.Tensor]:
        """Features ``[len_i, D]`` (float16, CPU) of each token sequence; one forward per length-sorted micro-batch.

        Right padding never changes a real position's features (causal attention, or a lookup for layer 0).
        """
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        for batch in micro_batches([len(s) for s in seqs], max_batch_tokens):
            ids, mask = pad_right([seqs[i] for i in batch], pad_id)
            h = self(ids.to(self.device), mask.to(self.device)).cpu()
            for r, i in enumerate(batch):
                out[i] = h[r, : len(seqs[i])].clone()
        return out
