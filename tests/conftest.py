"""Shared fixtures: a tiny randomly initialised Llama model and a byte-level BPE tokenizer, built offline."""

from __future__ import annotations

import pytest
import torch

from envs.lm.frozen_lm import FrozenLM
from envs.tasks.families import FAMILIES, make_examples


def build_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained in memory on text from every task family and split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for family in FAMILIES:
        for split in ("train", "heldout"):
            for ex in make_examples(family, split, 30, seed=123):
                texts.append(f"{ex.context} {ex.question} {ex.answer_prefix}{ex.answer}")
    texts.append("Read the text and answer the question with a short answer. Text: Question: Answer:")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Session-wide tiny tokenizer."""
    return build_tiny_tokenizer()


def make_tiny_lm(tokenizer, seed: int = 0, layers: int = 2) -> FrozenLM:
    """A 2-layer Llama with hidden size 32 over ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return FrozenLM(model, tokenizer, spec="tiny-llama")


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer) -> FrozenLM:
    """A session-wide tiny frozen model (float32)."""
    return make_tiny_lm(tiny_tokenizer)
