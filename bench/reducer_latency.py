"""Reducer latency against the frozen model's prefill, and end-to-end speedup at rate 0.3, in one run.

On the same prompts of about 1,000 context tokens (long passkey/kv contexts; the reducer processes them in
``max_len`` windows), one at a time (batch 1, as a serving request would):

* prefill(full): a forward of the frozen model over the full chat-wrapped prompt, logits for the last token.
* reduce: ``TokenReducer.reduce(context, question, rate=0.3)`` (tokenisation, units, lexical channels,
  features, policy, selection).
* prefill(kept): the same forward over the prompt rebuilt from the kept tokens.

Prints ``reducer / prefill(full)`` and ``speedup = prefill(full) / (reduce + prefill(kept))`` (goal >= 2 at
rate 0.3) on the last two lines. Timing does not depend on the policy's weights, so without ``--reducer`` an
untrained reducer of the default preset's shape is used; ``--feature-layer``, ``--attention-layers`` and
``--unit`` price the other input options of the feature ablation.

Usage:
    python bench/reducer_latency.py [--reducer runs/default/reducer] [--prompts 6] [--repeats 2]
    python bench/reducer_latency.py --feature-layer 4        # what question-first layer-4 features cost
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from agents.config import PRESETS
from envs.lm.frozen_lm import FrozenLM
from envs.tasks.families import make_examples
from policies.processor import ProcessorConfig
from policies.reducer import TokenReducer
from policies.tokenization import encode_question


def untrained_reducer(lm: FrozenLM, out: Path, processor: ProcessorConfig) -> TokenReducer:
    """A reducer with the default preset's network and random policy weights, saved and reloaded."""
    cfg = PRESETS["default"]
    reducer = TokenReducer.from_base_model(
        lm.model, lm.tokenizer, spec=lm.spec, file_hash=lm.file_hash, processor=processor,
        budget=cfg.budget, network=cfg.network,
    )  # fmt: skip
    reducer.save_pretrained(out)
    return TokenReducer.from_pretrained(out)


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reducer", default=None, help="reducer directory (default: an untrained one)")
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--prompts", type=int, default=6, help="number of ~1,000-token prompts")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the prompts")
    ap.add_argument("--rate", type=float, default=0.3, help="kept ratio")
    ap.add_argument("--tokens", type=int, default=1000, help="context tokens per prompt (at least)")
    ap.add_argument("--feature-layer", type=int, default=None, help="untrained reducer: hidden-state layer")
    ap.add_argument("--attention-layers", type=int, default=None, help="untrained reducer: attention layers")
    ap.add_argument("--unit", default=None, help="untrained reducer: token, word or sentence")
    ap.add_argument("--no-lexical", action="store_true", help="untrained reducer: without lexical channels")
    args = ap.parse_args()
    proc = PRESETS["default"].processor
    proc = replace(
        proc,
        feature_layer=proc.feature_layer if args.feature_layer is None else args.feature_layer,
        attention_layers=proc.attention_layers if args.attention_layers is None else args.attention_layers,
        unit=args.unit or proc.unit,
        lexical=proc.lexical and not args.no_lexical,
    )

    lm = FrozenLM.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        reducer = (
            TokenReducer.from_pretrained(args.reducer) if args.reducer else untrained_reducer(lm, Path(tmp) / "r", proc)
        )
    print(f"reducer processor: {reducer.config.processor}")
    reducer.check_compatible(lm.tokenizer, lm.spec, lm.file_hash)
    # Each prompt: held-out passkey/kv contexts joined until the context reaches ~1,000 tokens; the question is
    # the first example's.
    pool = make_examples("passkey", "heldout", 8 * args.prompts, seed=1)
    pool = [x for pair in zip(pool, make_examples("kv", "heldout", len(pool), seed=1), strict=True) for x in pair]
    items = []
    for _ in range(args.prompts):
        first = pool.pop(0)
        text = first.context
        while len(lm.encode(text)) < args.tokens:
            text += " " + pool.pop(0).context
        ex = dataclasses.replace(first, context=text)
        ctx, q, pre = lm.encode(ex.context), encode_question(lm.tokenizer, ex.question), lm.encode(ex.answer_prefix)
        items.append((ex, ctx, q, pre))
    print(f"{len(items)} prompts, context tokens: {[len(c) for _, c, _, _ in items]}")
    decoder, head = lm.model.get_decoder(), lm.model.get_output_embeddings()

    @torch.inference_mode()
    def prefill(ids: list[int]) -> None:
        h = decoder(input_ids=torch.tensor([ids]), use_cache=True).last_hidden_state
        head(h[:, -1])

    full_t = red_t = kept_t = 0.0
    kept_tokens = full_tokens = 0
    for rep in range(args.repeats + 1):  # the first pass warms up and is not timed
        for ex, ctx, q, pre in items:
            full_prompt, _ = lm.build_prompt(ctx, q, pre)
            t0 = time.perf_counter()
            prefill(full_prompt)
            t1 = time.perf_counter()
            red = reducer.reduce(ex.context, ex.question, rate=args.rate)
            t2 = time.perf_counter()
            kept_prompt, _ = lm.build_prompt(red.kept_ids, q, pre)
            prefill(kept_prompt)
            t3 = time.perf_counter()
            if rep:
                full_t, red_t, kept_t = full_t + t1 - t0, red_t + t2 - t1, kept_t + t3 - t2
                full_tokens, kept_tokens = full_tokens + len(full_prompt), kept_tokens + len(kept_prompt)
    n = len(items) * args.repeats
    print(f"prompt tokens: full {full_tokens / n:.0f}, kept {kept_tokens / n:.0f} (rate {args.rate} of the context)")
    print(
        f"prefill(full): {1000 * full_t / n:.1f} ms  reduce: {1000 * red_t / n:.1f} ms  "
        f"prefill(kept): {1000 * kept_t / n:.1f} ms"
    )
    print(f"reducer / prefill(full): {red_t / full_t:.3f}")
    print(f"speedup: {full_t / (red_t + kept_t):.2f}x")


if __name__ == "__main__":
    main()
