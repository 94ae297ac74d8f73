"""Wall time and page faults of one evaluation with glibc's default malloc against ``reuse_freed_memory``.

:func:`agents.runtime.reuse_freed_memory` (called by ``train.py`` and ``eval.py``) keeps freed memory in the heap
instead of returning it to the kernel. This script runs the same evaluation (``eval.py``'s evaluator: the full
context and BM25 at rate 0.3 on long documents and a synthetic family, the frozen model's forwards being most of
the time) in fresh processes, alternating the two settings ``--repeats`` times each, and prints per run the wall
time, user and kernel CPU time, minor page faults and peak memory, then, on the last line, ``ratio: default /
reuse`` of the median wall times (above 1: the setting saves time).

Usage:
    python bench/allocator.py [--tasks longdoc:heldout:n=8,state:heldout:n=48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(tasks: str) -> None:
    """Run one evaluation in this process (the setting comes from the environment) and print its costs as JSON."""
    sys.path.insert(0, str(ROOT))
    from agents.run_eval import EvalArgs, run_eval
    from agents.runtime import reuse_freed_memory

    applied = reuse_freed_memory()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_eval(EvalArgs(tasks=tasks, out=out, baselines=("full", "bm25"), rates=(0.3,), progress=False))
    wall = time.perf_counter() - t0
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "reuse": applied, "wall_s": wall, "user_s": r.ru_utime, "sys_s": r.ru_stime,
        "minor_faults": r.ru_minflt, "peak_rss_gb": r.ru_maxrss / 2**20,
    }))  # fmt: skip


def main() -> None:
    """Alternate the two settings in fresh processes and print the ratio of their median wall times."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="longdoc:heldout:n=8,state:heldout:n=48", help="task specs evaluated")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each setting")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.tasks)
        return
    walls: dict[bool, list[float]] = {False: [], True: []}
    print("| malloc | wall s | user s | kernel s | minor faults | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.repeats):
        for reuse in (False, True):
            env = {**os.environ, "TOKENKEEP_MALLOC": "reuse" if reuse else "default"}
            cmd = [sys.executable, __file__, "--worker", "--tasks", args.tasks]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if row["reuse"] != reuse:
                sys.exit("reuse_freed_memory() was not applied (not glibc?): nothing to compare")
            walls[reuse].append(row["wall_s"])
            print(
                f"| {'reuse' if reuse else 'default'} | {row['wall_s']:.1f} | {row['user_s']:.1f} | "
                f"{row['sys_s']:.1f} | {row['minor_faults']:,} | {row['peak_rss_gb']:.2f} |",
                flush=True,
            )
    ratio = statistics.median(walls[False]) / statistics.median(walls[True])
    print(f"ratio: default / reuse wall time = {ratio:.2f}")


if __name__ == "__main__":
    main()
