"""Behaviour cloning of evidence keeping: an optional warm start before PPO.

Where the training examples record evidence spans, the policy can first learn to rank the units that hold the
evidence above the others (a listwise cross-entropy, as ListNet) and, for the adaptive mode, to score evidence
units above its STOP score and the rest below it. With ``filler_weight`` > 0 the listwise target also ranks the
non-evidence units: the least informative first (words found in most sentences of the context, such as "the",
"to", "then", by inverse sentence frequency) and the least related to the question (lexical match). A rate
forces a reducer to keep more than the evidence, and near-miss facts or stray names in that leftover budget
mislead a small model, while frequent function words do not: measured on the held-out families at rate 0.3
with the evidence kept, filling the rest with the least informative words gives 0.98 on ``before`` and
``multihop3`` where filling with whole unrelated sentences gives 0.91 and 0.63.
PPO then optimises the task reward from this start: what to keep besides the evidence, and whether the
evidence is really what the frozen model needs, are left to the reward. Examples without evidence are skipped;
with none at all the warm start is skipped with a warning.

With ``credit_examples`` > 0, the evidence teacher (:mod:`agents.credit`: the frozen model's score of each
sentence alone and leave-one-out in a candidate set, and bridge paths from the question) runs first on that
many examples: its evidence is the target of examples without evidence marks (data as users have it), and the
sentences whose removal helps the model are kept out of the filler target everywhere.

With ``processor.rounds`` R > 1 every round is cloned: round 1 on the plain observation, and round k+1 on the
observation conditioned on the probe the network itself keeps in round k (its deterministic ranking, as the
reducer does), so later rounds learn from the kept sets they will really see.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.config import WarmStartConfig
from agents.credit import unit_credit
from envs.core import TokenKeepCore
from policies.budget import rank_priorities
from policies.features import micro_batches
from policies.lexical import CHANNELS, text_words, unit_words

MICRO_BATCH_TOKENS = 8192
"""Padded tokens per network forward in the warm start (rows are grouped by length up to this)."""


def evidence_units(core: TokenKeepCore, index: int) -> np.ndarray:
    """``[n_units]`` bool: the units of pool example ``index`` that hold its evidence.

    A sentence unit holds evidence when any of its tokens does (an extractive answer is often a few words of a
    sentence); a word or token unit when at least half of its tokens do (a word that only touches a span's
    edge is not evidence).
    """
    enc = core.inputs[index]
    ev = np.asarray(core.pool[index].evidence, dtype=np.float64)
    count = np.bincount(enc.unit_index, weights=ev, minlength=enc.n_units)
    if core.processor.unit == "sentence":
        return count > 0
    return count / enc.unit_lengths.clip(min=1) >= 0.5


def unit_information(core: TokenKeepCore, index: int) -> np.ndarray:
    """``[n_units]``: how informative each unit of pool example ``index`` is, in [0, 1].

    The inverse sentence frequency of the unit's most informative word, divided by the context's largest (0 for a
    unit without words).
    """
    enc = core.inputs[index]
    tx = enc.context_words or text_words(enc.text, enc.offsets, enc.sentence_index)
    return np.array(
        [
            max((tx.inv.get(w, 0.0) / tx.top_idf for w in ws), default=0.0)
            for ws in unit_words(tx.tokens, enc.unit_index)
        ]
    )


def unit_relevance(obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, L]`` per unit: the largest question-match lexical channel over its tokens (0 for padding units)."""
    lex = obs["lexical"].float()
    channels = [CHANNELS.index(c) for c in ("q_match", "hop_match", "sent_bm25", "sent_hop2", "sent_hop3")]
    per_token = lex[..., channels].amax(-1)  # [B, L]
    unit = obs["unit_index"].long()
    b, length = unit.shape
    out = torch.zeros(b, length, device=lex.device)
    return out.scatter_reduce(1, unit.clamp(min=0), per_token * (unit >= 0), reduce="amax", include_self=True)


