"""The policy's action distributions: a Plackett-Luce ranking of units, cut by the budget (pure torch).

:class:`RankingDistribution` is the default (below); :class:`SwapDistribution` samples the deterministic
selection with one unit exchanged, and :class:`ModeDistribution` the deterministic selection itself
(``ppo.exploration``). All three share :meth:`RankingDistribution.mode`, what the reducer deploys.

Details: ``docs/internals.md``, section ``policies.ranking``.
"""

from __future__ import annotations

import numpy as np
import torch

from policies.budget import fill_units

NEG = -1e9
"""Score of padding units: never picked."""


def masked_log_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``[B, U]`` log-softmax of ``logits`` over each row's ``allowed`` entries (the others hold about ``NEG``)."""
    return torch.log_softmax(torch.where(allowed, logits, torch.full_like(logits, NEG)), dim=1)


def _priorities_of(order: torch.Tensor, prefix_len: torch.Tensor, n_units: int) -> torch.Tensor:
    """Priorities ``[B, U]`` from orderings ``[B, U]`` and prefix lengths ``[B]``."""
    b, u = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(u, device=order.device).expand(b, u))
    pos = (u - rank).float() / u
    neg = -(rank + 1).float() / u
    return torch.where(rank < prefix_len[:, None], pos, neg).clamp(-1.0, 1.0)


