"""Per-unit credit from the frozen model itself: leave-one-sentence-out over a candidate set.

The policy's reward is one number per episode; which kept units earned it is what a learner must find out by
trial. This module asks the frozen model directly, once per training example, before PPO:

1. **Candidates**: the best sentence of each question-match lexical channel (:data:`CANDIDATE_CHANNELS`: the
   question's words, the bridge words of iterated expansion and their BM25, the latest mention of a question
   word), then the rest by their best channel, while they fit in ``rate`` of the context
   (:func:`candidate_sentences`). At rate 0.3 this set holds a chain of facts that the
   question's words alone would not find (the expansion channels reach the second and third link).
2. **Leave one out**: the candidate set S and S minus each of its sentences are scored with the reward's task
   score (answer log-likelihood for ``loglik``), all prompts of a batch of examples in one batched frozen-model
   call (prefix-cached, length-bucketed: :meth:`envs.core.TokenKeepCore.score_contexts`). A sentence's credit
   is ``score(S) - score(S without it)``: how much the model's answer needs it, given the rest of what a
   reducer would keep. Positive: evidence the model uses; negative: a distractor that misleads it.
3. **Units**: each unit gets its sentence's credit (units never cross sentences); units outside S get 0 and are
   marked unassessed.

Cost: ``|S| + 1`` prompts per example, each about ``rate`` of the context plus the question and the chat
template (the template's prefix is cached): at rate 0.3 on the synthetic families, 5-9 prompts of 40-90
tokens, i.e. about 1-1.5 full-context forwards' worth of tokens per example (measured numbers in the README).

:mod:`agents.warm_start` uses the credit as the behaviour-cloning target where an example has no evidence
marks (units of sentences with credit above a threshold are pseudo-evidence) and, everywhere, to keep units of
harmful sentences out of the filler a rate's leftover budget is filled with.
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
    """Leave-one-sentence-out credit of pool examples ``indices`` (see the module docstring).

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
