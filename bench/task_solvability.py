"""Full-context accuracy of a frozen model on each task family, by context length.

A family the model can never solve with the full context teaches a policy nothing, so this checks that the
default model can. For each family/split/filler setting it prints: mean context tokens, exact match of greedy
decoding (teacher-forced prefix match), and, where the task has choices, raw and calibrated choice accuracy
(calibrated = choice log-prob minus its log-prob with an empty context), plus the same with only the evidence
kept (the oracle).

Usage:
    python bench/task_solvability.py [--model smollm2-135m] [--n 40] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.examples import encode_example  # noqa: E402
from envs.frozen_lm import FrozenLM  # noqa: E402
from envs.scoring import choice_accuracy, exact_match  # noqa: E402
from envs.task_families import make_examples  # noqa: E402

SETTINGS = [
    ("passkey", "train", {"filler": 3}),
    ("passkey", "train", {"filler": 6}),
    ("passkey", "heldout", {"filler": 14}),
    ("kv", "train", {"distractors": 4}),
    ("kv", "train", {"distractors": 10}),
    ("kv", "heldout", {"distractors": 16}),
    ("qa", "train", {"distractors": 3}),
    ("qa", "train", {"distractors": 6}),
    ("qa", "heldout", {"distractors": 9}),
]


def main() -> None:
    """Print a table of full-context and evidence-only accuracy per family and length."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--n", type=int, default=40, help="examples per setting")
    ap.add_argument("--dtype", default="float32", help="model dtype")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = FrozenLM.load(args.model, dtype=args.dtype)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s")
    print(
        "| family | split | setting | ctx tokens | EM full | EM evidence | choice raw | choice calib | calib evidence |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for family, split, opts in SETTINGS:
        encs = [encode_example(lm.tokenizer, ex) for ex in make_examples(family, split, args.n, seed=7, **opts)]
        evid = [tuple(t for t, k in zip(e.context, e.evidence, strict=True) if k) for e in encs]
        em_full = exact_match(lm, encs).float().mean().item()
        em_evid = exact_match(lm, encs, contexts=evid).float().mean().item()
        row = [family, split, str(opts), f"{sum(len(e.context) for e in encs) / len(encs):.0f}"]
        row += [f"{em_full:.2f}", f"{em_evid:.2f}"]
        if encs[0].choices is not None:
            raw, cal = choice_accuracy(lm, encs)
            _, cal_e = choice_accuracy(lm, encs, contexts=evid)
            row += [f"{raw.float().mean():.2f}", f"{cal.float().mean():.2f}", f"{cal_e.float().mean():.2f}"]
        else:
            row += ["-", "-", "-"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
