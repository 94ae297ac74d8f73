import json
from dataclasses import replace

import pytest

from agents.baselines import ReducerMethod
from agents.config import PRESETS, RunConfig
from agents.export import export_reducer
from agents.ppo import build_ppo
from agents.run_eval import EvalArgs, run_eval
from envs.core import TokenKeepCore
from envs.tasks.examples import encode_example
from envs.tasks.families import make_examples
from envs.vec_env import BatchedTokenKeepVecEnv
from policies import Budget, TokenReducer
from policies.network import NetworkConfig
from policies.processor import ProcessorConfig
from policies.reducer import ReducerError
from policies.retokenize import project_keep, retokenize
from policies.tokenization import encode_question
from tests.conftest import build_tiny_tokenizer, make_tiny_lm


@pytest.fixture(scope="module")
def reducer_a(tiny_lm, tmp_path_factory):
    """An (untrained) reducer exported for the tiny model's tokenizer A."""
    cfg = replace(
        PRESETS["smoke"],
        processor=ProcessorConfig(max_len=128),
        network=NetworkConfig(d_model=32, n_layers=1, n_unit_layers=1, n_heads=2),
        run=RunConfig(progress_bar=False),
    )
    core = TokenKeepCore(tiny_lm, "kv:train:n=8,distractors=2", processor=cfg.processor, budget=cfg.budget)
    model = build_ppo(cfg, BatchedTokenKeepVecEnv(core, n_envs=4, seed=0), None)
    out = tmp_path_factory.mktemp("r") / "reducer"
    export_reducer(model, tiny_lm, cfg, out)
    return out


@pytest.fixture(scope="module")
def lm_b():
    """A frozen model with another tokenizer B (a smaller BPE vocabulary: other merges)."""
    return make_tiny_lm(build_tiny_tokenizer(vocab_size=260), seed=1)


def test_project_keep_counts_a_token_kept_when_half_its_characters_are():
    src, keep = [(0, 3), (3, 6), (6, 9)], [True, False, True]
    dst = [(0, 2), (2, 4), (4, 6), (6, 9), (9, 9)]
    assert project_keep(src, keep, dst).tolist() == [True, True, False, True, False]


def test_tokenizers_really_differ(tiny_lm, lm_b):
    text = "The code for otter is 1234."
    assert tiny_lm.encode(text) != lm_b.encode(text)
    assert lm_b.decode(lm_b.encode(text)) == text


def test_generate_retokenizes_for_another_model(reducer_a, lm_b):
    reducer = TokenReducer.from_pretrained(reducer_a)
    context, question = (
        "The code for otter is 1234. The sky is blue. Owls hoot at night.",
        "What is the code for otter?",
    )
    with pytest.raises(ReducerError, match="retokenize"):
        reducer.generate(lm_b, context, question, rate=0.5)
    text = reducer.generate(lm_b, context, question, rate=0.5, max_new_tokens=4, retokenize=True)
    red = reducer.reduce(context, question, rate=0.5)
    kept_b = retokenize(red.text, lm_b.tokenizer)
    assert lm_b.decode(kept_b) == red.text  # the kept text crosses over intact, in B's tokens
    prompt, _ = lm_b.build_prompt(kept_b, encode_question(lm_b.tokenizer, question))
    assert text == lm_b.decode(lm_b.generate([prompt], max_new_tokens=4)[0])


def test_eval_scores_the_kept_text_in_the_serving_models_tokens(reducer_a, tiny_lm, lm_b, tmp_path):
    reducer = TokenReducer.from_pretrained(reducer_a)
    encs = [encode_example(lm_b.tokenizer, ex) for ex in make_examples("kv", "heldout", 4, seed=2, distractors=2)]
    method = ReducerMethod(reducer, "r", retokenize_with=lm_b.tokenizer)
    masks, contexts = method.reduce(encs, Budget(rate=0.5))
    reds = reducer.reduce_batch([e.example.context for e in encs], [e.example.question for e in encs], rate=0.5)
    for e, m, c, red in zip(encs, masks, contexts, reds, strict=True):
        assert c == retokenize(red.text, lm_b.tokenizer) and len(m) == len(e.context)
        assert 0.3 < m.mean() < 0.7 and 0.3 < len(c) / len(e.context) < 0.7
    with pytest.raises(ValueError, match="share a tokenizer"):
        ReducerMethod(reducer, "r").reduce(encs, Budget(rate=0.5))
    base = dict(tasks="kv:heldout:n=4,distractors=2", reducer=(str(reducer_a),), baselines=("full",), rates=(0.5,))
    with pytest.raises(ReducerError, match="different tokenizer"):
        run_eval(EvalArgs(out=str(tmp_path / "no"), progress=False, **base), lm=lm_b)
    table = run_eval(EvalArgs(out=str(tmp_path / "yes"), retokenize=True, progress=False, **base), lm=lm_b)
    name = f"tokenkeep:{reducer_a.parent.name} (re-tokenized)"
    assert name in table
    rows = json.loads((tmp_path / "yes" / "report.json").read_text())["results"]
    row = next(r for r in rows if r["method"] == name)
    assert 0.3 < row["kept_ratio"] < 0.7 and row["tokens_out"] < row["tokens_in"]
    # the same tokenizer needs no re-tokenization: the method keeps its plain name
    assert "re-tokenized" not in run_eval(EvalArgs(out=str(tmp_path / "a"), progress=False, **base), lm=tiny_lm)
