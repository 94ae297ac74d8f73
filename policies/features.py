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
CPU_BATCH_TOKENS = 4096
ACCELERATOR_BATCH_TOKENS = 16384
"""Padded tokens per forward micro-batch of the frozen model: on a CPU a forward's activations must stay in its
caches (the 135M default model scores 1.1-1.4x more tokens per second in micro-batches of 4,096 tokens than of
16,384 on 2 cores, ``bench/batch_tokens.py``); an accelerator wants large ones."""


def default_batch_tokens(device: torch.device | str) -> int:
    """The micro-batch budget for a model on ``device``: :data:`CPU_BATCH_TOKENS` on a CPU, else the larger one."""
    return CPU_BATCH_TOKENS if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_TOKENS


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

    With ``attention_layers`` = a > 0, each context token also gets ``a * heads`` attention channels: how much
    the question attends to it, per head, in each of the first ``a`` layers. They come from the same truncated
    forward over ``question + context + question`` (the trailing copy of the question sees the whole context,
    the leading one lets context states see the question); a channel is the trailing question's mean attention
    to the token, rescaled so that uniform attention is 1, then ``log1p``. Hidden features of the first
    ``q + c`` positions are unchanged by the trailing copy (causal attention).

    Args:
        layer: The hidden-state feature layer.
        embedding: The input embedding table, when no block needs to run (layer 0, no attention channels).
        decoder: A decoder with ``max(layer, attention_layers)`` blocks and an identity final norm, otherwise.
        attention_layers: Layers whose per-head question-to-context attention becomes features (0: none).
    """

    def __init__(
        self,
        layer: int,
        embedding: nn.Embedding | None = None,
        decoder: nn.Module | None = None,
        attention_layers: int = 0,
    ) -> None:
        super().__init__()
        deep = max(layer, attention_layers) > 0
        if deep != (decoder is not None) or (not deep) != (embedding is not None):
            raise ValueError("give an embedding when no block runs (layer 0, no attention), else a decoder")
        self.layer = layer
        self.attention_layers = attention_layers
        self.embedding = embedding
        self.decoder = decoder
        self.requires_grad_(False)

    @classmethod
    def from_causal_lm(cls, model: nn.Module, layer: int, attention_layers: int = 0) -> FeatureModule:
        """Features of a loaded ``*ForCausalLM``, sharing its weights (used by the training environment)."""
        n_layers = int(model.config.num_hidden_layers)
        for name, value in (("feature layer", layer), ("attention layers", attention_layers)):
            if not 0 <= value <= n_layers:
                raise ValueError(f"{name} must be in [0, {n_layers}], got {value}")
        depth = max(layer, attention_layers)
        if depth == 0:
            return cls(0, embedding=model.get_input_embeddings())
        decoder = _truncated_decoder(model.get_decoder(), depth, share=True)
        return cls(layer, decoder=decoder, attention_layers=attention_layers)

    @classmethod
    def empty(cls, hf_config: dict[str, Any], layer: int, attention_layers: int = 0) -> FeatureModule:
        """An uninitialised module for a base model config (``config.to_dict()``), to load saved weights into.

        Without blocks to run, the embedding table is kept in float16: features are rounded to float16 anyway, so
        the saved table is half the size and gives identical features.
        """
        vocab, width = int(hf_config["vocab_size"]), int(hf_config["hidden_size"])
        depth = max(layer, attention_layers)
        if depth == 0:
            return cls(0, embedding=nn.Embedding(vocab, width, dtype=FEATURE_DTYPE))
        from transformers import AutoConfig, AutoModel

        cfg = {k: v for k, v in hf_config.items() if k not in ("transformers_version", "model_type")}
        config = AutoConfig.for_model(hf_config["model_type"], **cfg)
        decoder = _truncated_decoder(AutoModel.from_config(config), depth, share=False)
        return cls(layer, decoder=decoder, attention_layers=attention_layers)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden-state features (the base model's hidden size)."""
        if self.embedding is not None:
            return int(self.embedding.embedding_dim)
        return int(self.decoder.config.hidden_size)

    @property
    def attention_size(self) -> int:
        """Number of attention channels (layers x heads)."""
        if not self.attention_layers:
            return 0
        return self.attention_layers * int(self.decoder.config.num_attention_heads)

    @property
    def width(self) -> int:
        """Feature width: hidden size plus attention channels."""
        return self.hidden_size + self.attention_size

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` float16 hidden features of right-padded ``ids`` ``[B, L]`` (no attention channels)."""
        return self._run(ids, mask)[0]

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Hidden features of ``self.layer`` and the attention weights ``[B, H, L, L]`` of the first layers."""
        if self.embedding is not None:
            return self.embedding(ids).to(FEATURE_DTYPE), []
        decoder = self.decoder
        hidden: dict[int, torch.Tensor] = {}
        weights: list[torch.Tensor] = []
        hooks = []
        if self.layer:
            hooks.append(decoder.layers[self.layer - 1].register_forward_hook(
                lambda _m, _i, out: hidden.__setitem__(0, out[0] if isinstance(out, tuple) else out)
            ))  # fmt: skip
        for i in range(self.attention_layers):
            hooks.append(decoder.layers[i].self_attn.register_forward_hook(lambda _m, _i, out: weights.append(out[1])))
        # The mask is built from the decoder's config and attention runs by the layers' (the frozen model's, when
        # shared): both must say "eager", the only implementation that returns weights, and be restored after.
        configs = list({id(c): c for c in (decoder.config, *(m.self_attn.config for m in decoder.layers))}.values())
        saved = [c._attn_implementation for c in configs]
        try:
            if self.attention_layers:
                for c in configs:
                    c._attn_implementation = "eager"
            h = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        finally:
            for c, impl in zip(configs, saved, strict=True):
                c._attn_implementation = impl
            for hook in hooks:
                hook.remove()
        h = hidden.get(0, h) if self.layer else decoder.embed_tokens(ids)
        return h.to(FEATURE_DTYPE), weights

    @torch.inference_mode()
    def extract(
        self,
        seqs: Sequence[Sequence[int]],
        pad_id: int,
        max_batch_tokens: int = 16384,
        question_lengths: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Features ``[len_i, width]`` (float16, CPU) of each question + context sequence, micro-batched.

        Right padding never changes a real position's features (causal attention, or a lookup for layer 0).

        Args:
            seqs: Question + context token ids per row.
            pad_id: Padding id.
            max_batch_tokens: Padded-token budget of one micro-batch.
            question_lengths: Question tokens at the start of each row (needed for attention channels).
        """
        if self.attention_layers and question_lengths is None:
            raise ValueError("attention channels need the question length of every row")
        q_len = list(question_lengths) if question_lengths is not None else [0] * len(seqs)
        runs = [list(s) + list(s[:q]) if self.attention_layers else list(s) for s, q in zip(seqs, q_len, strict=True)]
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        for batch in micro_batches([len(s) for s in runs], max_batch_tokens):
            ids, mask = pad_right([runs[i] for i in batch], pad_id)
            h, weights = self._run(ids.to(self.device), mask.to(self.device))
            h = h.cpu()
            for r, i in enumerate(batch):
                n, q = len(seqs[i]), q_len[i]
                row = h[r, :n]
                if self.attention_layers:
                    row = torch.cat([row, self._attention_channels(weights, r, n, q).to(FEATURE_DTYPE)], -1)
                out[i] = row.clone()
        return out

    @staticmethod
    def _attention_channels(weights: list[torch.Tensor], r: int, n: int, q: int) -> torch.Tensor:
        """``[n, layers * heads]``: the trailing question's attention to each context token, per layer and head."""
        c = n - q
        chans = torch.zeros(n, len(weights) * int(weights[0].shape[1]))
        if c <= 0 or q == 0:
            return chans
        per = []
        for w in weights:  # [B, H, L, L]
            rows = w[r, :, n : n + q, q:n].float().mean(1)  # [H, c]: trailing question -> context
            rows = rows / rows.sum(-1, keepdim=True).clamp(min=1e-9) * c
            per.append(torch.log1p(rows).T.cpu())
        chans[q:n] = torch.cat(per, -1)
        return chans
