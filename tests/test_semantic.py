"""The semantic channel: the sentence encoder, its channel, the semantic prior and the reducer that ships it."""

from __future__ import annotations

import numpy as np
import pytest

from agents.baselines import SemanticSentences
from envs.tasks.examples import encode_example
from envs.tasks.specs import load_tasks
from policies.budget import Budget, BudgetConfig
from policies.lexical import CHANNELS
from policies.network import NetworkConfig, TokenKeepNetwork
from policies.processor import ProcessorConfig, process, process_batch
from policies.reducer import TokenReducer
from policies.reducer_config import ReducerError
from policies.semantic import SentenceEncoder, similarity_columns
from policies.units import segment


@pytest.fixture(scope="module")
def tiny_encoder(tiny_tokenizer):
    """A 1-layer BERT of width 16 over the tiny tokenizer's vocabulary (random weights, fixed seed)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=256,
    )  # fmt: skip
    return SentenceEncoder(BertModel(config), tiny_tokenizer, max_tokens=64, batch_tokens=256)


TEXT = "The code for otter is 1234. The grass is green today. The code for heron is 9876. Rain fell all night."


def _columns(tiny_tokenizer, encoder, texts, questions):
    items = []
    for text, q in zip(texts, questions, strict=True):
        offsets = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        items.append((text, offsets, segment(text, offsets, "sentence"), q))
    return items, similarity_columns(items, encoder)


def test_channel_is_per_sentence_in_unit_range_and_batching_does_not_change_it(tiny_tokenizer, tiny_encoder):
    texts = [TEXT, "Short one. Another sentence here.", TEXT[:40]]
    questions = ["What is the code for otter?", "Which one?", ""]
    items, cols = _columns(tiny_tokenizer, tiny_encoder, texts, questions)
    for (_, offsets, sent, _), col, q in zip(items, cols, questions, strict=True):
        assert col.shape == (len(offsets), 1) and col.dtype == np.float32
        if not q:
            assert not col.any()  # no question, no similarity
            continue
        assert (col >= 0).all() and col.max() == 1.0
        for s in np.unique(sent):  # one value per sentence
            assert len(np.unique(col[sent == s])) == 1
    # one call for three contexts gives what three calls give (one batched forward, padding masked)
    for item, col in zip(items, cols, strict=True):
        alone = similarity_columns([item], tiny_encoder)[0]
        np.testing.assert_allclose(alone, col, atol=2e-3)


def test_repeated_texts_are_encoded_once_and_keep_their_rows(tiny_encoder, monkeypatch):
    texts = ["The otter swims.", "A cat sleeps on the mat.", "The otter swims.", "Rain.", "A cat sleeps on the mat."]
    distinct = tiny_encoder.embed(["The otter swims.", "A cat sleeps on the mat.", "Rain."])
    forward = tiny_encoder.model.forward
    rows = []

    def counting_forward(input_ids, **kwargs):
        rows.append(len(input_ids))
        return forward(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(tiny_encoder.model, "forward", counting_forward)
    emb = tiny_encoder.embed(texts)
    assert sum(rows) == 3  # three distinct texts through the encoder, not five
    np.testing.assert_allclose(emb, distinct[[0, 1, 0, 2, 1]], atol=1e-6)


def test_processor_needs_the_encoder_and_places_the_channel_after_the_lexical_ones(tiny_tokenizer, tiny_encoder):
    config = ProcessorConfig(unit="sentence", semantic=True, paragraphs=True, rounds=2)
    with pytest.raises(ValueError, match="sentence encoder"):
        process(config, tiny_tokenizer, TEXT, "What is the code for otter?")
    enc = process(config, tiny_tokenizer, TEXT, "What is the code for otter?", tiny_encoder)
    without = ProcessorConfig(unit="sentence", paragraphs=True, rounds=2)
    assert enc.lexical.shape[1] == config.lexical_size == without.lexical_size + 1
    _, cols = _columns(tiny_tokenizer, tiny_encoder, [TEXT], ["What is the code for otter?"])
    np.testing.assert_array_equal(enc.lexical[:, len(CHANNELS)], cols[0][:, 0])
    both = process_batch(config, tiny_tokenizer, [TEXT, TEXT[:50]], ["What is the code for otter?", "q?"], tiny_encoder)
    np.testing.assert_allclose(both[0].lexical, enc.lexical, atol=2e-3)


def test_semantic_prior_needs_the_channel():
    with pytest.raises(ValueError, match="semantic"):
        TokenKeepNetwork(NetworkConfig(prior_scale=4.0, prior="semantic"), 8, len(CHANNELS), 3)
    with pytest.raises(ValueError, match="prior must be"):
        NetworkConfig(prior="dense")


def _semantic_reducer(tiny_lm, encoder) -> TokenReducer:
    processor = ProcessorConfig(max_len=512, unit="sentence", paragraphs=True, semantic=True)
    network = NetworkConfig(
        d_model=32, n_layers=1, n_unit_layers=1, n_heads=2, sentence_layers=1, prior_scale=4.0, prior="semantic"
    )
    return TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec="tiny", processor=processor, network=network,
        budget=BudgetConfig(ceiling=True), encoder=encoder,
    )  # fmt: skip


def test_untrained_reducer_ranks_sentences_as_the_encoder_and_ships_it(tiny_lm, tiny_encoder, tmp_path):
    """The floor with the semantic prior: an untrained network keeps what the encoder's ranking keeps."""
    reducer = _semantic_reducer(tiny_lm, tiny_encoder)
    examples = load_tasks("qa:heldout:n=8,multihop:heldout:n=8,state:heldout:n=8")
    encs = [encode_example(tiny_lm.tokenizer, ex) for ex in examples]
    contexts, questions = [e.example.context for e in encs], [e.example.question for e in encs]
    for rate in (0.2, 0.3, 0.5):
        want = SemanticSentences(tiny_encoder).keep(encs, Budget(rate=rate))
        got = reducer.reduce_batch(contexts, questions, rate=rate)
        assert all(np.array_equal(w, g.keep_mask) for w, g in zip(want, got, strict=True)), rate
    # saved with its encoder, loaded back: the same reductions
    reducer.save_pretrained(tmp_path / "r")
    assert (tmp_path / "r" / "sentence_encoder" / "model.safetensors").is_file()
    loaded = TokenReducer.from_pretrained(tmp_path / "r")
    again = loaded.reduce_batch(contexts, questions, rate=0.3)
    first = reducer.reduce_batch(contexts, questions, rate=0.3)
    assert [r.kept_ids for r in again] == [r.kept_ids for r in first]
    # an encoder swapped for other weights is refused (its SHA-256 is in reducer_config.json)
    weights = tmp_path / "r" / "sentence_encoder" / "model.safetensors"
    good = weights.read_bytes()
    reducer.encoder.model.embeddings.word_embeddings.weight.data[0, 0] += 1.0
    reducer.save_pretrained(tmp_path / "other")
    reducer.encoder.model.embeddings.word_embeddings.weight.data[0, 0] -= 1.0  # the fixture is shared
    weights.write_bytes((tmp_path / "other" / "sentence_encoder" / "model.safetensors").read_bytes())
    with pytest.raises(ReducerError, match="corrupted"):
        TokenReducer.from_pretrained(tmp_path / "r")
    weights.write_bytes(good)
    assert TokenReducer.from_pretrained(tmp_path / "r").config.encoder_sha256
    # a reducer directory whose encoder folder is gone is refused with the cause
    for f in (tmp_path / "r" / "sentence_encoder").iterdir():
        f.unlink()
    with pytest.raises(ReducerError, match="sentence encoder"):
        TokenReducer.from_pretrained(tmp_path / "r")


def test_the_shipped_encoder_finds_a_paraphrase():
    """The real all-MiniLM-L6-v2 (installed by make): the answering sentence shares no word with the question."""
    encoder = SentenceEncoder.default()
    text = "The weather was cold in March. A physician moved to Lyon to open a clinic. Prices of wheat rose again."
    offsets = encoder.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    sent = segment(text, offsets, "sentence")
    (col,) = similarity_columns([(text, offsets, sent, "Where did the doctor go to work?")], encoder)
    assert sent[int(np.argmax(col[:, 0]))] == 1  # "A physician moved to Lyon to open a clinic."
