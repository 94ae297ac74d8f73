"""Evaluate trained reducers against baselines on held-out tasks, at equal kept ratios.

Examples:
    python eval.py --reducer runs/default/reducer --tasks passkey:heldout,kv:heldout --out reports/default
    python eval.py --reducer a/reducer b/reducer --tasks jsonl:data/my.jsonl --rates 0.2 0.5 --out r/
    python eval.py --tasks kv:heldout --baselines full random oracle --out r/   # baselines only
    python eval.py --reducer runs/x/reducer --tasks kv:heldout --model vllm+http://127.0.0.1:8000 --out r/

Writes report.json, report.md (printed at the end), pareto.png and examples.html into --out.
"""

import sys

import tyro

from agents.run_eval import EvalArgs, run_eval
from envs.backends import BackendError
from policies.reducer import ReducerError


def main() -> None:
    """Parse the command line and evaluate."""
    args = tyro.cli(EvalArgs, description=__doc__)
    try:
        table = run_eval(args)
    except (ValueError, FileNotFoundError, FileExistsError, ReducerError, BackendError) as err:
        sys.exit(f"error: {err}")
    print(table)


if __name__ == "__main__":
    main()
