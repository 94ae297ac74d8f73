import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.config import PRESETS, RunConfig
from agents.export import export_onnx, export_reducer
from agents.ppo import build_ppo
from envs.core import TokenKeepCore
from envs.vec_env import BatchedTokenKeepVecEnv
from policies import Budget, TokenReducer
from policies.budget import BudgetConfig
from policies.network import NetworkConfig
from policies.processor import ProcessorConfig
from policies.reducer import ReducerError
from policies.tokenization import encode_question
from tests.conftest import build_tiny_tokenizer, make_tiny_lm

MAX_LEN = 128


def _config(feature_layer=0, unit="word", attention_layers=0, rounds=1, sentence_layers=0):
    return replace(
        PRESETS["smoke"],
        processor=ProcessorConfig(
            max_len=MAX_LEN, feature_layer=feature_layer, unit=unit, attention_layers=attention_layers, rounds=rounds
        ),
        budget=BudgetConfig(cost_low=0.2, cost_high=1.0, default_token_cost=0.4),
        network=NetworkConfig(d_model=32, n_layers=1, n_unit_layers=1, n_heads=2, sentence_layers=sentence_layers),
        run=RunConfig(progress_bar=False),
    )


def _spread_scores(net, obs):
    """Give the score head non-trivial weights, and centre STOP so that adaptive mode keeps about half."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [*net.score_head.parameters(), *net.stop_head.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
        scores, stop, _ = net({k: torch.as_tensor(v) for k, v in obs.items()})
        valid = torch.as_tensor(obs["unit_lengths"]) > 0
        net.stop_head[-1].bias += float(scores[valid].median() - stop.mean())


def _model(tiny_lm, feature_layer=0, unit="word", attention_layers=0, rounds=1, sentence_layers=0):
    cfg = _config(feature_layer, unit, attention_layers, rounds, sentence_layers)
    core = TokenKeepCore(tiny_lm, "kv:train:n=12,distractors=3", processor=cfg.processor, budget=cfg.budget)
    model = build_ppo(cfg, BatchedTokenKeepVecEnv(core, n_envs=4, seed=0), None)
    _spread_scores(model.policy.net, core.observe(range(len(core.pool)), [Budget()] * len(core.pool)))
    return model, core, cfg


@pytest.fixture(scope="module")
def exported(tiny_lm, tmp_path_factory):
    model, core, cfg = _model(tiny_lm)
    out = tmp_path_factory.mktemp("r") / "reducer"
    export_reducer(model, tiny_lm, cfg, out)
    return model, core, out


@pytest.mark.parametrize(
    "feature_layer,unit,attention_layers",
    [(0, "word", 0), (1, "word", 0), (0, "token", 0), (0, "sentence", 0), (0, "word", 2), (1, "sentence", 2)],
)
def test_parity_with_sb3_deterministic_action(tiny_lm, tmp_path, feature_layer, unit, attention_layers):
    model, core, cfg = _model(tiny_lm, feature_layer, unit, attention_layers)
    assert ("attention" in core.observation_space.spaces) == bool(attention_layers)
    export_reducer(model, tiny_lm, cfg, tmp_path / "r")
    reducer = TokenReducer.from_pretrained(tmp_path / "r")
    idx = list(range(len(core.pool)))
    contexts = [core.pool[i].example.context for i in idx]
    questions = [core.pool[i].example.question for i in idx]
    for budget in (Budget(rate=0.3), Budget(rate=0.6), Budget(token_cost=0.2), Budget(token_cost=0.7)):
        obs = core.observe(idx, [budget] * len(idx))
        actions, _ = model.predict(obs, deterministic=True)
        # the env's keep mask for SB3's deterministic action ...
        env_masks = [core.keep_mask(i, budget, actions[r]) for r, i in enumerate(idx)]
        # ... equals the deployed reducer's, from the example's text
        kw = {"rate": budget.rate} if budget.rate else {"token_cost": budget.token_cost}
        reductions = reducer.reduce_batch(contexts, questions, **kw)
        n_kept = sum(m.sum() for m in env_masks)
        n_total = sum(len(m) for m in env_masks)
        assert 0.1 < n_kept / n_total < 0.9, "the test needs mixed decisions"
        for m, red in zip(env_masks, reductions, strict=True):
            assert np.array_equal(m, red.keep_mask), budget


@pytest.mark.parametrize("unit", ["word", "sentence"])
def test_rounds_parity_with_the_env(tiny_lm, tmp_path, unit):
    """Two rounds: the env's probe of SB3's deterministic action, then its final keep mask, equal the reducer's."""
    model, core, cfg = _model(tiny_lm, unit=unit, rounds=2, sentence_layers=1)
    export_reducer(model, tiny_lm, cfg, tmp_path / "r")
    reducer = TokenReducer.from_pretrained(tmp_path / "r")
    assert reducer.config.processor.rounds == 2 and reducer.config.network.sentence_layers == 1
    idx = list(range(len(core.pool)))
    for budget in (Budget(rate=0.3), Budget(rate=0.6), Budget(token_cost=0.5)):
        budgets = [budget] * len(idx)
        episode = core.start(idx, budgets)  # the selection engine, as the env plays it
        first, _ = model.predict(core.observe(idx, budgets, episode), deterministic=True)
        episode.advance(list(first))
        final, _ = model.predict(core.observe(idx, budgets, episode), deterministic=True)
        env_masks = episode.keep(list(final))
        kw = {"rate": budget.rate} if budget.rate else {"token_cost": budget.token_cost}
        reductions = reducer.reduce_batch(
            [core.pool[i].example.context for i in idx], [core.pool[i].example.question for i in idx], **kw
        )
        for m, red in zip(env_masks, reductions, strict=True):
            assert np.array_equal(m, red.keep_mask), budget
    # a long context goes through both rounds window by window
    long = " ".join(core.pool[i].example.context for i in idx[:4])
    red = reducer.reduce(long, core.pool[0].example.question, rate=0.3)
    assert red.original_tokens > MAX_LEN and 0 < red.kept_tokens <= int(0.3 * red.original_tokens)


