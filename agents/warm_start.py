"""Behaviour cloning of evidence keeping: an optional warm start before PPO.

Where the training examples record evidence spans, the policy can first learn to rank the units that hold the
evidence above the others (a listwise cross-entropy, as ListNet) and, for the adaptive mode, to score evidence
units above its STOP score and the rest below it. With ``filler_weight`` > 0 the listwise target also ranks the
non-evidence units, unrelated ones (low lexical match with the question) above related ones: near-miss
distractors hurt a small model more than unrelated text, so a rate's leftover budget should go to the latter.
PPO then optimises the task reward from this start: what to keep besides the evidence, and whether the
evidence is really what the frozen model needs, are left to the reward. Examples without evidence are skipped;
with none at all the warm start is skipped with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from agents.config import WarmStartConfig
from envs.core import TokenKeepCore
from policies.lexical import CHANNELS


def evidence_units(core: TokenKeepCore, index: int) -> np.ndarray:
    """``[n_units]`` bool: the units of pool example ``index`` that are at least half evidence tokens."""
    enc = core.inputs[index]
    ev = np.asarray(core.pool[index].evidence, dtype=np.float64)
    share = np.bincount(enc.unit_index, weights=ev, minlength=enc.n_units) / enc.unit_lengths.clip(min=1)
    return share >= 0.5


def unit_relevance(obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, L]`` per unit: the largest question-match lexical channel over its tokens (0 for padding units)."""
    lex = obs["lexical"].float()
    channels = [CHANNELS.index(c) for c in ("q_match", "hop_match", "sent_bm25", "sent_hop2", "sent_hop3")]
    per_token = lex[..., channels].amax(-1)  # [B, L]
    unit = obs["unit_index"].long()
    b, length = unit.shape
    out = torch.zeros(b, length, device=lex.device)
    return out.scatter_reduce(1, unit.clamp(min=0), per_token * (unit >= 0), reduce="amax", include_self=True)


def behaviour_cloning(
    net: torch.nn.Module, core: TokenKeepCore, config: WarmStartConfig, seed: int = 0, logger: Any | None = None
) -> list[float]:
    """Train ``net`` (a :class:`~policies.network.TokenKeepNetwork`) to rank evidence units first.

    Args:
        net: The policy network, trained in place.
        core: The training core (its pool, budgets and observations).
        config: Steps, batch size and learning rate.
        seed: Seed of the example and budget draws.
        logger: An SB3 logger to record ``warm_start/loss`` on, or None.

    Returns:
        The loss of every step.
    """
    labelled = [i for i in range(len(core.pool)) if evidence_units(core, i).any()]
    if not labelled:
        warnings.warn("warm start skipped: no training example records evidence spans", stacklevel=2)
        return []
    labels = {i: evidence_units(core, i) for i in labelled}
    rng = np.random.default_rng(seed)
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    losses = []
    net.train()
    for step in range(config.steps):
        idx = [labelled[j] for j in rng.integers(len(labelled), size=config.batch_size)]
        budgets = [core.budget.sample(rng) for _ in idx]
        obs = {k: torch.as_tensor(v, device=device) for k, v in core.observe(idx, budgets).items()}
        scores, stop, _ = net(obs)
        target = torch.zeros_like(scores)
        for r, i in enumerate(idx):
            target[r, : len(labels[i])] = torch.as_tensor(labels[i], dtype=target.dtype)
        valid = obs["unit_lengths"] > 0
        evidence = target.clone()
        listwise = target / target.sum(1, keepdim=True)
        if config.filler_weight > 0 and "lexical" in obs:
            unrelated = torch.exp(-4.0 * unit_relevance(obs)) * valid * (1 - evidence)
            filler = unrelated / unrelated.sum(1, keepdim=True).clamp(min=1e-9)
            listwise = (1 - config.filler_weight) * listwise + config.filler_weight * filler
        logp = torch.log_softmax(scores, dim=1)
        rank_loss = -(listwise * logp).sum(1).mean()
        margin = scores - stop[:, None]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(margin, evidence, reduction="none")
        stop_loss = (bce * valid).sum() / valid.sum()
        loss = rank_loss + stop_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if logger is not None and (step + 1) % 10 == 0:
            logger.record("warm_start/loss", float(np.mean(losses[-10:])))
            logger.dump(step + 1)
    net.eval()
    return losses
