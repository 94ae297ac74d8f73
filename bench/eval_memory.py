"""Peak memory of eval.py on a 1k- and a 10k-example JSONL, and of reduce() on a 10k- and a 100k-token context.

eval.py streams a JSONL task (it is checked line by line, then read and scored ``chunk_size`` examples at a
time), so its peak RSS should not grow with the file: the ratio 10k / 1k is the number to watch (goal <= 1.2).
``TokenReducer.reduce`` scores a long context window by window, ``window_batch`` windows per forward, so its
peak RSS grows only with what it must hold (token ids, masks), not with the features of every window.

Each measurement runs in its own process and reads that process's peak RSS (``os.wait4``). The frozen model
defaults to ``tiny-random`` so that the bench runs in minutes; memory, not quality, is measured.

Usage:
    python bench/eval_memory.py [--model tiny-random] [--small 1000] [--large 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REDUCE = """
import sys
from envs.lm.frozen_lm import FrozenLM
from policies import TokenReducer
from policies.processor import ProcessorConfig
lm = FrozenLM.load(sys.argv[1])
r = TokenReducer.from_base_model(lm.model, lm.tokenizer, spec=lm.spec, processor=ProcessorConfig())
words = int(sys.argv[2])
ctx = " ".join(f"The code for item{i} is {1000 + i % 9000}." for i in range(words // 8))
red = r.reduce(ctx, "What is the code for item7?", rate=0.3)
print(red.original_tokens, red.kept_tokens)
"""


def peak_rss_mb(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd``; return its peak resident memory in MiB and its output."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        log.seek(0)
        text = log.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-2000:]}")
    return usage.ru_maxrss / 1024, text


def write_jsonl(path: Path, n: int) -> None:
    """``n`` key/code lookup examples, one per line."""
    with path.open("w") as f:
        for i in range(n):
            keys = [f"key{(i + j) % 997}" for j in range(8)]
            ctx = " ".join(f"The code for {k} is {1000 + (i * 7 + j) % 9000}." for j, k in enumerate(keys))
            f.write(json.dumps({"context": ctx, "question": f"What is the code for {keys[3]}?",
                                "answer": f" {1000 + (i * 7 + 3) % 9000}"}) + "\n")  # fmt: skip


def main() -> None:
    """Measure and print; the last line ends with the eval ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random", help="frozen model spec")
    ap.add_argument("--small", type=int, default=1000, help="examples in the small JSONL")
    ap.add_argument("--large", type=int, default=10000, help="examples in the large JSONL")
    ap.add_argument("--reduce-words", type=int, default=100_000, help="words of the long context (~1.9 tokens each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rss = {}
        for n in (args.small, args.large):
            data = Path(tmp) / f"{n}.jsonl"
            write_jsonl(data, n)
            cmd = [sys.executable, "eval.py", "--model", args.model, "--tasks", f"jsonl:{data}", "--rates", "0.3",
                   "--baselines", "full", "random", "--out", str(Path(tmp) / f"r{n}"), "--no-progress"]  # fmt: skip
            rss[n], _ = peak_rss_mb(cmd)
            print(f"eval.py, {n} examples: peak RSS {rss[n]:.0f} MiB", flush=True)
        red = {}
        for words in (args.reduce_words // 10, args.reduce_words):
            rss_mb, out = peak_rss_mb([sys.executable, "-c", REDUCE, args.model, str(words)])
            tokens = int(out.split()[-2])
            red[tokens] = rss_mb
            print(f"reduce(), {tokens} context tokens: peak RSS {rss_mb:.0f} MiB", flush=True)
    lo, hi = sorted(red)
    print(f"reduce() peak RSS ratio {hi} / {lo} tokens ({hi / lo:.1f}x longer): {red[hi] / red[lo]:.2f}")
    print(f"eval.py peak RSS ratio {args.large} / {args.small} examples: {rss[args.large] / rss[args.small]:.2f}")


if __name__ == "__main__":
    main()
