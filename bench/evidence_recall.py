"""Evidence recall, kept ratio and readability of reducers against BM25, semantic and random (no frozen model).

What a reducer keeps can be checked without scoring a single answer: the share of the recorded evidence tokens
it keeps (evidence recall), how much it keeps (a rate is a ceiling for reducers trained with one), and the share
of its kept words that sit in runs of at least five consecutive words of the original (readability). It runs in
seconds where ``eval.py`` runs the frozen model for minutes, so it is the quick check while iterating; ``eval.py``
gives the same three columns next to the task scores.

Usage:
    python bench/evidence_recall.py --tasks passages:heldout,longdoc:heldout --n 200 [--reducer DIR ...]
        [--rates 0.2 0.3] [--untrained]

``--untrained`` adds the default preset's network shape, untrained, over the embedded default model: with its
semantic prior it must rank as the ``semantic`` baseline does (the floor of issue 24).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from agents.baselines import KeepMethod, ReducerMethod, make_baselines
from agents.eval_metrics import readability
from agents.evaluate import load_eval_tasks
from agents.run_eval import check_task_specs, reducer_name, unique_name
from envs.lm.model_cache import load_model
from policies.budget import Budget
from policies.reducer import TokenReducer
from policies.reducer_config import ReducerError


def main() -> None:
    """Print one table row per task, method and rate."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="passages:heldout,longdoc:heldout", help="comma-separated task specs")
    ap.add_argument("--n", type=int, default=200, help="examples per task spec without its own n=")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.3], help="keep rates (ceilings)")
    ap.add_argument("--reducer", nargs="*", default=[], help="reducer directories")
    ap.add_argument("--untrained", action="store_true", help="add the default preset's untrained reducer")
    ap.add_argument("--seed", type=int, default=0, help="task seed")
    args = ap.parse_args()
    bad = [r for r in args.rates if not 0 < r <= 1]
    if bad:
        sys.exit(f"error: rates must lie in (0, 1], got {bad}")
    try:
        check_task_specs(args.tasks)  # before the model loads
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    loaded = load_model("smollm2-135m")
    methods: list[KeepMethod] = make_baselines(["bm25", "semantic", "random"], lm=None, seed=args.seed)  # type: ignore[arg-type]
    names: set[str] = set()
    for d in args.reducer:
        try:
            reducer = TokenReducer.from_pretrained(d)
        except ReducerError as err:
            sys.exit(f"error: {err}")
        methods.append(ReducerMethod(reducer, unique_name(reducer_name(Path(d)), names)))
    if args.untrained:
        from agents.config import PRESETS

        cfg = PRESETS["default"]
        untrained = TokenReducer.from_base_model(
            loaded.model, loaded.tokenizer, spec="smollm2-135m", processor=cfg.processor, budget=cfg.budget,
            network=cfg.network,
        )  # fmt: skip
        methods.append(ReducerMethod(untrained, "untrained (default preset)"))
    tasks = load_eval_tasks(args.tasks, loaded.tokenizer, args.n, seed=args.seed)
    print("| task | method | rate | evidence recall | kept ratio | readability |")
    print("|---|---|---|---|---|---|")
    for task, items in tasks.items():
        encs = [e for e in items if any(e.evidence)]
        for rate in args.rates:
            for m in methods:
                masks = m.keep(encs, Budget(rate=rate))
                pairs = list(zip(encs, masks, strict=True))
                recall = [(k & np.asarray(e.evidence)).sum() / sum(e.evidence) for e, k in pairs]
                kept = [k.mean() for k in masks]
                read = [readability(e.example.context, e.offsets, k) for e, k in pairs]
                print(
                    f"| {task} (n={len(encs)}) | {m.name} | {rate} | {np.mean(recall):.3f} | {np.mean(kept):.3f} "
                    f"| {np.nanmean(read):.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
