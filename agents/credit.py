"""Per-unit credit from the frozen model itself: leave-one-sentence-out over a candidate set.

The policy's reward is one number per episode; which kept units earned it is what a learner must find out by
trial. This module asks the frozen model directly, once per training example, before PPO:

Details: ``docs/internals.md``, section ``agents.credit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from envs.core import TokenKeepCore
from policies.budget import Budget, fill_units
from policies.lexical import CHANNELS
from policies.processor import Encoded

CANDIDATE_CHANNELS = ("q_match", "hop_match", "sent_bm25", "sent_hop2", "sent_hop3", "last_mention")


@dataclass(frozen=True)
class UnitCredit:
    """The frozen model's credit for the units of one example.

    Attributes:
        credit: ``[n_units]`` float: the unit's sentence's leave-one-out credit (0 outside the candidates).
        assessed: ``[n_units]`` bool: the unit's sentence was among the candidates.
        base_score: The task score of the whole candidate set.
        prompts: Prompts scored for this example (``|S| + 1``).
        tokens: Context tokens in those prompts.
    """

    credit: np.ndarray
    assessed: np.ndarray
    base_score: float
    prompts: int
    tokens: int


def candidate_sentences(enc: Encoded, rate: float) -> np.ndarray:
    """Bool per sentence of ``enc``: the candidates, filled to ``rate`` of the context.

    First the best sentence of each lexical channel of :data:`CANDIDATE_CHANNELS`, each channel ranked on its
    own; then the rest by their best channel. Ties go to the later sentence (a later mention overrides an
    earlier one). A maximum over the max-normalised channels alone let an expansion channel's 1.0 on an
    unrelated sentence, or an earlier tie, push out the deciding one (measured on 64-example training pools:
    the candidates held the whole evidence in 19% / 3% / 56% of state / multihop3 / multihop examples, with
    each channel's best first 84% / 23% / 59%; README, "Chained evidence").
    """
    n_sent = int(enc.sentence_index.max()) + 1 if len(enc.sentence_index) else 0
    lengths = np.bincount(enc.sentence_index, minlength=n_sent)
    budget = Budget(rate=rate).max_tokens(len(enc.context)) or 0
    per_channel = np.zeros((len(CANDIDATE_CHANNELS), n_sent))
    for row, c in zip(per_channel, CANDIDATE_CHANNELS, strict=True):
        if enc.lexical.shape[1]:
            np.maximum.at(row, enc.sentence_index, enc.lexical[:, CHANNELS.index(c)])
    later_first = -np.arange(n_sent)
    firsts = [int(np.lexsort((later_first, -row))[0]) for row in per_channel if row.max() > 0]
    rest = np.lexsort((later_first, -per_channel.max(0))).tolist() if n_sent else []
    order = list(dict.fromkeys([*firsts, *rest]))
    priority = np.zeros(n_sent)
    priority[order] = (n_sent - np.arange(len(order))) / max(n_sent, 1)  # the order, as fill_units reads it
    return fill_units(priority, lengths, budget)


def unit_credit(
    core: TokenKeepCore, indices: Sequence[int], rate: float = 0.3, batch: int = 16, progress: bool = False
) -> dict[int, UnitCredit]:
    """Leave-one-sentence-out credit of pool examples ``indices`` (``docs/internals.md``, ``agents.credit``).

    Args:
        core: The training core (its pool, prepared inputs, frozen model and reward score).
        indices: Pool examples to assess.
        rate: Size of the candidate set, as a share of the context's tokens.
        batch: Examples whose prompts are scored in one call.
        progress: Show a progress bar.

    Returns:
        Pool index -> its :class:`UnitCredit`.

    Raises:
        ValueError: If the processor has no lexical channels (the candidates are ranked by them).
    """
    if not core.processor.lexical:
        raise ValueError("the credit teacher ranks candidate sentences by the lexical channels: enable lexical")
    out: dict[int, UnitCredit] = {}
    bar = tqdm(total=len(indices), desc="credit teacher", unit="example", disable=not progress)
    for start in range(0, len(indices), batch):
        chunk = list(indices[start : start + batch])
        rows: list[int] = []
        contexts: list[tuple[int, ...]] = []
        plans = []
        for i in chunk:
            enc = core.inputs[i]
            cand = np.flatnonzero(candidate_sentences(enc, rate))
            keep = np.isin(enc.sentence_index, cand)
            variants = [keep] + [keep & (enc.sentence_index != s) for s in cand]
            plans.append((i, cand, len(contexts)))
            for mask in variants:
                rows.append(i)
                contexts.append(tuple(t for t, k in zip(enc.context, mask, strict=True) if k))
        scores = core.score_contexts(rows, contexts)
        for i, cand, first in plans:
            enc = core.inputs[i]
            base = float(scores[first])
            sent_credit = np.zeros(int(enc.sentence_index.max()) + 1)
            sent_credit[cand] = base - scores[first + 1 : first + 1 + len(cand)]
            unit_sent = np.zeros(enc.n_units, dtype=np.int64)
            unit_sent[enc.unit_index] = enc.sentence_index
            assessed = np.isin(unit_sent, cand)
            tokens = sum(len(c) for c in contexts[first : first + 1 + len(cand)])
            out[i] = UnitCredit(sent_credit[unit_sent] * assessed, assessed, base, len(cand) + 1, tokens)
        bar.update(len(chunk))
    bar.close()
    return out
