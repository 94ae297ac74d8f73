"""``reduce_documents`` on retrieved passages against the frozen model's prefill of the same prompt, in one run.

A RAG prompt: ``--passages`` passages (default 20) of about ``--tokens`` context tokens each (default 200),
built from held-out task sentences, with a question about one of them. Timed one request at a time:

* prefill(full): a forward of the frozen model over the chat-wrapped prompt of all the passages joined as
  ``reduce_documents`` joins them (blank lines between), logits for the last token;
* reduce_documents: ``TokenReducer.reduce_documents(question, passages, rate=0.3)`` (joining, tokenisation, units,
  lexical channels, features, policy, selection, per-passage spans);
* prefill(kept): the same forward over the prompt rebuilt from the kept tokens.

Prints ``reduce_documents / prefill(full)`` (goal <= 0.05) and the end-to-end speedup
``prefill(full) / (reduce_documents + prefill(kept))`` on the last two lines. Timing does not depend on the
policy's weights, so without ``--reducer`` an untrained reducer of the default preset's shape on the default
model is used (it loads offline). Set ``OMP_NUM_THREADS`` to price a given number of cores.

Usage:
    python bench/documents_latency.py [--reducer runs/default/reducer] [--passages 20] [--tokens 200] [--repeats 2]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch

from agents.config import PRESETS
from envs.lm.frozen_lm import FrozenLM
from envs.tasks.families import make_examples
from policies.reducer import TokenReducer
from policies.reduction import DOCUMENT_SEPARATOR
from policies.tokenization import encode_question


def untrained_reducer(lm: FrozenLM, out: Path) -> TokenReducer:
    """A reducer of the default preset's shape with random policy weights, saved and reloaded."""
    cfg = PRESETS["default"]
    reducer = TokenReducer.from_base_model(
        lm.model, lm.tokenizer, spec=lm.spec, file_hash=lm.file_hash, processor=cfg.processor,
        budget=cfg.budget, network=cfg.network,
    )  # fmt: skip
    reducer.save_pretrained(out)
    return TokenReducer.from_pretrained(out)


def passages(lm: FrozenLM, n: int, tokens: int) -> tuple[list[str], str]:
    """``n`` passages of at least ``tokens`` context tokens (whole sentences), and a question about the first."""
    families = ("qa", "kv", "state", "multihop", "passkey")
    pools = {f: make_examples(f, "heldout", 2 * n, seed=7) for f in families}
    sentences = []
    for k in range(2 * n):
        for f in families:
            sentences.extend(s for s in re.split(r"(?<=[.!?])\s+", pools[f][k].context) if s.strip())
    question = pools["qa"][0].question
    out, current = [], ""
    for s in sentences:
        current = f"{current} {s}" if current else s
        if len(lm.encode(current)) >= tokens:
            out.append(current)
            current = ""
            if len(out) == n:
                return out, question
    raise RuntimeError(f"not enough task text for {n} passages of {tokens} tokens")


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reducer", default=None, help="reducer directory (default: an untrained one)")
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--passages", type=int, default=20, help="retrieved passages per prompt")
    ap.add_argument("--tokens", type=int, default=200, help="context tokens per passage (at least)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes (after one untimed warm-up pass)")
    ap.add_argument("--rate", type=float, default=0.3, help="kept ratio")
    args = ap.parse_args()

    lm = FrozenLM.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        reducer = TokenReducer.from_pretrained(args.reducer) if args.reducer else untrained_reducer(lm, Path(tmp) / "r")
    reducer.check_compatible(lm.tokenizer, lm.spec, lm.file_hash)
    print(f"reducer processor: {reducer.config.processor}; torch threads: {torch.get_num_threads()}")
    docs, question = passages(lm, args.passages, args.tokens)
    sizes = [len(lm.encode(d)) for d in docs]
    ctx = lm.encode(DOCUMENT_SEPARATOR.join(docs))
    q = encode_question(lm.tokenizer, question)
    full_prompt, _ = lm.build_prompt(ctx, q, ())
    print(f"{len(docs)} passages of {min(sizes)}-{max(sizes)} tokens; prompt {len(full_prompt)} tokens")
    decoder, head = lm.model.get_decoder(), lm.model.get_output_embeddings()

    @torch.inference_mode()
    def prefill(ids: list[int]) -> None:
        h = decoder(input_ids=torch.tensor([ids]), use_cache=True).last_hidden_state
        head(h[:, -1])

    full_t = red_t = kept_t = 0.0
    kept_tokens = dropped = 0
    for rep in range(args.repeats + 1):  # the first pass warms up and is not timed
        t0 = time.perf_counter()
        prefill(full_prompt)
        t1 = time.perf_counter()
        res = reducer.reduce_documents(question, docs, rate=args.rate)
        t2 = time.perf_counter()
        kept_prompt, _ = lm.build_prompt(res.reduction.kept_ids, q, ())
        prefill(kept_prompt)
        t3 = time.perf_counter()
        if rep:
            full_t, red_t, kept_t = full_t + t1 - t0, red_t + t2 - t1, kept_t + t3 - t2
            kept_tokens, dropped = len(kept_prompt), len(res.dropped)
    n = args.repeats
    print(f"prompt tokens: full {len(full_prompt)}, kept {kept_tokens} (rate {args.rate}); passages dropped: {dropped}")
    print(
        f"prefill(full): {1000 * full_t / n:.1f} ms  reduce_documents: {1000 * red_t / n:.1f} ms  "
        f"prefill(kept): {1000 * kept_t / n:.1f} ms"
    )
    print(f"reduce_documents / prefill(full): {red_t / full_t:.3f}")
    print(f"speedup: {full_t / (red_t + kept_t):.2f}x")


if __name__ == "__main__":
    main()
