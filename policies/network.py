"""The token-level keep network: a small bidirectional encoder over frozen-model features, cost-conditioned.

Pure torch (no stable-baselines3, no gymnasium), shared by the SB3 training policy
(:mod:`policies.sb3_policy`) and the deployable :class:`~policies.reducer.TokenReducer`.

Inputs, for a batch of B sequences padded to length L:
    features: ``[B, L, D]`` frozen-model hidden states of the question + context tokens.
    attention_mask: ``[B, L]`` 1 for real tokens (question and context), 0 for padding.
    reducible_mask: ``[B, L]`` 1 for context tokens (the ones a policy may drop).
    token_cost: ``[B, 1]`` the requested token cost (budget conditioning).

Outputs:
    keep_logits: ``[B, L]`` per-token keep logits (meaningful at reducible positions only).
    value: ``[B]`` state value, pooled over the reducible tokens.

Architecture: LayerNorm + linear projection of the features, a learned segment embedding (question vs context),
a cost embedding added to every token, a depthwise convolution for local (neighbouring-token) context, a
pre-norm transformer encoder that lets context tokens attend to the question and to each other, then a
per-token head. Nothing depends on absolute positions, so a trained network applies to any length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class NetworkConfig:
    """Shape of a :class:`TokenKeepNetwork`.

    Attributes:
        feature_dim: Width of the frozen-model features.
        d_model: Width of the encoder.
        n_layers: Transformer encoder layers.
        n_heads: Attention heads.
        conv_kernel: Kernel size of the local depthwise convolution (odd).
        dropout: Dropout in the encoder (0 for RL).
        cost_scale: Token costs are divided by this before embedding (the top of the training range).
        init_keep_prob: Initial keep probability of every token (sets the head's bias).
    """

    feature_dim: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    conv_kernel: int = 5
    dropout: float = 0.0
    cost_scale: float = 1.0
    init_keep_prob: float = 0.7

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


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
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        if config.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {config.conv_kernel}")
        self.config = config
        d = config.d_model
        self.in_norm = nn.LayerNorm(config.feature_dim)
        self.in_proj = nn.Linear(config.feature_dim, d)
        self.segment = nn.Embedding(2, d)
        self.cost_embed = nn.Sequential(nn.Linear(1, d), nn.SiLU(), nn.Linear(d, d))
        self.conv = nn.Conv1d(d, d, config.conv_kernel, padding=config.conv_kernel // 2, groups=d)
        self.conv_norm = nn.LayerNorm(d)
        if d % config.n_heads:
            raise ValueError(f"d_model {d} must be divisible by n_heads {config.n_heads}")
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
        token_cost: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contextual token states ``[B, L, d]`` and the cost embedding ``[B, d]``."""
        valid = attention_mask.bool()
        reducible = reducible_mask.bool()
        cost = self.cost_embed(token_cost.reshape(-1, 1).float() / self.config.cost_scale)
        x = self.in_proj(self.in_norm(features.float()))
        x = x + self.segment(reducible.long()) + cost[:, None, :]
        x = x * valid[..., None]
        x = x + self.conv(self.conv_norm(x).transpose(1, 2)).transpose(1, 2) * valid[..., None]
        for block in self.blocks:
            x = block(x, valid)
        return self.out_norm(x), cost

    def forward(
        self,
        features: torch.Tensor,
        attention_mask: torch.Tensor,
        reducible_mask: torch.Tensor,
        token_cost: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep logits ``[B, L]`` and values ``[B]``."""
        h, cost = self.encode(features, attention_mask, reducible_mask, token_cost)
        cost_tok = cost[:, None, :].expand_as(h)
        logits = self.keep_head(torch.cat([h, cost_tok], dim=-1)).squeeze(-1)
        red = reducible_mask.float()[..., None]
        pooled = (h * red).sum(1) / red.sum(1).clamp(min=1.0)
        value = self.value_head(torch.cat([pooled, cost], dim=-1)).squeeze(-1)
        return logits, value