def teacher_report(core: TokenKeepCore, credits: dict, marks: dict[int, np.ndarray]) -> str:
    """Per family: the teacher's unit precision and recall against the evidence marks, and its cost.

    Only examples with marks count towards precision and recall; precision counts examples where the teacher
    found something, recall examples with marks.
    """
    rows: dict[str, list[tuple[float, float, bool, int, float]]] = {}
    for i, c in credits.items():
        found, marked = c.evidence, marks[i]
        hit = int((found & marked).sum())
        rows.setdefault(core.pool[i].example.family, []).append(
            (
                hit / found.sum() if found.any() else np.nan,
                hit / marked.sum() if marked.any() else np.nan,
                bool(marked.any() and (found == marked).all()),
                c.prompts,
                c.model_tokens / max(c.full_tokens, 1),
            )
        )
    lines = [
        "| family | examples | precision | recall | equal to the marks | prompts | full prompts' worth |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, r in rows.items():
        p, rec, eq, prompts, cost = (np.array(col, dtype=float) for col in zip(*r, strict=True))
        lines.append(
            f"| {family} | {len(r)} | {np.nanmean(p):.2f} | {np.nanmean(rec):.2f} | {eq.mean():.0%} | "
            f"{prompts.mean():.1f} | {cost.mean():.2f} |"
        )
    return "\n".join(lines)


def draw_families(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """``size`` family indices drawn in proportion to ``weights``."""
    if np.all(weights == weights[0]):  # uniform: the random stream of runs from before family weights existed
        return rng.integers(len(weights), size=size)
    return rng.choice(len(weights), size=size, p=weights / weights.sum())


def behaviour_cloning(
    net: torch.nn.Module,
    core: TokenKeepCore,
    config: WarmStartConfig,
    seed: int = 0,
    logger: Any | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``net`` (a :class:`~policies.network.TokenKeepNetwork`) to rank evidence units first.

    Args:
        net: The policy network, trained in place.
        core: The training core (its pool, budgets and observations).
        config: Steps, batch size and learning rate.
        seed: Seed of the example and budget draws.
        logger: An SB3 logger to record ``warm_start/loss`` on, or None.
        progress: Show a progress bar over the steps.

    Returns:
        The loss of every step.
    """
    marks = {i: evidence_units(core, i) for i in range(len(core.pool))}
    labels = dict(marks) if config.use_marks else {i: np.zeros_like(m) for i, m in marks.items()}
    harmful: dict[int, np.ndarray] = {}
    if config.credit_examples:
        assessed = list(range(min(config.credit_examples, len(core.pool))))
        credits = unit_credit(core, assessed, config.credit_rate, config.credit_threshold, progress=progress)
        for i, c in credits.items():
            if not labels[i].any():  # no evidence marks (or not used): the teacher's evidence is the target
                labels[i] = c.evidence
            harmful[i] = (c.credit < -config.credit_threshold) & ~labels[i]
        n = len(credits)
        prompts = sum(c.prompts for c in credits.values())
        cost = sum(c.model_tokens for c in credits.values()) / max(sum(c.full_tokens for c in credits.values()), 1)
        print(
            f"evidence teacher: {n} examples, {prompts / n:.1f} prompts and {cost:.2f} full prompts' worth of "
            "frozen-model tokens per example"
        )
        if not config.use_marks:
            print(teacher_report(core, credits, marks))
    labelled = [i for i in range(len(core.pool)) if labels[i].any()]
    information = {i: unit_information(core, i) for i in labelled} if config.filler_weight > 0 else {}
    if not labelled:
        warnings.warn("warm start skipped: no training example records evidence spans or earned credit", stacklevel=2)
        return []
    # Draws are balanced over families (a family with more examples is not seen more often; family_weights tilt
    # that), and with stop_holdout a share of each family's examples only calibrates STOP: on examples the ranking
    # never fitted, the network's scores are what they will be on new text, so STOP learns where evidence really
    # scores.
    families: dict[str, list[int]] = {}
    for i in labelled:
        families.setdefault(core.pool[i].example.family, []).append(i)
    calibrate = {i for members in families.values() for i in members[: int(config.stop_holdout * len(members))]}
    groups = list(families.values())
    weights = config.weights()
    unknown = sorted(set(weights) - set(families))
    if unknown:
        raise ValueError(
            f"warm_start.family_weights names {unknown}, which the training pool does not hold "
            f"(its families: {', '.join(families)})"
        )
    p = np.array([weights.get(f, 1.0) for f in families])
    rng = np.random.default_rng(seed)
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    # linear decay to a tenth: late steps refine instead of jumping between families' batches
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * s / max(config.steps, 1))
    losses = []
    net.train()
    for step in tqdm(range(config.steps), desc="warm start", unit="step", disable=not progress):
        drawn = draw_families(rng, p, config.batch_size)
        batch = [groups[f][int(rng.integers(len(groups[f])))] for f in drawn]
        budgets = [core.budget.sample(rng) for _ in batch]
        opt.zero_grad()
        total = 0.0
        # Rows of similar length go through the network together: a short synthetic row is not padded to a long
        # real-text one (the gradient is the batch's, accumulated group by group).
        lengths = [len(core.pool[i].question) + len(core.pool[i].context) for i in batch]
        for group in micro_batches(lengths, MICRO_BATCH_TOKENS):
            idx, bud = [batch[g] for g in group], [budgets[g] for g in group]
            held = [i in calibrate for i in idx] if config.stop_holdout > 0 else None
            loss = _rounds_loss(net, core, idx, bud, labels, harmful, information, config, device, held)
            (loss * len(group) / len(batch)).backward()
            total += loss.item() * len(group) / len(batch)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay.step()
        losses.append(total)
        if logger is not None and (step + 1) % 10 == 0:
            logger.record("warm_start/loss", float(np.mean(losses[-10:])))
            logger.dump(step + 1)
    net.eval()
    return losses


def _rounds_loss(
    net: torch.nn.Module,
    core: TokenKeepCore,
    idx: list[int],
    budgets: list[Any],
    labels: dict[int, np.ndarray],
    harmful: dict[int, np.ndarray],
    information: dict[int, np.ndarray],
    config: WarmStartConfig,
    device: torch.device,
    calibrate: list[bool] | None = None,
) -> torch.Tensor:
    """The clone loss of pool examples ``idx`` under ``budgets``, averaged over every selection round.

    ``calibrate`` (per row, or None): rows that only train STOP, in the last round (see :func:`_clone_loss`).

    Round 1 sees the plain observation; round k+1 the example conditioned on the probe the network's own ranking
    keeps in round k (its deterministic ranking, as the reducer does).
    """
    loss = torch.zeros((), device=device)
    rounds = core.processor.rounds
    selection = core.start(idx, budgets)
    while True:
        final = selection.final
        raw = core.observe(idx, budgets, selection)
        obs = {k: torch.as_tensor(v, device=device) for k, v in raw.items()}
        scores, stop, _ = net(obs)
        stop = stop + net.config.stop_margin  # the loss fits the STOP head; the margin applies when deployed
        avoid = [harmful.get(i) for i in idx]
        info = [information.get(i) for i in idx]
        labs = [labels[i] for i in idx]
        step = _clone_loss(
            scores, stop, obs, labs, avoid, info, config.filler_weight, config.stop_recall, calibrate, final
        )
        loss = loss + step / rounds
        if final:
            break
        ranked = scores.detach().cpu().numpy()
        selection.advance([rank_priorities(ranked[row][: enc.n_units]) for row, enc in enumerate(selection.inputs)])
    return loss


def _clone_loss(
    scores: torch.Tensor,
    stop: torch.Tensor,
    obs: dict[str, torch.Tensor],
    labels: list[np.ndarray],
    avoid: list[np.ndarray | None],
    information: list[np.ndarray | None],
    filler: float,
    stop_recall: float = 1.0,
    calibrate: list[bool] | None = None,
    final: bool = True,
) -> torch.Tensor:
    """Listwise cross-entropy towards the evidence units (plus ``filler`` share of harmless ones) and STOP's BCE.

    The filler share goes to units that are neither informative (``information``, per row) nor related to the
    question; units in ``avoid`` (per row, or None) never get any. In STOP's binary cross-entropy (evidence units
    above STOP, the others below) an evidence unit weighs ``stop_recall`` times a non-evidence unit.

    Without ``calibrate`` every row trains both, in every round. With it (a bool per row), the rows marked True
    train only STOP's loss, against the scores detached (the ranking loss never sees them), and only in the
    ``final`` round, whose STOP is the one that selects; the other rows train only the ranking. STOP's gradient
    still reaches the unit states its head reads, so it moves the trunk the scores share
    (docs/eval_stop_2026-12-07.md).
    """
    target = torch.zeros_like(scores)
    allowed = torch.ones_like(scores)
    info = torch.zeros_like(scores)
    for r, (lab, bad, inf) in enumerate(zip(labels, avoid, information, strict=True)):
        target[r, : len(lab)] = torch.as_tensor(lab, dtype=target.dtype)
        if bad is not None:
            allowed[r, : len(bad)] = 1.0 - torch.as_tensor(bad, dtype=target.dtype)
        if inf is not None:
            info[r, : len(inf)] = torch.as_tensor(inf, dtype=target.dtype)
    valid = obs["unit_lengths"] > 0
    evidence = target.clone()
    listwise = target / target.sum(1, keepdim=True)
    if filler > 0 and "lexical" in obs:
        harmless = torch.exp(-4.0 * (unit_relevance(obs) + info)) * valid * (1 - evidence) * allowed
        listwise = (1 - filler) * listwise + filler * harmless / harmless.sum(1, keepdim=True).clamp(min=1e-9)
    ranked = torch.ones(len(scores), device=scores.device)
    held = torch.ones(len(scores), device=scores.device)
    if calibrate is not None:
        held = torch.as_tensor(calibrate, dtype=scores.dtype, device=scores.device)
        ranked = 1.0 - held
        held = held * float(final)
        scores_for_stop = scores.detach()
    else:
        scores_for_stop = scores
    row_loss = -(listwise * torch.log_softmax(scores, dim=1)).sum(1)
    rank_loss = (row_loss * ranked).sum() / ranked.sum().clamp(min=1.0)
    weight = valid * (1.0 + (stop_recall - 1.0) * evidence) * held[:, None]
    logits = scores_for_stop - stop[:, None]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, evidence, reduction="none")
    return rank_loss + (bce * weight).sum() / weight.sum().clamp(min=1e-9)
