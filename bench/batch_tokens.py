"""Micro-batch size on the CPU: frozen-model scoring and sentence embedding, default budget against 16,384 tokens.

Every batched forward in tokenkeep groups sequences by length into micro-batches of at most a budget of padded
tokens. On a CPU a forward whose activations outgrow the caches runs slower per token, so the budgets default to
:data:`policies.features.CPU_BATCH_TOKENS` for the frozen model and ``SentenceEncoder``'s ``batch_tokens`` for the
encoder; before 2026-12-08 both were 16,384. In one run, alternating the two settings ``--repeats`` times:

1. frozen model: ``FrozenLM.score_answers`` over held-out prompts of the real-text and synthetic families as the
   evaluator builds them (the whole context, chat-wrapped, one three-token answer each; the cached chat header
   reused as in training and evaluation);
2. sentence encoder: ``SentenceEncoder.embed`` over every distinct sentence of those contexts.

Prints tokens per second of each setting (best of the repeats) and, on the last two lines, ``ratio: default /
16384`` for the frozen model and for the encoder (> 1: the default is faster). Results do not depend on the budget
beyond float rounding (tests/test_frozen_lm.py, tests/test_semantic.py).

Usage:
    python bench/batch_tokens.py [--n 24] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.evaluate import load_eval_tasks
from envs.lm.frozen_lm import FrozenLM
from envs.tasks.corpora import sentence_spans
from policies.features import CPU_BATCH_TOKENS
from policies.semantic import SentenceEncoder
from policies.tokenization import encode_question

OLD = 16384
TASKS = "passages:heldout,longdoc:heldout,state:heldout,multihop3:heldout"


def best_rate(run, tokens: int, budgets: list[int], repeats: int) -> dict[int, float]:
    """Tokens per second of ``run(budget)`` for each budget, best of ``repeats`` alternating rounds."""
    best = dict.fromkeys(budgets, 0.0)
    for _ in range(repeats):
        for b in budgets:
            t0 = time.perf_counter()
            run(b)
            best[b] = max(best[b], tokens / (time.perf_counter() - t0))
    return best


def main() -> None:
    """Time both settings and print the two ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="held-out examples per task")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed rounds per setting")
    ap.add_argument("--tasks", default=TASKS, help="comma-separated task specs")
    args = ap.parse_args()
    lm = FrozenLM.load()
    tasks = load_eval_tasks(args.tasks, lm.tokenizer, args.n, seed=0)
    examples = [e.example for items in tasks.values() for e in items]
    prompts = [
        lm.build_prompt(lm.encode(ex.context), encode_question(lm.tokenizer, ex.question), [])[0] for ex in examples
    ]
    answers = [lm.encode(" the answer")[:3] for _ in prompts]
    lm_tokens = sum(len(p) for p in prompts)
    print(f"torch threads {torch.get_num_threads()}; {len(prompts)} prompts, {lm_tokens} tokens (mean "
          f"{lm_tokens // len(prompts)})")  # fmt: skip

    def score(budget: int) -> None:
        lm.max_batch_tokens = budget
        lm.score_answers(prompts, answers)

    score(CPU_BATCH_TOKENS)  # warm-up: the chat header's cached keys and values, allocator
    lm_rates = best_rate(score, lm_tokens, [CPU_BATCH_TOKENS, OLD], args.repeats)

    encoder = SentenceEncoder.default()
    default_encoder_budget = encoder.batch_tokens
    sentences = list(dict.fromkeys(ex.context[a:b] for ex in examples for a, b in sentence_spans(ex.context)))
    enc_tokens = sum(len(encoder.tokenizer(s, truncation=True, max_length=encoder.max_tokens)["input_ids"])
                     for s in sentences)  # fmt: skip

    def embed(budget: int) -> None:
        encoder.batch_tokens = budget
        encoder.embed(sentences)

    embed(default_encoder_budget)
    enc_rates = best_rate(embed, enc_tokens, [default_encoder_budget, OLD], args.repeats)

    print("| forward | micro-batch budget | tokens/s |")
    print("|---|---|---|")
    for b, r in lm_rates.items():
        print(f"| frozen model ({len(prompts)} prompts) | {b} | {r:.0f} |")
    for b, r in enc_rates.items():
        print(f"| sentence encoder ({len(sentences)} sentences) | {b} | {r:.0f} |")
    print(f"ratio: frozen model default ({CPU_BATCH_TOKENS}) / {OLD}: {lm_rates[CPU_BATCH_TOKENS] / lm_rates[OLD]:.2f}")
    print(f"ratio: encoder default ({default_encoder_budget}) / {OLD}: "
          f"{enc_rates[default_encoder_budget] / enc_rates[OLD]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
