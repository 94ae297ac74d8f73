"""The keep network: a token encoder, pooled into selection units, then a unit encoder that scores each unit.

Pure torch (no stable-baselines3, no gymnasium), shared by the SB3 training policy
(:mod:`policies.sb3_policy`) and the deployable :class:`~policies.reducer.TokenReducer`.

Details: ``docs/internals.md``, section ``policies.network``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from policies.lexical import CHANNELS
from policies.ranking import NEG

PRIOR_CHANNELS = {"bm25": CHANNELS.index("sent_bm25"), "semantic": len(CHANNELS)}
"""The lexical column each prior reads: ``sent_bm25``, or ``sent_sim`` (right after CHANNELS when the processor's
``semantic`` channel is on; see ``NetworkConfig.prior``)."""


@dataclass
class NetworkConfig:
    """Shape of a :class:`TokenKeepNetwork` (its input widths come from the processor and the budget).

    Attributes:
        d_model: Width of the policy encoder.
        n_layers: Bidirectional attention blocks over tokens.
        n_unit_layers: Attention blocks over units (with relative-distance bias).
        n_heads: Attention heads per block.
        conv_kernel: Kernel size of the local depthwise convolution over tokens (odd).
        dropout: Dropout in the attention blocks (0 for RL).
        distance_buckets: Log-spaced distance buckets per direction in the unit blocks.
        sentence_layers: Attention blocks over sentences, whose states and scores are added to their units' (0:
            no sentence level).
        token_window: Token blocks attend inside consecutive windows of this many tokens, plus the question's
            tokens, so their cost grows linearly with the context (0: every token attends to every token; the
            same function on windows of at most this many tokens). Units and sentences still see the whole
            context.
        prior_scale: Starting weight of the prior in every unit's score (the weight is learned): the network scores
            a residual on top of it, so that an untrained network ranks as the prior does (0: no prior; needs
            lexical channels).
        prior: What the prior is, per unit in [0, 1]: ``bm25``, its sentence's BM25 against the question (the
            ``sent_bm25`` channel); ``semantic``, its sentence's similarity to the question (the ``sent_sim``
            channel; needs ``processor.semantic``).
        stop_margin: The STOP score the network outputs is its STOP head's minus this margin. The warm start fits
            the head as a classifier (evidence above it, the rest below); where the ranking of new text is
            unsure, that keeps far less than a rate allows and loses evidence, so the deployed STOP sits lower:
            a rate used as a ceiling (or the adaptive mode) keeps less only where the policy is sure (0: STOP as
            fitted).
        stop_relative: The STOP head scores STOP against the example's best unit (its output is added to the
            highest unit score, held fixed for STOP's gradient) instead of on an absolute scale. Where a kind of
            text scores all its units lower (new words, a family the ranking is less sure of), an absolute STOP
            trained on every family moves for all of them; a relative one keeps the units close to the best, and
            so also cuts a chain's weaker links (not the default; docs/eval_stop_2026-12-07.md).
    """

    d_model: int = 128
    n_layers: int = 2
    n_unit_layers: int = 2
    n_heads: int = 4
    conv_kernel: int = 5
    dropout: float = 0.0
    distance_buckets: int = 6
    sentence_layers: int = 0
    token_window: int = 0
    prior_scale: float = 0.0
    prior: Literal["bm25", "semantic"] = "bm25"
    stop_margin: float = 0.0
    stop_relative: bool = False

    def __post_init__(self) -> None:
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if self.n_layers < 0 or self.n_unit_layers < 0 or self.sentence_layers < 0 or self.distance_buckets < 1:
            raise ValueError("n_layers, n_unit_layers and sentence_layers must be >= 0, distance_buckets >= 1")
        if self.token_window < 0:
            raise ValueError(f"token_window must be >= 0, got {self.token_window}")
        if self.prior_scale < 0:
            raise ValueError(f"prior_scale must be >= 0, got {self.prior_scale}")
        if self.prior not in PRIOR_CHANNELS:
            raise ValueError(f"prior must be one of {sorted(PRIOR_CHANNELS)}, got {self.prior!r}")


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention + MLP block; padding keys are masked out.

    Written with ``scaled_dot_product_attention`` rather than ``nn.TransformerEncoderLayer`` so that it traces
    to ONNX with dynamic batch and length, and so that it takes an additive attention bias.
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

    def forward(self, x: torch.Tensor, valid: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B, N, d]``; ``valid``: ``[B, N]`` bool; ``bias``: optional ``[B or 1, H, N, N]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # Every query may attend to every real key; padding keys get -inf. A row with no real key at all would
        # be NaN, so every query also sees itself (padding outputs are masked downstream).
        pos = torch.arange(n, device=x.device)
        allowed = valid[:, None, None, :] | (pos[:, None] == pos[None, :])[None, None]
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, -torch.inf)
        if bias is not None:
            mask = mask + bias
        att = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))

    def forward_local(self, x: torch.Tensor, valid: torch.Tensor, question: torch.Tensor, chunk: int) -> torch.Tensor:
        """The block with attention inside consecutive chunks of ``chunk`` tokens, plus the question's tokens.

        ``question``: ``[B, N]`` bool, the leading question tokens of each row (they lead every row). Every query
        sees the question's tokens and the real non-question tokens of its own chunk, so the cost grows linearly
        with N; on a row of at most ``chunk`` tokens this is exactly :meth:`forward` (the same keys).
        """
        b, n, d = x.shape
        h, dh = self.n_heads, d // self.n_heads
        n_q = max(int(question.sum(1).max().item()), 1)
        pad = (-n) % chunk
        c = (n + pad) // chunk
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, h, dh)
        head = qkv[:, :n_q]  # the question slots: [B, n_q, 3, h, dh]
        q_ok = question[:, :n_q]
        if pad:
            qkv = nn.functional.pad(qkv, (0, 0, 0, 0, 0, 0, 0, pad))
            valid = nn.functional.pad(valid, (0, pad))
            question = nn.functional.pad(question, (0, pad))
        qkv = qkv.view(b, c, chunk, 3, h, dh)
        k = torch.cat([head[:, None, :, 1].expand(b, c, n_q, h, dh), qkv[:, :, :, 1]], 2)
        v = torch.cat([head[:, None, :, 2].expand(b, c, n_q, h, dh), qkv[:, :, :, 2]], 2)
        # keys: the question slots, then the chunk's real non-question tokens; a padding query also sees itself
        # (a row with no key at all would be NaN; its output is masked downstream)
        chunk_valid = valid.view(b, c, chunk)
        local = (chunk_valid & ~question.view(b, c, chunk))[:, :, None, :]
        eye = torch.eye(chunk, dtype=torch.bool, device=x.device)[None, None]
        local = local | (eye & ~chunk_valid[..., None])
        allowed = torch.cat([q_ok[:, None, None, :].expand(b, c, chunk, n_q), local.expand(b, c, chunk, chunk)], -1)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, -torch.inf)
        att = nn.functional.scaled_dot_product_attention(
            qkv[:, :, :, 0].reshape(b * c, chunk, h, dh).transpose(1, 2),
            k.reshape(b * c, n_q + chunk, h, dh).transpose(1, 2),
            v.reshape(b * c, n_q + chunk, h, dh).transpose(1, 2),
            attn_mask=mask.view(b * c, 1, chunk, n_q + chunk),
            dropout_p=self.dropout if self.training else 0.0,
        )
        att = att.transpose(1, 2).reshape(b, c * chunk, d)[:, :n]
        x = x + self.proj(att)
        return x + self.mlp(self.norm2(x))


def window_bias(valid: torch.Tensor, question: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, 1, N, N]`` additive mask of :meth:`EncoderBlock.forward_local`'s attention, over all N tokens.

    A query may see the question's tokens and the real non-question tokens of its own window of ``window``
    tokens; a padding query also sees itself.
    """
    pos = torch.arange(valid.shape[1], device=valid.device)
    same = (pos[:, None] // window) == (pos[None, :] // window)
    allowed = question[:, None, :] | (same[None] & (valid & ~question)[:, None, :])
    allowed = allowed | ((pos[:, None] == pos[None, :])[None] & ~valid[:, :, None])
    return torch.zeros(allowed.shape, dtype=torch.float32, device=valid.device).masked_fill(~allowed, -torch.inf)[
        :, None
    ]


def distance_bucket(n: int, buckets: int, device: torch.device) -> torch.Tensor:
    """``[n, n]`` bucket index of the signed distance j - i: 0 for i = j, then log2-spaced per direction."""
    pos = torch.arange(n, device=device)
    dist = pos[None, :] - pos[:, None]
    mag = torch.floor(torch.log2(dist.abs().clamp(min=1).float())).long() + 1
    mag = torch.where(dist == 0, torch.zeros_like(mag), mag.clamp(max=buckets))
    return buckets + torch.sign(dist) * mag


class TokenKeepNetwork(nn.Module):
    """Unit scores, a STOP score and a value from one observation batch (``docs/internals.md``, ``policies.network``).

    Args:
        config: The network's shape.
        feature_dim: Width of the frozen-model hidden-state features.
        lexical_size: Number of lexical channels (0: none).
        budget_size: Length of the budget vector.
        attention_size: Number of attention channels (0: none).
    """

    def __init__(
        self, config: NetworkConfig, feature_dim: int, lexical_size: int, budget_size: int, attention_size: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.lexical_size = lexical_size
        self.budget_size = budget_size
        self.attention_size = attention_size
        self.trim_units = True  # score only as many units as the batch has (off for ONNX tracing)
        d = config.d_model
        self.in_norm = nn.LayerNorm(feature_dim)
        self.in_proj = nn.Linear(feature_dim, d)
        self.lex_proj = nn.Linear(lexical_size, d) if lexical_size else None
        self.att_proj = (
            nn.Sequential(nn.LayerNorm(attention_size), nn.Linear(attention_size, d)) if attention_size else None
        )
        self.segment = nn.Embedding(2, d)
        self.budget_embed = nn.Sequential(nn.Linear(budget_size, d), nn.SiLU(), nn.Linear(d, d))
        self.conv = nn.Conv1d(d, d, config.conv_kernel, padding=config.conv_kernel // 2, groups=d)
        self.conv_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(EncoderBlock(d, config.n_heads, config.dropout) for _ in range(config.n_layers))
        self.unit_in = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d))
        self.unit_blocks = nn.ModuleList(
            EncoderBlock(d, config.n_heads, config.dropout) for _ in range(config.n_unit_layers)
        )
        self.distance_bias = nn.Parameter(torch.zeros(config.n_heads, 2 * config.distance_buckets + 1))
        self.out_norm = nn.LayerNorm(d)
        if config.sentence_layers:
            width = 2 * d + 2 * lexical_size
            self.sent_in = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d))
            self.sent_blocks = nn.ModuleList(
                EncoderBlock(d, config.n_heads, config.dropout) for _ in range(config.sentence_layers)
            )
            self.sent_distance_bias = nn.Parameter(torch.zeros(config.n_heads, 2 * config.distance_buckets + 1))
            self.sent_norm = nn.LayerNorm(d)
            self.sent_to_unit = nn.Linear(d, d)
            self.sent_score_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 1))
            nn.init.normal_(self.sent_score_head[-1].weight, std=0.01)
            nn.init.zeros_(self.sent_score_head[-1].bias)
        self.score_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 1))
        self.stop_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 1))
        self.value_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 1))
        # Start near a uniform ranking (or the prior's, with a prior): small score weights.
        nn.init.normal_(self.score_head[-1].weight, std=0.01)
        nn.init.zeros_(self.score_head[-1].bias)
        if config.prior_scale > 0:
            if lexical_size <= PRIOR_CHANNELS[config.prior]:
                raise ValueError(
                    f"prior_scale > 0 reads the {config.prior} prior's lexical channel: the processor needs lexical"
                    + (" and semantic" if config.prior == "semantic" else "")
                )
            self.prior_log_scale = nn.Parameter(torch.tensor(float(config.prior_scale)).log())
            # The residual heads start at exactly 0 (their inputs still get gradients through the weights) and
            # STOP at -1, below every score: an untrained network ranks, ties included, and fills a rate's budget
            # exactly as the prior over sentences does.
            heads = [self.score_head[-1], self.stop_head[-1]]
            if config.sentence_layers:
                heads.append(self.sent_score_head[-1])
            for head in heads:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
            nn.init.constant_(self.stop_head[-1].bias, -1.0)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit scores ``[B, L]``, STOP scores ``[B]`` and values ``[B]``."""
        b, length = obs["unit_index"].shape
        # Rows are left-aligned: positions past the longest row are padding in every row, so skip them.
        width = max(int(obs["attention_mask"].sum(1).max().item()), 1) if self.trim_units else length
        valid = obs["attention_mask"][:, :width].bool()
        reducible = obs["reducible_mask"][:, :width].bool()
        unit_index = obs["unit_index"][:, :width].long()
        budget = self.budget_embed(obs["budget"].reshape(b, self.budget_size).float())
        # 1. tokens
        x = self.in_proj(self.in_norm(obs["features"][:, :width].float()))
        if self.lex_proj is not None:
            x = x + self.lex_proj(obs["lexical"][:, :width].float())
        if self.att_proj is not None:
            x = x + self.att_proj(obs["attention"][:, :width].float())
        x = (x + self.segment(reducible.long()) + budget[:, None, :]) * valid[..., None]
        x = x + self.conv(self.conv_norm(x).transpose(1, 2)).transpose(1, 2) * valid[..., None]
        window = self.config.token_window
        if window and torch.jit.is_tracing():
            # An exported graph must not depend on the traced length: the same attention as a mask over all tokens
            bias = window_bias(valid, valid & ~reducible, window)
            for block in self.blocks:
                x = block(x, torch.ones_like(valid), bias)
        else:
            for block in self.blocks:
                local = window and width > window
                x = block.forward_local(x, valid, valid & ~reducible, window) if local else block(x, valid)
        # 2. units: mean of their tokens, joined with the mean question state
        n_units = max(int(unit_index.max().item()) + 1, 1) if self.trim_units else width
        member = (unit_index[:, None, :] == torch.arange(n_units, device=x.device)[None, :, None]).float()
        counts = member.sum(-1)
        pooled = member @ x / counts.clamp(min=1.0)[..., None]
        question = (valid & ~reducible).float()
        q_mean = (x * question[..., None]).sum(1) / question.sum(1).clamp(min=1.0)[:, None]
        unit_valid = counts > 0
        u = self.unit_in(torch.cat([pooled, q_mean[:, None, :].expand_as(pooled)], -1)) + budget[:, None, :]
        u = u * unit_valid[..., None]
        # 3. units attend to each other, with a bias for their signed distance
        bucket = distance_bucket(n_units, self.config.distance_buckets, x.device)
        bias = self.distance_bias[:, bucket][None]
        for block in self.unit_blocks:
            u = block(u, unit_valid, bias)
        u = self.out_norm(u)
        sent_scores = None
        if self.config.sentence_layers:
            lex = obs["lexical"][:, :width].float() if self.lexical_size else x[..., :0]
            sentence_index = obs["sentence_index"][:, :width].long()
            u, sent_scores = self._sentences(sentence_index, unit_index, x, lex, q_mean, budget, u)
        # 5. heads
        per_unit = torch.cat([u, budget[:, None, :].expand_as(u)], -1)
        scores = self.score_head(per_unit).squeeze(-1)
        if sent_scores is not None:
            scores = scores + sent_scores
        if self.config.prior_scale > 0:
            prior = obs["lexical"][:, :width, PRIOR_CHANNELS[self.config.prior]].float() * (unit_index >= 0)
            unit_prior = prior.new_zeros(b, n_units).scatter_reduce(1, unit_index.clamp(min=0), prior, reduce="amax")
            scores = scores + self.prior_log_scale.exp() * unit_prior
        scores = torch.where(unit_valid, scores, torch.full_like(scores, NEG))
        if self.trim_units and n_units < length:
            scores = torch.cat([scores, scores.new_full((b, length - n_units), NEG)], 1)
        mean_u = (u * unit_valid[..., None]).sum(1) / unit_valid.sum(1).clamp(min=1)[:, None]
        pooled_all = torch.cat([mean_u, budget], -1)
        stop = self.stop_head(pooled_all).squeeze(-1)
        if self.config.stop_relative:
            # detached: STOP's loss (the warm start's calibration rows, PPO's cut) gets no path into the scores here
            stop = stop + scores.max(1).values.detach()
        stop = stop - self.config.stop_margin
        return scores, stop, self.value_head(pooled_all).squeeze(-1)

    def _sentences(
        self,
        sentence_index: torch.Tensor,
        unit_index: torch.Tensor,
        x: torch.Tensor,
        lex: torch.Tensor,
        q_mean: torch.Tensor,
        budget: torch.Tensor,
        u: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: unit states with their sentence's state added ``[B, U, d]``, and each unit's sentence score."""
        # as for units: an exported graph must not freeze the traced sentence count
        n_sent = max(int(sentence_index.max().item()) + 1, 1) if self.trim_units else sentence_index.shape[1]
        member = (sentence_index[:, None, :] == torch.arange(n_sent, device=x.device)[None, :, None]).float()
        counts = member.sum(-1)
        s_valid = counts > 0
        pooled = member @ x / counts.clamp(min=1.0)[..., None]
        lex_mean = member @ lex / counts.clamp(min=1.0)[..., None]
        # lexical channels are >= 0, so a masked max over a sentence's tokens is a max of products with membership
        lex_max = (member[..., None] * lex[:, None, :, :]).amax(2)
        q = q_mean[:, None, :].expand_as(pooled)
        sv = self.sent_in(torch.cat([pooled, q, lex_mean, lex_max], -1)) + budget[:, None, :]
        sv = sv * s_valid[..., None]
        bias = self.sent_distance_bias[:, distance_bucket(n_sent, self.config.distance_buckets, x.device)][None]
        for block in self.sent_blocks:
            sv = block(sv, s_valid, bias)
        sv = self.sent_norm(sv)
        s_score = self.sent_score_head(torch.cat([sv, budget[:, None, :].expand_as(sv)], -1)).squeeze(-1)
        # the sentence of each unit (units never cross sentences); padding units point at sentence 0, masked later
        b, n_units = u.shape[:2]
        unit_sent = torch.zeros(b, n_units, dtype=torch.long, device=x.device)
        real = unit_index >= 0
        unit_sent = unit_sent.scatter_reduce(
            1, unit_index.clamp(min=0), torch.where(real, sentence_index.clamp(min=0), 0), reduce="amax"
        )
        per_unit = torch.gather(sv, 1, unit_sent[..., None].expand(-1, -1, sv.shape[-1]))
        return u + self.sent_to_unit(per_unit), torch.gather(s_score, 1, unit_sent)
