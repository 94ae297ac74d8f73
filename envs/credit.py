"""Counterfactual credit of selection units (issue 25): the frozen model's score with a unit minus without it.

A *flip* scores a selection of an example's units (the reference) and, for each of some units, the same selection
with that unit flipped: taken out if the reference keeps it, added if not. A flipped unit's credit is the score
with it minus the score without it. All of an env step's flips go through the frozen model in one batched call
(:meth:`envs.core.TokenKeepCore.score_contexts`); ``core.credit_stats`` counts what they cost.

Two uses:

* :func:`credit_gains` (``ppo.credit counterfactual``): in a group of episodes on one example, the units the
  episodes disagree on, flipped against the group's majority selection; an episode's gain is the sum of the
  credits of those units it keeps.
* :func:`unit_credits` (``ppo.credit dense``, :class:`agents.credit_ppo.CreditPPO`): at each episode's own
  selection, the units at its edge (the lowest-ranked kept ones, the best-ranked dropped ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from envs.core import TokenKeepCore


def kept_units(core: TokenKeepCore, index: int, mask: np.ndarray) -> np.ndarray:
    """Bool per unit of example ``index``: the units ``mask`` (bool per context token, whole units) keeps."""
    unit = core.inputs[index].unit_index
    return np.bincount(unit[mask], minlength=len(core.inputs[index].unit_lengths)) > 0


def flip_credits(
    core: TokenKeepCore, flips: Sequence[tuple[int, np.ndarray, np.ndarray]]
) -> list[tuple[float, np.ndarray]]:
    """Score each ``(example, reference units, units to flip)`` in one batched call.

    Returns:
        Per flip, the reference's score and the credit of each flipped unit (with it minus without it).
    """
    rows, contexts = [], []
    for i, reference, changed in flips:
        unit = core.inputs[i].unit_index
        context = np.asarray(core.pool[i].context)
        for u in (None, *changed):
            units = reference.copy()
            if u is not None:
                units[u] = not units[u]
            contexts.append(context[units[unit]].tolist())
            rows.append(i)
    scores = core.score_contexts(rows, contexts) if contexts else np.zeros(0)
    core.credit_stats["prompts"] += len(contexts)
    core.credit_stats["context_tokens"] += sum(len(c) for c in contexts)
    out, at = [], 0
    for _, reference, changed in flips:
        base, variants = scores[at], scores[at + 1 : at + 1 + len(changed)]
        at += 1 + len(changed)
        out.append((float(base), np.where(reference[changed], base - variants, variants - base)))
    return out


def credit_gains(
    core: TokenKeepCore, indices: Sequence[int], masks: Sequence[np.ndarray], group_size: int
) -> np.ndarray:
    """Each episode's summed counterfactual credit for the units its group does not agree on.

    Consecutive groups of ``group_size`` episodes play one example. In a group, the reference keeps the units
    most of its episodes keep; every unit some but not all episodes keep is flipped against it once, and an
    episode's gain is the sum of the credits of those units it keeps. Units every episode keeps (or none does)
    would add the same amount to every gain of the group, which the group baseline cancels, so they cost no
    forward. Against each episode's own prompt score this measures one unit's effect in one context the group
    shares, instead of a whole selection's score, where every other kept unit adds its own noise: a group whose
    episodes differ in d units costs 1 + d prompts (0 when they agree) instead of one per episode.

    Args:
        core: The env core (its pool and frozen model).
        indices: Pool example per episode, the same within each group.
        masks: What each episode keeps, bool per context token.
        group_size: Episodes per group.

    Returns:
        ``[B]`` gains (task-score units; 0 for a group whose episodes all keep the same units).
    """
    if len(indices) % group_size:
        raise ValueError(f"{len(indices)} episodes do not form groups of {group_size}")
    flips, plans = [], []
    for g0 in range(0, len(indices), group_size):
        group = list(range(g0, g0 + group_size))
        i = indices[g0]
        if any(indices[r] != i for r in group):
            raise ValueError(f"episodes {g0}..{g0 + group_size - 1} of a credit group play different examples")
        kept = np.stack([kept_units(core, i, masks[r]) for r in group])
        count = kept.sum(0)
        differ = np.flatnonzero((count > 0) & (count < group_size))
        if len(differ):
            flips.append((i, count * 2 > group_size, differ))
            plans.append((group, kept[:, differ]))
    core.credit_stats["groups"] += len(indices) // group_size
    gains = np.zeros(len(indices), np.float64)
    for (group, kept), (_, credit) in zip(plans, flip_credits(core, flips), strict=True):
        gains[group] = kept @ credit
    return gains


def unit_credits(
    core: TokenKeepCore,
    indices: Sequence[int],
    masks: Sequence[np.ndarray],
    priorities: Sequence[np.ndarray],
    candidates: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense counterfactual credit of the units at the edge of each episode's own selection.

    Flipped per episode: the ``candidates`` kept units it ranks lowest (leave-one-out) and the ``candidates``
    dropped units it ranks highest (add-one-in), where a change of score changes what is kept; the units further
    from the edge are presumed neutral (credit 0). Up to ``1 + 2 * candidates`` prompts per episode.

    Args:
        core: The env core (its pool and frozen model).
        indices: Pool example per episode.
        masks: What each episode keeps, bool per context token (whole units).
        priorities: Each episode's unit priorities (higher first).
        candidates: Units flipped on each side of the edge.

    Returns:
        ``(credit, kept, scores)``: credits ``[B, max_len]`` per unit (0 for padding and units not flipped), the
        kept units ``[B, max_len]`` (bool), and each episode's own task score ``[B]``.
    """
    credit = np.zeros((len(indices), core.max_len), np.float32)
    kept_all = np.zeros((len(indices), core.max_len), bool)
    flips = []
    for r, i in enumerate(indices):
        kept = kept_units(core, i, masks[r])
        kept_all[r, : len(kept)] = kept
        prio = np.asarray(priorities[r], np.float64)[: len(kept)]
        inside, outside = np.flatnonzero(kept), np.flatnonzero(~kept)
        inside = inside[np.lexsort((inside, prio[inside]))][:candidates]
        outside = outside[np.lexsort((outside, -prio[outside]))][:candidates]
        flips.append((i, kept, np.concatenate([inside, outside]).astype(np.int64)))
    core.credit_stats["episodes"] += len(indices)
    scores = np.zeros(len(indices))
    for r, ((_, _, changed), (base, c)) in enumerate(zip(flips, flip_credits(core, flips), strict=True)):
        scores[r] = base
        credit[r, changed] = c
    return credit, kept_all, scores
