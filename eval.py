"""Evaluate trained reducers against baselines on held-out tasks, at equal kept ratios.

Examples:
    python eval.py --reducer runs/default/reducer --tasks passkey:heldout,kv:heldout --out reports/default
    python eval.py --reducer a/reducer --reducer b/reducer --tasks jsonl:data/my.jsonl --rates 0.2,0.5 --out r/
    python eval.py --tasks kv:heldout --baselines full,random,oracle --out r/   # baselines only

Writes report.json, report.md (printed at the end), pareto.png and examples.html into --out.
"""

import argparse
import sys

from agents.baselines import BASELINES
from agents.run_eval import EvalArgs, run_eval
from policies.reducer import ReducerError


def main() -> None:
    """Parse the command line and evaluate."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reducer", action="append", default=[], help="reducer directory; repeat to compare several")
    p.add_argument("--tasks", required=True, help="task spec(s), comma-separated, e.g. kv:heldout,jsonl:x.jsonl")
    p.add_argument("--model", default=None, help="frozen model spec (default: the first reducer's base model)")
    p.add_argument("--small-lm", default=None, help="small LM spec for the llmlingua baseline (default: --model)")
    p.add_argument("--rates", default="0.3,0.5,0.7", help="kept ratios to compare at, each in (0, 1]")
    p.add_argument("--baselines", default=",".join(BASELINES), help=f"baselines to include ({', '.join(BASELINES)})")
    p.add_argument("--n", type=int, default=24, help="examples per synthetic task spec without its own n=")
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic tasks, random keep and bootstrap")
    p.add_argument("--dtype", default="float32", help="frozen model dtype")
    p.add_argument("--token-cost", type=float, default=None, help="token cost the reducers are conditioned on")
    p.add_argument("--out", required=True, help="report directory (must not exist or be empty)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args()
    try:
        rates = [float(x) for x in a.rates.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"error: --rates must be comma-separated numbers, got {a.rates!r}")
    args = EvalArgs(
        reducers=a.reducer,
        tasks=a.tasks,
        model=a.model,
        small_lm=a.small_lm,
        rates=rates,
        baselines=[b for b in a.baselines.split(",") if b.strip()],
        n=a.n,
        seed=a.seed,
        dtype=a.dtype,
        token_cost=a.token_cost,
        out=a.out,
        progress=not a.no_progress,
    )
    try:
        table = run_eval(args)
    except (ValueError, FileNotFoundError, FileExistsError, ReducerError) as err:
        sys.exit(f"error: {err}")
    print(table)


if __name__ == "__main__":
    main()