def test_saved_files_and_no_pickle(exported):
    _, _, out = exported
    names = {p.name for p in out.iterdir()}
    assert {"reducer_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".bin", ".zip"))]
    cfg = json.loads((out / "reducer_config.json").read_text())
    for key in ("format_version", "base_model", "tokenizer", "processor", "budget", "network", "package_version"):
        assert key in cfg
    assert cfg["budget"]["default_token_cost"] == 0.4 and cfg["budget"]["cost_low"] == 0.2
    processor = {"max_len": MAX_LEN, "feature_layer": 0, "unit": "word", "lexical": True, "attention_layers": 0}
    assert cfg["processor"] == {
        **processor,
        "rounds": 1,
        "probe_rate": 0.15,
        "paragraphs": False,
        "semantic": False,
        "read_len": 0,
    }


def test_rate_and_target_are_met_and_deterministic(exported):
    reducer = TokenReducer.from_pretrained(exported[2])
    ctx = "The code for otter is 1234. The code for heron is 9876. The grass is green."
    n = reducer.reduce(ctx).original_tokens
    longest_word = 6  # " 1234." is the longest word in tokens, and words are kept whole
    for rate in (0.1, 0.3, 0.5, 0.9, 1.0):
        red = reducer.reduce(ctx, "What is the code for otter?", rate=rate)
        assert red.max_tokens - longest_word < red.kept_tokens <= red.max_tokens <= rate * n
        assert red.kept_ratio == red.kept_tokens / n
        assert red.keep_mask.sum() == red.kept_tokens
    red = reducer.reduce(ctx, target_tokens=7)
    assert 7 - longest_word < red.kept_tokens <= 7
    again = reducer.reduce(ctx, target_tokens=7)
    assert again.kept_ids == red.kept_ids and again.text == red.text
    batch = reducer.reduce_batch([ctx, ctx + " Birds sing."], ["q1", "q2"], rate=0.5)
    assert len(batch) == 2 and batch[0].kept_ids == reducer.reduce(ctx, "q1", rate=0.5).kept_ids


def test_compress_prompt_has_llmlingua_keys(exported):
    reducer = TokenReducer.from_pretrained(exported[2])
    out = reducer.compress_prompt(
        ["The code for otter is 1234.", "The sky is blue."],
        instruction="Answer.",
        question="What is the code for otter?",
        rate=0.5,
    )
    assert set(out) == {"compressed_prompt", "origin_tokens", "compressed_tokens", "ratio", "rate"}
    assert out["compressed_tokens"] < out["origin_tokens"]
    assert out["ratio"] == pytest.approx(out["origin_tokens"] / out["compressed_tokens"])
    assert out["compressed_prompt"].startswith("Answer.") and out["compressed_prompt"].endswith("otter?")
    assert isinstance(out["rate"], float)
    forced = reducer.compress_prompt(
        ["The code for otter is 1234.", "The sky is blue."],
        question="What is the code for otter?",
        rate=0.5,
        force_tokens=["sky", "absent"],
    )
    assert "sky" in forced["compressed_prompt"]
    # overlapping force tokens are merged, not refused
    both = reducer.compress_prompt("Q3 revenue rose. The sky is blue.", rate=0.5, force_tokens=["Q3", "Q3 revenue"])
    assert "Q3 revenue" in both["compressed_prompt"]
    with pytest.raises(ReducerError, match="list of strings"):
        reducer.compress_prompt("The sky is blue.", force_tokens="sky")


def test_long_context_chunking_or_error(exported):
    reducer = TokenReducer.from_pretrained(exported[2])
    long = " ".join(["The code for otter is 1234. The grass is green."] * 40)
    with pytest.raises(ReducerError, match="window_len"):
        reducer.reduce(long, "q", too_long="error")
    red = reducer.reduce(long, "q", rate=0.5)
    assert red.original_tokens > MAX_LEN and abs(red.kept_tokens - 0.5 * red.original_tokens) <= 1


def test_bad_inputs(exported, tmp_path):
    reducer = TokenReducer.from_pretrained(exported[2])
    with pytest.raises(ReducerError, match="empty"):
        reducer.reduce("")
    with pytest.raises(ReducerError, match="whitespace"):
        reducer.reduce(" \n\t ", "q", rate=0.5)
    with pytest.raises(ReducerError, match="rate"):
        reducer.reduce("abc", rate=1.5)
    with pytest.raises(ReducerError, match="not both"):
        reducer.reduce("abc", rate=0.5, target_tokens=3)
    with pytest.raises(ReducerError, match="not found"):
        TokenReducer.from_pretrained(tmp_path / "nope")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupted_or_unknown_files(exported, tmp_path):
    src = exported[2]
    d = _copy(src, tmp_path / "missing")
    (d / "model.safetensors").unlink()
    with pytest.raises(ReducerError, match="model.safetensors is missing"):
        TokenReducer.from_pretrained(d)
    d = _copy(src, tmp_path / "corrupt")
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-10:] = b"\x00" * 10
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ReducerError, match="corrupted"):
        TokenReducer.from_pretrained(d)
    d = _copy(src, tmp_path / "version")
    cfg = json.loads((d / "reducer_config.json").read_text())
    cfg["format_version"] = 99
    (d / "reducer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReducerError, match="format_version 99"):
        TokenReducer.from_pretrained(d)
    d = _copy(src, tmp_path / "badjson")
    (d / "reducer_config.json").write_text("{oops")
    with pytest.raises(ReducerError, match="corrupted"):
        TokenReducer.from_pretrained(d)


def test_other_tokenizer_or_model_is_refused(exported, tiny_lm):
    reducer = TokenReducer.from_pretrained(exported[2])
    reducer.check_compatible(tiny_lm.tokenizer, tiny_lm.spec)
    other = build_tiny_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ReducerError, match="different tokenizer"):
        reducer.check_compatible(other)
    with pytest.raises(ReducerError, match="base model"):
        reducer.check_compatible(tiny_lm.tokenizer, "some-other-model")
    lm2 = make_tiny_lm(other)
    with pytest.raises(ReducerError, match="different tokenizer"):
        reducer.generate(lm2, "The code for otter is 1234.", "What is the code for otter?")


