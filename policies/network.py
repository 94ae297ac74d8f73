"""The token-level keep network: a small bidirectional encoder over frozen-model features, budget-conditioned.

Pure torch (no stable-baselines3, no gymnasium), shared by the SB3 training policy
(:mod:`policies.sb3_policy`) and the deployable :class:`~policies.reducer.TokenReducer`.

Input: an observation dict packed by :func:`policies.processor.pack_observations`, as tensors, for a batch
of B sequences padded to length L:
    features: ``[B, L, D]`` frozen-model hidden states of the question + context tokens.
    attention_mask: ``[B, L]`` 1 for real tokens (question and context), 0 for padding.
    reducible_mask: ``[B, L]`` 1 for context tokens (the ones a policy may drop).
    budget: ``[B, K]`` the budget vector (:meth:`policies.budget.BudgetConfig.observe`).

Outputs:
    keep_logits: ``[B, L]`` per-token keep logits (meaningful at reducible positions only).
    value: ``[B]`` state value, pooled over the reducible tokens.

Architecture: LayerNorm + linear projection of the features, a learned segment embedding (question vs context),
a budget embedding added to every token, a depthwise convolution for local (neighbouring-token) context, a
pre-norm transformer encoder that lets context tokens attend to the question and to each other, then a
per-token head. Nothing depends on absolute positions, so a trained network applies to any length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class NetworkConfig:
    """Shape of a :class:`TokenKeepNetwork` (its input widths come from the processor and the budget).

    Attributes:
        d_model: Width of the policy encoder.
        n_layers: Bidirectional attention blocks.
        n_heads: Attention heads per block.
        conv_kernel: Kernel size of the local depthwise convolution (odd).
        dropout: Dropout in the encoder (0 for RL).
        init_keep_prob: Initial keep probability of every token (sets the keep head's bias).
    """

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    conv_kernel: int = 5
    dropout: float = 0.0
    init_keep_prob: float = 0.7

    def __post_init__(self) -> None:
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if not 0 < self.init_keep_prob < 1:
            raise ValueError(f"init_keep_prob must be in (0, 1), got {self.init_keep_prob}")


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention + MLP block; padding keys are masked out.

    Written with ``scaled_dot_product_attention`` rather than ``nn.TransformerEncoderLayer`` so that it traces
    to ONNX with dynamic batch and length.
    """

    def __init__(self, d: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, L, d]``; ``valid``: ``[B, L]`` bool. Returns ``[B, L, d]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # Every query may attend to every real token; padding keys get -inf. A row with no real token at all
        # would be NaN, so padding queries also see themselves (their outputs are masked downstream).
        pos = torch.arange(n, device=x.device)
        allowed = valid[:, None, None, :] | (pos[:, None] == pos[None, :])[None, None]
        att = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TokenKeepNetwork(nn.Module):
    """Per-token keep logits and a pooled value from frozen-model features (see the module docstring).

    Args:
        config: The network's shape.
        feature_dim: Width of the frozen-model features.
        budget_size: Length of the budget vector.
    """

    def __init__(self, config: NetworkConfig, feature_dim: int, budget_size: int) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.budget_size = budget_size
        d = config.d_model
        self.in_norm = nn.LayerNorm(feature_dim)
        self.in_proj = nn.Linear(feature_dim, d)
        self.segment = nn.Embedding(2, d)
        self.cost_embed = nn.Sequential(nn.Linear(budget_size, d), nn.SiLU(), nn.Linear(d, d))
        self.conv = nn.Conv1d(d, d, config.conv_kernel, padding=config.conv_kernel // 2, groups=d)
        self.conv_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(EncoderBlock(d, config.n_heads, config.dropout) for _ in range(config.n_layers))
        self.out_norm = nn.LayerNorm(d)
        self.keep_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 1))
        self.value_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 1))
        p = config.init_keep_prob
        nn.init.zeros_(self.keep_head[-1].weight)
        nn.init.constant_(self.keep_head[-1].bias, float(torch.logit(torch.tensor(p))))

    def encode(
        self,
        features: torch.Tensor,
        attention_mask: torch.Tensor,
        reducible_mask: torch.Tensor,
        budget: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contextual token states ``[B, L, d]`` and the budget embedding ``[B, d]``."""
        valid = attention_mask.bool()
        reducible = reducible_mask.bool()
        cost = self.cost_embed(budget.reshape(-1, self.budget_size).float())
        x = self.in_proj(self.in_norm(features.float()))
        x = x + self.segment(reducible.long()) + cost[:, None, :]
        x = x * valid[..., None]
        x = x + self.conv(self.conv_norm(x).transpose(1, 2)).transpose(1, 2) * valid[..., None]
        for block in self.blocks:
            x = block(x, valid)
        return self.out_norm(x), cost

    def forward(self, obs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep logits ``[B, L]`` and values ``[B]`` of a batch of observations (the processor's keys)."""
        reducible_mask = obs["reducible_mask"]
        h, cost = self.encode(obs["features"], obs["attention_mask"], reducible_mask, obs["budget"])
        cost_tok = cost[:, None, :].expand_as(h)
        logits = self.keep_head(torch.cat([h, cost_tok], dim=-1)).squeeze(-1)
        red = reducible_mask.float()[..., None]
        pooled = (h * red).sum(1) / red.sum(1).clamp(min=1.0)
        value = self.value_head(torch.cat([pooled, cost], dim=-1)).squeeze(-1)
        return logits, value
