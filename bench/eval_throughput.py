"""Evaluator throughput against the raw frozen-model forward over the same prompts, in one run.

1. Load the frozen model (offline) and build every baseline plus a TokenReducer: ``--reducer DIR``, or an
   untrained one of the default preset's shape (timing does not depend on the policy's weights).
2. Evaluate with :func:`agents.evaluate.evaluate`, the evaluator of ``eval.py``, on ``--n`` held-out examples of
   each task spec at ``--rates``; it records every distinct prompt it scored, per batched scoring call (the
   full-context, choice-prior and llmlingua prompts of step 1 and the reduced prompts of step 2 of each chunk).
3. Raw forward: the decoder alone (``model.get_decoder()``, no LM head, ``inference_mode``) over exactly those
   prompts, call by call, sorted and micro-batched with the same ``max_batch_tokens`` budget; a prompt the
   evaluator continued from the cached chat-template prefix continues from the same cached keys and values here,
   so both sides compute the same prompt tokens.
4. Print the evaluated examples/s, the prompt tokens/s of both (the evaluator's over its whole wall time:
   reducers, baselines, selection, continuations and bookkeeping included), the tokens per example by method
   (where the time goes), and, on the last line, ``ratio: evaluator / raw`` (goal >= 0.8).

Usage:
    python bench/eval_throughput.py [--n 16] [--rates 0.3] [--reducer runs/default/reducer]
    python bench/eval_throughput.py --tasks kv:heldout,qa:heldout --n 8      # a quicker look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from agents.baselines import BASELINES, KeepMethod, ReducerMethod, make_baselines
from agents.config import PRESETS
from agents.eval_batch import EvalTrace
from agents.evaluate import evaluate, load_eval_tasks
from envs.lm.frozen_lm import FrozenLM
from policies.features import micro_batches, pad_right
from policies.reducer import TokenReducer

HELDOUT = "passkey:heldout,kv:heldout,qa:heldout,multihop:heldout,state:heldout"


def untrained_reducer(lm: FrozenLM, out: Path) -> TokenReducer:
    """A reducer with the default preset's processor and network and random policy weights, saved and reloaded."""
    cfg = PRESETS["default"]
    reducer = TokenReducer.from_base_model(
        lm.model, lm.tokenizer, spec=lm.spec, file_hash=lm.file_hash, processor=cfg.processor,
        budget=cfg.budget, network=cfg.network,
    )  # fmt: skip
    reducer.save_pretrained(out)
    return TokenReducer.from_pretrained(out)


@torch.inference_mode()
def raw_forward(calls: list[tuple[FrozenLM, list[tuple[list[int], slice | None]]]]) -> tuple[float, int]:
    """Time the decoder over the prompt tokens each scoring call computed; returns (seconds, tokens)."""
    seconds, tokens = 0.0, 0
    for lm, prompts in calls:
        decoder = lm.model.get_decoder()
        cache_arg = lm.backend.prefix.cache_arg
        reused = [lm.backend.reused_prefix(p, None if s is None else s.indices(len(p))[:2]) for p, s in prompts]
        t0 = time.perf_counter()
        for p in sorted(set(reused), reverse=True):
            group = [i for i, r in enumerate(reused) if r == p]
            for mb in micro_batches([len(prompts[group[j]][0]) - p for j in range(len(group))], lm.max_batch_tokens):
                seqs = [prompts[group[j]][0][p:] for j in mb]
                ids, mask = (t.to(lm.device) for t in pad_right(seqs, lm.pad_id))
                kwargs = {}
                if p:
                    b = len(seqs)
                    kwargs[cache_arg] = lm.backend.prefix.batch_cache(b)
                    mask = torch.cat([torch.ones(b, p, dtype=mask.dtype), mask], 1)
                decoder(input_ids=ids, attention_mask=mask, use_cache=bool(p), **kwargs)
                tokens += sum(len(s) for s in seqs)
        seconds += time.perf_counter() - t0
    return seconds, tokens


def main() -> None:
    """Run the benchmark and print the ratio on the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--tasks", default=HELDOUT, help="task specs, comma-separated")
    ap.add_argument("--n", type=int, default=16, help="examples per task spec")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.3], help="keep rates")
    ap.add_argument("--reducer", default=None, help="a reducer directory (default: an untrained reducer)")
    ap.add_argument("--chunk-size", type=int, default=128, help="examples the evaluator scores together")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating timed rounds of the evaluator and the raw model")
    args = ap.parse_args()

    if args.threads > 0:  # on a machine shared with a training run, more threads than free cores slow both down
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = FrozenLM.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        reducer = TokenReducer.from_pretrained(args.reducer) if args.reducer else untrained_reducer(lm, Path(tmp))
    methods: list[KeepMethod] = [ReducerMethod(reducer, "tokenkeep"), *make_baselines(BASELINES, lm)]
    tasks = load_eval_tasks(args.tasks, lm.tokenizer, args.n)
    n_examples = sum(len(list(t)) for t in tasks.values())
    print(f"model {args.model}, {len(tasks)} task specs x {args.n} examples, rates {args.rates}, ", end="")
    print(f"methods: {', '.join(m.name for m in methods)}; chunk size {args.chunk_size}, torch threads ", end="")
    print(f"{torch.get_num_threads()}, max_batch_tokens {lm.max_batch_tokens}")

    eval_s = raw_s = 0.0
    for _ in range(args.rounds):
        trace = EvalTrace(keep_prompts=True)
        t0 = time.perf_counter()
        evaluate(lm, methods, tasks, args.rates, progress=False, chunk_size=args.chunk_size, trace=trace)
        eval_s += time.perf_counter() - t0
        seconds, raw_tokens = raw_forward(trace.scored)
        raw_s += seconds
        if raw_tokens != trace.prompt_tokens:
            raise SystemExit(f"internal: raw forward ran {raw_tokens} tokens, the evaluator {trace.prompt_tokens}")
    eval_s, raw_s = eval_s / args.rounds, raw_s / args.rounds
    print("\ntokens computed per example, by method (a prompt shared by several methods counts for each):")
    for name, tok in sorted(trace.tokens_by_method.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {tok / n_examples:8.0f}")
    print(f"  {'distinct, all':<20} {trace.tokens / n_examples:8.0f}   ({trace.prompts} distinct prompts of ", end="")
    print(f"{trace.requested} asked for, {trace.calls} scoring calls)")
    print(f"\nevaluated examples: {n_examples} in {eval_s:.1f} s: {n_examples / eval_s:.3f} examples/s")
    print(f"  {trace.seconds:.1f} s inside scoring calls; {trace.prompt_tokens} prompt tokens computed ", end="")
    print(f"({trace.tokens} with the continuations)")
    eval_tps, raw_tps = trace.prompt_tokens / eval_s, raw_tokens / raw_s
    print(f"evaluator: {eval_tps:.0f} prompt tokens/s (whole wall time)")
    print(f"raw frozen-model forward over the same prompts: {raw_tps:.0f} tokens/s ({raw_s:.1f} s)")
    print(f"ratio: {eval_tps / raw_tps:.3f}")


if __name__ == "__main__":
    main()