class RankingDistribution:
    """Plackett-Luce over units, cut by each row's budget.

    Args:
        scores: ``[B, U]`` unit scores (logits).
        stop: ``[B]`` STOP scores (used in adaptive rows).
        lengths: ``[B, U]`` tokens per unit; 0 marks padding.
        limits: ``[B, 4]`` per row ``[adaptive, min_tokens, max_tokens, ceiling]``
            (:class:`~policies.budget.TokenLimits`).
    """

    def __init__(self, scores: torch.Tensor, stop: torch.Tensor, lengths: torch.Tensor, limits: torch.Tensor):
        self.valid = lengths > 0
        self.scores = torch.where(self.valid, scores, torch.full_like(scores, NEG))
        self.stop = stop
        self.lengths = lengths
        self.adaptive = limits[:, 0] > 0.5
        self.min_tokens = limits[:, 1]
        self.max_tokens = limits[:, 2]
        self.ceiling = limits[:, 3] > 0.5 if limits.shape[1] > 3 else torch.zeros_like(self.adaptive)

    def _cut(self, keys: torch.Tensor, stop_key: torch.Tensor) -> torch.Tensor:
        """Priorities for orderings by decreasing ``keys`` (ties to the earlier unit)."""
        b, u = keys.shape
        idx = torch.arange(u, device=keys.device)
        # A stable sort: equal keys keep their position order, so ties go to the earlier unit.
        masked = torch.where(self.valid, keys, torch.full_like(keys, -torch.inf))
        order = torch.sort(masked, dim=1, descending=True, stable=True).indices
        sorted_keys = torch.gather(keys, 1, order)
        sorted_valid = torch.gather(self.valid, 1, order)
        prefix = torch.zeros(b, dtype=torch.long, device=keys.device)
        lengths = torch.gather(self.lengths, 1, order).cpu().numpy()
        for r in range(b):
            if bool(self.adaptive[r]):
                prefix[r] = int(((sorted_keys[r] > stop_key[r]) & sorted_valid[r]).sum())
            else:
                # fill_units walks the ordering; the prefix ends at the last unit it keeps
                prio = (u - idx).float().cpu().numpy() * sorted_valid[r].cpu().numpy()
                kept = fill_units(prio, lengths[r], int(self.max_tokens[r].item()))
                hits = np.flatnonzero(kept)
                prefix[r] = int(hits[-1]) + 1 if len(hits) else 0
        return _priorities_of(order, prefix, u)

    def sample(self) -> torch.Tensor:
        """Sampled priorities ``[B, U]`` (Gumbel-max sampling of the ordering, STOP included in adaptive rows)."""
        g = -torch.log(-torch.log(torch.rand_like(self.scores).clamp(1e-20, 1.0)))
        g_stop = -torch.log(-torch.log(torch.rand_like(self.stop).clamp(1e-20, 1.0)))
        return self._cut(self.scores + g, self.stop + g_stop)

    def mode(self) -> torch.Tensor:
        """Deterministic priorities: units sorted by score; adaptive rows keep the units scored above STOP."""
        return self._cut(self.scores, self.stop)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B]`` log-probability of each action's prefix (and of STOP after it, in adaptive rows)."""
        b, u = actions.shape
        prefix = (actions > 0) & self.valid
        m = prefix.sum(1)
        n_valid = self.valid.sum(1)
        # Prefix units first (in their order), then the rest in their sampled order, then padding: suffix sets are
        # what Plackett-Luce normalises over, and the order after STOP matters for units kept past it.
        rest = torch.where(self.valid, actions.clamp(-1.0, 0.0) - 2.0, torch.full_like(actions, -10.0))
        key = torch.where(prefix, actions, rest)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices
        s = torch.gather(self.scores, 1, order)
        # Adaptive rows keep k ranked units (adaptive_count): units after STOP up to k are picks too.
        sorted_lengths = torch.gather(self.lengths, 1, order)
        c = torch.cumsum(sorted_lengths, dim=1)
        sorted_valid = torch.gather(self.valid, 1, order)
        k_min = torch.minimum((c < self.min_tokens[:, None]).sum(1) + 1, n_valid)
        k_max = ((c <= self.max_tokens[:, None]) & sorted_valid).sum(1).clamp(min=1)
        k = torch.minimum(torch.maximum(m, k_min), k_max)
        # Ceiling rows: when no prefix unit fits, the picks go on past STOP up to the first unit that fits.
        pos = torch.arange(u, device=actions.device)[None, :]
        fits = sorted_valid & (sorted_lengths <= self.max_tokens[:, None]) & (sorted_lengths > 0)
        prefix_fits = (fits & (pos < m[:, None])).any(1)
        first_fit = torch.where(fits & (pos >= m[:, None]), pos, torch.full_like(pos, u)).amin(1)
        k_ceiling = torch.where(prefix_fits | (first_fit >= u), m, first_fit + 1)
        k = torch.where(self.ceiling, k_ceiling, k)
        # Padding scores are NEG (finite), so no -inf reaches a gradient; their mass is exp(NEG) = 0.
        lse_units = torch.logcumsumexp(s.flip(1), dim=1).flip(1)  # log-sum-exp over the units not yet picked
        stop = self.stop[:, None]
        lse = torch.where(self.adaptive[:, None], torch.logaddexp(lse_units, stop), lse_units)
        picked = pos < m[:, None]
        after_stop = self.adaptive[:, None] & (pos >= m[:, None]) & (pos < k[:, None])
        terms = torch.where(picked, s - lse, torch.zeros_like(s))
        terms = terms + torch.where(after_stop, s - lse_units, torch.zeros_like(s))
        logp = terms.sum(1)
        # STOP is picked right after the prefix; past the last unit the remaining mass is STOP's alone.
        lse_m = torch.gather(torch.cat([lse, stop], dim=1), 1, m[:, None]).squeeze(1)
        return logp + torch.where(self.adaptive, self.stop - lse_m, torch.zeros_like(logp))

    def entropy(self) -> torch.Tensor:
        """``[B]`` entropy of the first pick (over units, and STOP in adaptive rows), divided by log(choices).

        The entropy of a whole ranking has no closed form; the first pick's is a cheap, length-free proxy.
        """
        stop = torch.where(self.adaptive, self.stop, torch.full_like(self.stop, NEG))
        logp = torch.log_softmax(torch.cat([self.scores, stop[:, None]], 1), dim=1)
        ent = -(logp.exp() * logp).sum(1)  # padding: exp(NEG) = 0 exactly, so it adds nothing
        n = self.valid.sum(1) + self.adaptive.long()
        return ent / torch.log(n.clamp(min=2).float())


