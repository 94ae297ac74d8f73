"""Whether the frozen model's score carries the evidence's signal on the real-text families (check it first).

A reward can teach a policy only if the frozen model scores prompts that keep the evidence above prompts that
lose it. For each real-text family (training split: this is about the training signal) it prints the gold
answer's mean log-likelihood per token (and exact match of greedy decoding) for:

* ``full``: the whole context;
* ``bm25 + evidence``: BM25's sentences at ``--rate``, with the evidence sentences forced in first;
* ``bm25 - evidence``: the same selection with the evidence sentences forced out (their budget refilled);
* ``evidence only``: the evidence sentences alone;
* ``no evidence``: the whole context without the evidence sentences;

and the paired difference "+ evidence" minus "- evidence" (mean with a 95% bootstrap interval, and the share of
examples where it is positive): that is the reward difference a policy that finds the evidence earns.

Usage:
    python bench/real_signal.py [--n 40] [--rate 0.3] [--families passages,longdoc]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs.lm.frozen_lm import FrozenLM
from envs.scoring import score_reduced
from envs.tasks.examples import encode_example
from envs.tasks.real_text import REAL_FAMILIES, make_real_examples
from policies.budget import Budget, fill_units, rank_priorities
from policies.lexical import bm25_scores, text_words, words
from policies.units import segment, unit_lengths


def bootstrap(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean."""
    rng = np.random.default_rng(seed)
    means = x[rng.integers(len(x), size=(n, len(x)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--n", type=int, default=40, help="examples per family")
    ap.add_argument("--rate", type=float, default=0.3, help="keep rate of the BM25 rows")
    ap.add_argument("--families", default=",".join(REAL_FAMILIES), help="comma-separated real-text families")
    ap.add_argument("--split", default="train", choices=("train", "heldout"), help="which split to read")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = FrozenLM.load(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s")
    rows = ["full", "bm25 + evidence", "bm25 - evidence", "evidence only", "no evidence"]
    print("| family | n | ctx tokens | " + " | ".join(f"{r} loglik (EM)" for r in rows)
          + " | + minus - evidence (loglik) | share > 0 |")  # fmt: skip
    print("|---|---|---|" + "---|" * len(rows) + "---|---|")
    for family in args.families.split(","):
        encs = [encode_example(lm.tokenizer, ex) for ex in make_real_examples(family, args.split, args.n, seed=11)]
        masks: dict[str, list[np.ndarray]] = {r: [] for r in rows}
        for e in encs:
            ctx = e.example.context
            sent = segment(ctx, e.offsets, "sentence")
            lengths = unit_lengths(sent)
            ev = np.bincount(sent, weights=np.asarray(e.evidence, float), minlength=len(lengths)) > 0
            tw = text_words(ctx, e.offsets, sent)
            bm = bm25_scores(tw.sentences, list(set(words(e.example.question))))
            budget = Budget(rate=args.rate).max_tokens(len(e.context))
            prio = rank_priorities(bm)
            with_ev = fill_units(np.where(ev, 2.0, prio), lengths, budget)
            without = fill_units(np.where(ev, 0.0, prio), lengths, budget)
            masks["full"].append(np.ones(len(e.context), bool))
            masks["bm25 + evidence"].append(with_ev[sent])
            masks["bm25 - evidence"].append(without[sent])
            masks["evidence only"].append(ev[sent])
            masks["no evidence"].append(~ev[sent])
        ll, em = {}, {}
        for name in rows:
            pairs = zip(encs, masks[name], strict=True)
            ctxs = [tuple(t for t, k in zip(e.context, m, strict=True) if k) for e, m in pairs]
            res = score_reduced(lm, encs, ctxs)
            ll[name], em[name] = res.loglik.numpy(), res.exact_match.float().numpy()
        diff = ll["bm25 + evidence"] - ll["bm25 - evidence"]
        lo, hi = bootstrap(diff)
        ctx = np.mean([len(e.context) for e in encs])
        cells = [f"{ll[r].mean():.2f} ({em[r].mean():.2f})" for r in rows]
        print(f"| {family} | {len(encs)} | {ctx:.0f} | " + " | ".join(cells)
              + f" | {diff.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] | {(diff > 0).mean():.2f} |", flush=True)  # fmt: skip
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
