"""Env steps per second through the vLLM backend against the in-process backend, same prompts, in one run.

1. Start a vLLM server with the model (``--vllm-python``; or use a running one with ``--url``), load the same
   model in process, and build two TokenKeep cores over the same task pool: one scores in process, one through
   the server (features are local in both). Warm both caches: full-context scores and features are computed
   once per example by design, and are not what is compared.
2. Draw fixed random actions for S vec-env steps. Both vec envs are seeded alike, so they replay the same
   episodes and score the same reduced prompts (checked).
3. Alternate timed rounds of each; print steps/s of both, the server's CPU time during the in-process rounds
   (it should idle), and, on the last line, ``ratio: vllm / in-process``.

On one machine the server and the env share the CPU cores: the server computes while the env waits. The ratio
is the price of the HTTP backend for the same forward passes; on GPUs the server is where the speed comes from
(docs/scaling.md).

Usage:
    python bench/backend_throughput.py --vllm-python .venv-vllm/bin/python [--n-envs 16] [--steps 6]
    python bench/backend_throughput.py --url http://127.0.0.1:8000      # a server already serving the model
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from envs.core import TokenKeepCore
from envs.lm.frozen_lm import FrozenLM
from envs.lm.vllm_server import VLLMServer
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.budget import Budget, BudgetConfig
from policies.processor import ProcessorConfig


def group_cpu_seconds(pgid: int | None) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (0 when unknown)."""
    if pgid is None:
        return 0.0
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # pgrp
                total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


def main() -> None:
    """Run the benchmark and print the ratio on the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec (served and loaded in process)")
    ap.add_argument("--url", default="", help="a running vLLM server serving --model (default: start one)")
    ap.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="the vLLM venv's Python")
    ap.add_argument("--tasks", default="passkey:train,kv:train,qa:train", help="task spec")
    ap.add_argument("--pool", type=int, default=16, help="examples per task spec")
    ap.add_argument("--n-envs", type=int, default=16, help="parallel episodes per step (the default preset's)")
    ap.add_argument("--steps", type=int, default=6, help="vec-env steps per timed round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating timed rounds of each")
    ap.add_argument("--max-in-flight", type=int, default=8, help="HTTP requests in flight at once")
    args = ap.parse_args()

    torch.manual_seed(0)
    server = None if args.url else VLLMServer(args.vllm_python, args.model, log="runs/bench-vllm-server.log")
    with server if server is not None else contextlib.nullcontext():
        url = args.url or server.url
        spec = f"vllm+{url}?model={args.model}&features={args.model}&max_in_flight={args.max_in_flight}"
        lms = {"in-process": FrozenLM.load(args.model), "vllm": FrozenLM.load(spec)}
        budget = BudgetConfig(cost_low=0.5, cost_high=0.5, default_token_cost=0.5)
        cores, venvs = {}, {}
        for name, lm in lms.items():
            cores[name] = TokenKeepCore(
                lm, args.tasks, processor=ProcessorConfig(max_len=256), budget=budget, num_examples=args.pool
            )
            venvs[name] = BatchedTokenKeepVecEnv(cores[name], n_envs=args.n_envs, seed=0)
        pool = len(cores["vllm"].pool)
        print(f"model {args.model}, pool {pool} examples, n_envs {args.n_envs}, {lms['vllm'].backend.describe()}")
        for name, core in cores.items():
            t = time.perf_counter()
            core.full_scores(range(pool))
            core.observe(list(range(pool)), [Budget()] * pool)
            print(f"warm-up {name} (full-context scores and features for the pool): {time.perf_counter() - t:.1f}s")

        rng = np.random.default_rng(0)
        actions = [rng.uniform(-1, 1, (args.n_envs, 256)).astype(np.float32) for _ in range(args.steps)]

        lm, pool_encs = lms["vllm"], cores["vllm"].pool
        fixed = len(lm.layout.prefix) + len(lm.layout.middle) + len(lm.layout.suffix)
        scored: list[int] = []  # tokens of every reduced prompt + answer scored in a round

        def play(name: str) -> tuple[float, list[list[int]]]:
            venv = venvs[name]
            venv.seed(0)
            venv.reset()
            kept = []
            t0 = time.perf_counter()
            for a in actions:
                infos = venv.step(a)[3]
                kept.append([i["kept_tokens"] for i in infos])
                if name == "vllm" and len(scored) < args.steps * args.n_envs:
                    for i in infos:
                        e = pool_encs[i["example_index"]]
                        scored.append(fixed + i["kept_tokens"] + len(e.question) + len(e.answer_prefix) + len(e.answer))
            return time.perf_counter() - t0, kept

        seconds = {name: 0.0 for name in lms}
        idle_cpu = 0.0
        pgid = server.proc.pid if server is not None and server.proc is not None else None
        for _ in range(args.rounds):
            cpu0 = group_cpu_seconds(pgid)
            t_local, kept_local = play("in-process")
            idle_cpu += group_cpu_seconds(pgid) - cpu0
            t_vllm, kept_vllm = play("vllm")
            assert kept_local == kept_vllm, "the two envs must score the same reduced prompts"
            seconds["in-process"] += t_local
            seconds["vllm"] += t_vllm
    steps = args.steps * args.rounds
    prefix = len(lms["vllm"].layout.prefix)
    tokens = float(np.sum(scored))
    rate = {name: steps / s for name, s in seconds.items()}
    print(f"steps per round: {args.steps} x {args.n_envs} episodes; rounds: {args.rounds}")
    print(f"scored tokens per reduced prompt: {np.mean(scored):.0f}, of which the shared prefix: {prefix}")
    print(f"torch threads in process: {torch.get_num_threads()}; CPU cores: {os.cpu_count()}")
    if pgid is not None:
        print(f"server CPU time during the in-process rounds: {idle_cpu:.1f}s of {seconds['in-process']:.1f}s wall")
    for name, label in (("in-process", "in-process backend"), ("vllm", "vLLM HTTP backend")):
        print(f"{label}: {rate[name]:.2f} env steps/s ({tokens * args.rounds / seconds[name]:.0f} scored tokens/s)")
    print(f"ratio: {rate['vllm'] / rate['in-process']:.3f}")


if __name__ == "__main__":
    main()
