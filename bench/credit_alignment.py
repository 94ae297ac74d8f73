"""Does the dense credit point at the evidence? Per family, at a checkpoint's own deterministic selection.

Dense credit (``--ppo.credit dense``) scores the units at the edge of the policy's selection with the frozen
model: a kept unit's credit is the task score with it minus without it, a dropped unit's the score with it added
minus without. A learner that follows the credit keeps evidence only if the evidence units earn positive credit
and the rest negative. For each family's training examples (marked evidence: the synthetic families and the
real-text ones) this plays ``--episodes`` episodes of the checkpoint's deterministic selection and prints, for
kept and dropped units, evidence and not, the number of scored units, their mean credit and the share with
credit > 0, and the selection's evidence recall; the headline ratio is the mean credit of evidence units over the
mean absolute credit of the rest (above 1: the evidence stands out).

Usage:
    python bench/credit_alignment.py --checkpoint RUN/checkpoints/ckpt_000000000.zip [--families before,state]
        [--reward choice] [--episodes 32]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np

from agents.config import load_config
from agents.credit_ppo import CreditPPO
from agents.export import resolve_checkpoint
from agents.ppo import make_core
from envs.vec_env import BatchedTokenKeepVecEnv


def family_rows(config, checkpoint: str, family: str, episodes: int, candidates: int, lm=None):
    """Per episode: ``(credit, kept, evidence)`` per unit of its example, at the checkpoint's selection."""
    core = make_core(replace(config, tasks=replace(config.tasks, train=f"{family}:train:n={episodes}")), lm)
    n_envs = min(16, episodes)
    venv = BatchedTokenKeepVecEnv(
        core, n_envs=n_envs, seed=0, group_size=1, credit="dense", credit_candidates=candidates
    )
    model = CreditPPO.load(checkpoint, env=venv, device="cpu")
    rows = []
    for _ in range(max(1, episodes // n_envs)):
        obs = venv.reset()
        for _ in range(config.processor.rounds):
            action, _ = model.predict(obs, deterministic=True)
            obs, _, _, infos = venv.step(action)
        for info in infos:
            i = info["example_index"]
            enc = core.inputs[i]
            evidence = np.zeros(enc.n_units, bool)
            np.logical_or.at(evidence, enc.unit_index, np.asarray(core.pool[i].evidence, bool))
            rows.append((info["unit_credit"][: enc.n_units], info["unit_kept"][: enc.n_units], evidence))
    return rows, core.lm


def main() -> None:
    """Print the table (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="an SB3 checkpoint of a run (its config.json is read)")
    ap.add_argument("--families", default="qa,multihop,state,multihop3,before", help="comma-separated families")
    ap.add_argument("--reward", default=None, help="task score of the credit (default: the run's)")
    ap.add_argument("--episodes", type=int, default=32, help="episodes (training examples) per family")
    ap.add_argument("--candidates", type=int, default=8, help="units scored on each side of the selection's edge")
    args = ap.parse_args()
    try:  # a run directory or a checkpoint inside one, as agents.export takes them
        checkpoint, config_path = resolve_checkpoint(args.checkpoint)
    except (FileNotFoundError, PermissionError) as err:
        sys.exit(f"error: {err}")
    config = load_config(config_path)
    if args.reward:
        config = replace(config, tasks=replace(config.tasks, reward=args.reward))
    print(f"checkpoint {checkpoint}, reward {config.tasks.reward}, {args.episodes} training examples per family")
    print("| family | units | kept evidence | kept other | dropped evidence | dropped other | recall | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    lm = None
    for family in args.families.split(","):
        rows, lm = family_rows(config, str(checkpoint), family, args.episodes, args.candidates, lm)
        cells, ev, other = [], [], []
        for kept_side in (True, False):
            for is_ev in (True, False):
                vals = np.concatenate([c[(k == kept_side) & (e == is_ev) & (c != 0)] for c, k, e in rows])
                (ev if is_ev else other).append(vals)
                cells.append(f"{len(vals)}: {vals.mean():+.2f}, {np.mean(vals > 0):.0%} > 0" if len(vals) else "-")
        recall = np.mean([(k & e).sum() / max(e.sum(), 1) for _, k, e in rows])
        # evidence credit counts with its sign toward keeping it; the rest by its size
        ev_all, other_all = np.concatenate(ev), np.concatenate(other)
        ratio = ev_all.mean() / max(np.abs(other_all).mean(), 1e-9) if len(ev_all) and len(other_all) else float("nan")
        scored = sum(len(v) for v in ev + other)
        print(f"| {family} | {scored} | {' | '.join(cells)} | {recall:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