def test_generate_helper(exported, tiny_lm):
    reducer = TokenReducer.from_pretrained(exported[2])
    context, question = "The code for otter is 1234. The sky is blue.", "What is the code for otter?"
    text = reducer.generate(tiny_lm, context, question, rate=0.5, max_new_tokens=4)
    # the same as reducing, building the prompt by hand and decoding greedily with the frozen model
    red = reducer.reduce(context, question, rate=0.5)
    prompt, span = tiny_lm.build_prompt(red.kept_ids, encode_question(tiny_lm.tokenizer, question))
    assert prompt[span] == red.kept_ids and red.kept_tokens < red.original_tokens
    want = tiny_lm.decode(tiny_lm.generate([prompt], max_new_tokens=4)[0])
    assert text == want and len(tiny_lm.generate([prompt], max_new_tokens=4)[0]) > 0


def test_untrained_reducer_without_ppo(tiny_lm, tmp_path):
    reducer = TokenReducer.from_base_model(tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec)
    red = reducer.reduce("The code for otter is 1234. The sky is blue.", "Code?", rate=0.5)
    assert 0 < red.kept_tokens <= red.max_tokens == red.original_tokens // 2
    reducer.save_pretrained(tmp_path / "r")
    again = TokenReducer.from_pretrained(tmp_path / "r")
    assert again.reduce("The code for otter is 1234. The sky is blue.", "Code?", rate=0.5).kept_ids == red.kept_ids


