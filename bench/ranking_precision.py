"""How well reducers rank the evidence itself: recall at the evidence's own size, without the frozen model.

On the synthetic families the frozen model answers every held-out question given the marked evidence alone
(``eval.py --baselines evidence``: 100% on state, multihop, multihop3, before, qa), and loses 14-53 points when
the rest of a rate is filled, so what decides a reducer's score there is whether its *top* units are the
evidence. This script budgets each example at exactly its evidence's token count, lets the reducer fill it by
its ranking (its STOP score never binds: the network's ``stop_margin`` is raised out of reach, so the
observation is the one it is deployed with), and prints per task:

* top-|E| recall: the share of the evidence tokens kept at that budget;
* all on top: the share of examples whose every evidence token is kept (the evidence is the top of the ranking).

A held-out split differs from the training split in two ways at once: new words (names, places, objects, verbs,
filler) and longer stories (more moves per person). ``--vocab train`` draws every synthetic example's words from
the training vocabulary whatever its split (``multihop3:heldout`` then has held-out lengths and training words),
``--vocab heldout`` the other way round; which of the two costs the ranking tells where a policy fails to
transfer. (It rewrites the word tables of :mod:`envs.tasks.data` in this process only.)

Usage:
    python bench/ranking_precision.py --reducer DIR [DIR ...] [--tasks state:heldout,...] [--n 100]
        [--seed 11] [--vocab split|train|heldout]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from agents.baselines import ReducerMethod
from agents.evaluate import load_eval_tasks
from agents.run_eval import reducer_name, unique_name
from envs.tasks import data
from policies.budget import Budget
from policies.reducer import TokenReducer
from policies.reducer_config import ReducerError

CHAINS = "state:heldout,multihop:heldout,multihop3:heldout,before:heldout"


def use_vocabulary(split: str) -> None:
    """Make every split of the synthetic families draw its words from ``split``'s tables (lengths unchanged)."""
    for table in vars(data).values():
        if isinstance(table, dict) and {"train", "heldout"} <= set(table):
            table["train"] = table["heldout"] = table[split]


def main() -> None:
    """Print one table row per task and reducer."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reducer", nargs="+", required=True, help="reducer directories")
    ap.add_argument("--tasks", default=CHAINS, help="comma-separated task specs (examples need evidence marks)")
    ap.add_argument("--n", type=int, default=100, help="examples per task spec without its own n=")
    ap.add_argument("--seed", type=int, default=0, help="task seed")
    ap.add_argument(
        "--vocab", choices=["split", "train", "heldout"], default="split",
        help="whose words the synthetic examples use: their own split's (default), or this split's",
    )  # fmt: skip
    args = ap.parse_args()
    if args.vocab != "split":
        use_vocabulary(args.vocab)
    names: set[str] = set()
    methods = []
    for d in args.reducer:
        try:
            reducer = TokenReducer.from_pretrained(d)
        except ReducerError as err:
            sys.exit(f"error: {err}")
        reducer.network.config = replace(reducer.network.config, stop_margin=1e3)  # STOP never binds
        methods.append(ReducerMethod(reducer, unique_name(reducer_name(Path(d)), names)))
    tasks = load_eval_tasks(args.tasks, methods[0].reducer.tokenizer, args.n, seed=args.seed)
    if args.vocab != "split":
        print(f"words from the {args.vocab} vocabulary, lengths from each spec's split")
    print("| task | reducer | top-\\|E\\| recall | all evidence on top |")
    print("|---|---|---|---|")
    for task, items in tasks.items():
        encs = [e for e in items if any(e.evidence)]
        for m in methods:
            recall, top = [], []
            for e in encs:  # one example at a time: each has its own target
                evidence = np.asarray(e.evidence, dtype=bool)
                (keep,) = m.keep([e], Budget(target_tokens=int(evidence.sum())))
                hit = int((keep & evidence).sum())
                recall.append(hit / evidence.sum())
                top.append(hit == evidence.sum())
            print(f"| {task} (n={len(encs)}) | {m.name} | {np.mean(recall):.3f} | {np.mean(top):.2f} |", flush=True)


if __name__ == "__main__":
    main()
