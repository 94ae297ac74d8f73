"""What the default model can do on each task family: full context, evidence only, and evidence plus filler.

A family the model cannot solve even from its evidence teaches a policy nothing, and one it solves from the
full context leaves nothing to gain; this checks both. For each family (held-out split, default sizes) it
prints the task metric (calibrated choice accuracy where the family has choices, else exact match) of:

* ``full``: the whole context;
* ``evidence``: only the recorded evidence tokens;
* ``evidence + random <unit>s`` at rate 0.3: the evidence units first, then random other units (sentences,
  words or tokens) until the budget is filled (:func:`policies.budget.fill_units`), the ceiling of a policy that
  finds the evidence but fills the rest blindly; a policy can beat it only by choosing harmless filler;
* ``bm25`` and ``random`` at rate 0.3, for reference.

Usage:
    python bench/task_solvability.py [--model smollm2-135m] [--n 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agents.baselines import make_baselines
from envs.lm.frozen_lm import FrozenLM
from envs.scoring import choice_priors, score_reduced
from envs.tasks.examples import encode_example
from envs.tasks.families import FAMILIES, make_examples
from policies.budget import Budget, fill_units, keep_top
from policies.units import segment, unit_lengths


def evidence_first(enc, index: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Keep mask: units that are mostly evidence first, then random others, filled to ``rate``."""
    lengths = unit_lengths(index)
    share = np.bincount(index, weights=np.asarray(enc.evidence, float), minlength=len(lengths)) / lengths
    priority = rng.random(len(lengths)) * 0.5 + 0.01 + (share >= 0.5)
    return fill_units(priority, lengths, Budget(rate=rate).max_tokens(len(enc.context)))[index]


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--n", type=int, default=40, help="examples per family")
    ap.add_argument("--rate", type=float, default=0.3, help="keep rate of the filled rows")
    ap.add_argument("--dtype", default="float32", help="model dtype")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = FrozenLM.load(args.model, dtype=args.dtype)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s")
    rows = ["full", "evidence", "evidence + random sentences", "evidence + random words",
            "evidence + random tokens", "bm25", "random"]  # fmt: skip
    print("| family | ctx tokens | metric | " + " | ".join(rows) + " |")
    print("|---|---|---|" + "---|" * len(rows))
    bm25 = make_baselines(["bm25"], lm)[0]
    for family in FAMILIES:
        encs = [encode_example(lm.tokenizer, ex) for ex in make_examples(family, "heldout", args.n, seed=7)]
        priors = choice_priors(lm, encs) if encs[0].choices is not None else None
        rng = np.random.default_rng(0)
        masks = {
            "full": [np.ones(len(e.context), bool) for e in encs],
            "evidence": [np.asarray(e.evidence) for e in encs],
        }
        for unit in ("sentence", "word", "token"):
            masks[f"evidence + random {unit}s"] = [
                evidence_first(e, segment(e.example.context, e.offsets, unit), rng, args.rate) for e in encs
            ]
        masks["bm25"] = bm25.keep(encs, Budget(rate=args.rate))
        masks["random"] = [keep_top(rng.random(len(e.context)), Budget(rate=args.rate).max_tokens(len(e.context)))
                           for e in encs]  # fmt: skip
        cells = []
        for name in rows:
            pairs = zip(encs, masks[name], strict=True)
            ctxs = [tuple(t for t, k in zip(e.context, m, strict=True) if k) for e, m in pairs]
            res = score_reduced(lm, encs, ctxs, priors)
            score = (res.choice_calibrated if priors is not None else res.exact_match).float().mean().item()
            cells.append(f"{score:.2f}")
        metric = "choice (calibrated)" if priors is not None else "EM"
        ctx = sum(len(e.context) for e in encs) / len(encs)
        print(f"| {family} | {ctx:.0f} | {metric} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
