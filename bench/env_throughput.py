"""Env throughput against the raw frozen-model forward, on the same reduced prompts, in one run.

1. Build a TokenKeep core and a batched vec env over the default model; warm the per-example caches
   (features and full-context scores are computed once per example by design).
2. Draw fixed random unit priorities for S steps (episodes at rate ``--keep``) and record the exact reduced
   prompts the env will score.
3. Alternate timed rounds of (a) the raw model: a bare batched forward of the decoder (no LM head, no prefix
   cache) over those same prompt+answer sequences, batched exactly as one env step batches them, and (b) the
   env: the same S vec-env steps (selection, scoring with the prefix cache, rewards, infos, next observations).
4. Print tokens/s of both and, on the last line, ``ratio: env / raw``.

Usage:
    python bench/env_throughput.py [--model smollm2-135m] [--n-envs 8] [--steps 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from envs.core import TokenKeepCore
from envs.lm.frozen_lm import FrozenLM
from envs.scoring import build_prompts
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.budget import Budget, BudgetConfig
from policies.features import micro_batches, pad_right
from policies.processor import ProcessorConfig


def main() -> None:
    """Run the benchmark and print the ratio on the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--dtype", default="float32", help="model dtype")
    ap.add_argument("--tasks", default="passkey:train,kv:train,qa:train", help="task spec")
    ap.add_argument("--pool", type=int, default=16, help="examples per task spec")
    ap.add_argument("--n-envs", type=int, default=8, help="parallel episodes per step")
    ap.add_argument("--steps", type=int, default=6, help="vec-env steps per timed round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating timed rounds of each")
    ap.add_argument("--keep", type=float, default=0.5, help="keep rate of the episodes")
    args = ap.parse_args()

    torch.manual_seed(0)
    lm = FrozenLM.load(args.model, dtype=args.dtype)
    budget = BudgetConfig(rate_low=args.keep, rate_high=args.keep, adaptive_fraction=0.0)
    core = TokenKeepCore(lm, args.tasks, processor=ProcessorConfig(max_len=256), budget=budget, num_examples=args.pool)
    venv = BatchedTokenKeepVecEnv(core, n_envs=args.n_envs, seed=0)
    print(f"model {args.model} ({args.dtype}), pool {len(core.pool)} examples, n_envs {args.n_envs}")
    t = time.perf_counter()
    core.full_scores(range(len(core.pool)))
    core.observe(list(range(len(core.pool))), [Budget()] * len(core.pool))
    print(f"warm-up (full-context scores and features for the pool): {time.perf_counter() - t:.1f}s")

    rng = np.random.default_rng(0)
    actions = [rng.uniform(0.01, 1.0, (args.n_envs, core.max_len)).astype(np.float32) for _ in range(args.steps)]

    # Record the episodes the env will see so the raw forward gets exactly the same sequences.
    venv.seed(0)
    venv.reset()
    raw_batches: list[list[list[int]]] = []
    for a in actions:
        seqs = []
        for (i, b), m in zip(venv._episodes, a, strict=True):
            e = core.pool[i]
            kept = [t for t, k in zip(e.context, core.keep_mask(i, b, m), strict=True) if k]
            seqs.append(build_prompts(lm, [e], [kept])[0] + list(e.answer))
        raw_batches.append(seqs)
        venv.step(a)
    tokens = sum(len(s) for b in raw_batches for s in b)
    decoder = lm.model.get_decoder()

    def raw_round() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for seqs in raw_batches:
                for mb in micro_batches([len(s) for s in seqs], lm.max_batch_tokens):
                    ids, mask = (t.to(lm.device) for t in pad_right([seqs[i] for i in mb], lm.pad_id))
                    decoder(input_ids=ids, attention_mask=mask, use_cache=False)
        return time.perf_counter() - t0

    def env_round() -> float:
        venv.seed(0)
        venv.reset()
        t0 = time.perf_counter()
        for a in actions:
            venv.step(a)
        return time.perf_counter() - t0

    raw_t, env_t = 0.0, 0.0
    for _ in range(args.rounds):
        raw_t += raw_round()
        env_t += env_round()
    raw_tps = tokens * args.rounds / raw_t
    env_tps = tokens * args.rounds / env_t
    print(f"tokens per round: {tokens} ({tokens / (args.steps * args.n_envs):.0f} per reduced prompt)")
    print(f"raw frozen-model forward: {raw_tps:.0f} tokens/s")
    print(f"env (batched vec env steps): {env_tps:.0f} tokens/s")
    print(f"ratio: {env_tps / raw_tps:.3f}")


if __name__ == "__main__":
    main()