def test_policies_exports():
    import policies

    for name in ("TokenReducer", "Reduction", "ReducerError", "Budget", "BudgetConfig", "ProcessorConfig"):
        assert hasattr(policies, name), name
    code = "from policies import TokenReducer; print(TokenReducer.__name__)"
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout == (
        "TokenReducer\n"
    )


def test_export_is_atomic(exported, tiny_lm, tmp_path, monkeypatch):
    model, _, _ = exported
    cfg = _config()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_reducer(model, tiny_lm, cfg, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    import policies.reducer_files as pr

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pr, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_reducer(model, tiny_lm, cfg, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]


def test_reducer_imports_no_trainer():
    code = (
        "import sys, policies, policies.reducer; "
        "bad = [m for m in ('stable_baselines3', 'gymnasium', 'envs', 'agents') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnx_parity(exported, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from agents.export import onnx_inputs

    reducer = TokenReducer.from_pretrained(exported[2])
    path = export_onnx(reducer, tmp_path / "policy.onnx")
    sess = ort.InferenceSession(str(path))
    net = reducer.network
    torch.manual_seed(0)
    att = torch.ones(2, 20, dtype=torch.long)
    att[1, 15:] = 0
    red = att.clone()
    red[:, :4] = 0
    units = torch.where(red.bool(), (torch.arange(20) - 4) // 3, torch.full((2, 20), -1))
    feeds = {
        "features": torch.randn(2, 20, net.feature_dim),
        "lexical": torch.rand(2, 20, net.lexical_size),
        "attention_mask": att,
        "reducible_mask": red,
        "unit_index": units,
        "budget": torch.tensor([[0.0, 0.3, 0.0], [1.0, 0.0, 0.8]]),
    }
    want_scores, want_stop, _ = net(feeds)
    got_scores, got_stop = sess.run(None, {k: feeds[k].numpy() for k in onnx_inputs(net)})
    n_units = int(units.max()) + 1
    assert np.allclose(got_scores[:, :n_units], want_scores[:, :n_units].detach().numpy(), atol=1e-4)
    assert np.allclose(got_stop, want_stop.detach().numpy(), atol=1e-4)