class SwapDistribution(RankingDistribution):
    """Exploration by one swap at the edge of the deterministic selection (issue 25).

    A sampled action is the deterministic one (:meth:`mode`, what the reducer deploys) with one kept unit
    exchanged for one dropped unit: the unit added is drawn from the dropped units by ``softmax(score)`` (the
    best-scored dropped units most often), the unit taken out from the kept units by ``softmax(-score)``. An
    episode then differs from the deployed selection in one whole fact, and its log-probability is those two
    picks, not a ranking of every unit, whose ~45 picks and their order inside the kept set are what buried
    the reward's gradient in noise (bench/gradient_snr.py). Where the mode keeps every unit (or none) only the
    possible half of the swap is drawn.

    The action's priorities mark the swap: the unit added has priority exactly 1 (it is ranked first, so it is
    kept if it fits), the unit taken out exactly -1; every other unit keeps the mode's order, encoded strictly
    inside (-1, 1). :meth:`log_prob` reads the swap, and the selection it was made from, off the action alone,
    so PPO's ratios compare the same two picks under new scores.
    """

    def _swap_action(self, base: torch.Tensor, add: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        b, u = base.shape
        rank = torch.empty_like(base, dtype=torch.long)
        order = torch.sort(base, dim=1, descending=True, stable=True).indices
        rank.scatter_(1, order, torch.arange(u, device=base.device).expand(b, u))
        # the mode's order squeezed inside (-1, 1); its sign (kept or not) is unchanged
        inner = torch.where(base > 0, (u - rank).float() / (u + 1), -(rank + 1).float() / (u + 1))
        rows = torch.arange(b, device=base.device)
        has_add, has_drop = add >= 0, drop >= 0
        inner[rows[has_add], add[has_add]] = 1.0
        inner[rows[has_drop], drop[has_drop]] = -1.0
        return inner

    def sample(self) -> torch.Tensor:
        """The mode's action with one dropped unit added first and one kept unit taken out."""
        base = self.mode()
        kept = (base > 0) & self.valid
        dropped = ~kept & self.valid

        def draw(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
            g = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-20, 1.0)))
            pick = torch.where(allowed, logits + g, torch.full_like(logits, -torch.inf)).argmax(1)
            return torch.where(allowed.any(1), pick, torch.full_like(pick, -1))

        return self._swap_action(base, draw(self.scores, dropped), draw(-self.scores, kept))

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B]`` log-probability of each action's swap, given the selection it was made from."""
        added = (actions >= 1.0) & self.valid
        dropped_out = (actions <= -1.0) & self.valid
        reference = ((actions > 0) & self.valid & ~added) | dropped_out  # the mode's kept units when sampled
        outside = self.valid & ~reference

        def pick(logits: torch.Tensor, allowed: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
            logp = masked_log_softmax(logits, allowed)
            return torch.where(chosen & allowed, logp, torch.zeros_like(logp)).sum(1)

        return pick(self.scores, outside, added) + pick(-self.scores, reference, dropped_out)

    def entropy(self) -> torch.Tensor:
        """``[B]`` entropy of the unit added (over the mode's dropped units), divided by log(choices)."""
        kept = (self.mode() > 0) & self.valid
        outside = self.valid & ~kept
        logp = masked_log_softmax(self.scores, outside)
        ent = -(logp.exp() * torch.where(outside, logp, torch.zeros_like(logp))).sum(1)
        return ent / torch.log(outside.sum(1).clamp(min=2).float())


def swap_probabilities(
    scores: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_add, p_out)`` ``[B, U]``: :class:`SwapDistribution`'s two picks at a selection ``kept`` ``[B, U]``.

    ``p_add`` is over the valid units outside ``kept`` (``softmax(score)``), ``p_out`` over the kept units
    (``softmax(-score)``); each is 0 elsewhere, and all 0 in a row where its set is empty.
    """
    out = []
    for logits, allowed in ((scores, valid & ~kept), (-scores, valid & kept)):
        out.append(masked_log_softmax(logits, allowed).exp() * allowed)
    return out[0], out[1]


class ModeDistribution(RankingDistribution):
    """Acts deterministically: every sample is :meth:`mode`, the reducer's own selection.

    For :class:`agents.credit_ppo.CreditPPO`, which learns from every unit's counterfactual credit at that selection
    instead of from the log-probability of a sampled action (``log_prob`` and ``entropy`` are 0).
    """

    def sample(self) -> torch.Tensor:
        """The mode."""
        return self.mode()

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B]`` zeros: the action is not a draw."""
        return torch.zeros(actions.shape[0], device=actions.device)

    def entropy(self) -> torch.Tensor:
        """``[B]`` zeros."""
        return torch.zeros(self.scores.shape[0], device=self.scores.device)


DISTRIBUTIONS = {"ranking": RankingDistribution, "swap": SwapDistribution, "none": ModeDistribution}
"""The action distributions by name (``ppo.exploration``)."""
