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
from policies.processor import ProcessorConfig, encode_question
from policies.reducer import ReducerError
from tests.conftest import build_tiny_tokenizer, make_tiny_lm

MAX_LEN = 128


def _config(feature_layer=0):
    return replace(
        PRESETS["smoke"],
        processor=ProcessorConfig(max_len=MAX_LEN, feature_layer=feature_layer),
        budget=BudgetConfig(cost_low=0.2, cost_high=1.0, default_token_cost=0.4),
        network=NetworkConfig(d_model=32, n_layers=1, n_heads=2),
        run=RunConfig(progress_bar=False),
    )


def _spread_keep_head(net, obs):
    """Give the keep head non-trivial weights, centred so that about half the tokens are kept."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.keep_head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
        net.keep_head[-1].bias.zero_()
        logits, _ = net({k: torch.as_tensor(v) for k, v in obs.items()})
        net.keep_head[-1].bias.fill_(-float(logits[torch.as_tensor(obs["reducible_mask"]).bool()].median()))


def _model(tiny_lm, feature_layer=0):
    cfg = _config(feature_layer)
    core = TokenKeepCore(tiny_lm, "kv:train:n=12,distractors=3", processor=cfg.processor, budget=cfg.budget)
    model = build_ppo(cfg, BatchedTokenKeepVecEnv(core, n_envs=4, seed=0), None)
    _spread_keep_head(model.policy.net, core.observe(range(len(core.pool)), [Budget()] * len(core.pool)))
    return model, core, cfg


@pytest.fixture(scope="module")
def exported(tiny_lm, tmp_path_factory):
    model, core, cfg = _model(tiny_lm)
    out = tmp_path_factory.mktemp("r") / "reducer"
    export_reducer(model, tiny_lm, cfg, out)
    return model, core, out


@pytest.mark.parametrize("feature_layer", [0, 1])
def test_parity_with_sb3_deterministic_action(tiny_lm, tmp_path, feature_layer):
    model, core, cfg = _model(tiny_lm, feature_layer)
    export_reducer(model, tiny_lm, cfg, tmp_path / "r")
    reducer = TokenReducer.from_pretrained(tmp_path / "r")
    idx = list(range(len(core.pool)))
    for cost in (0.2, 0.7):
        budgets = [Budget(token_cost=cost)] * len(idx)
        obs = core.observe(idx, budgets)
        actions, _ = model.predict(obs, deterministic=True)
        logits = reducer.keep_logits([core.pool[i].context for i in idx], [core.pool[i].question for i in idx], budgets)
        # the text API gives the same decisions from the example's text
        texts = reducer.reduce_batch(
            [core.pool[i].example.context for i in idx], [core.pool[i].example.question for i in idx], token_cost=cost
        )
        n_diff, n_kept, n_total = 0, 0, 0
        for r, i in enumerate(idx):
            q, c = len(core.pool[i].question), len(core.pool[i].context)
            sb3 = actions[r][q : q + c].astype(bool)
            n_kept, n_total = n_kept + sb3.sum(), n_total + c
            n_diff += int((sb3 != (logits[r] > 0)).sum())
            n_diff += int((sb3 != texts[r].keep_mask).sum())
        assert 0.1 < n_kept / n_total < 0.9, "the test needs mixed decisions"
        assert n_diff == 0


def test_saved_files_and_no_pickle(exported):
    _, _, out = exported
    names = {p.name for p in out.iterdir()}
    assert {"reducer_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".bin", ".zip"))]
    cfg = json.loads((out / "reducer_config.json").read_text())
    for key in ("format_version", "base_model", "tokenizer", "processor", "budget", "network", "package_version"):
        assert key in cfg
    assert cfg["budget"] == {"cost_low": 0.2, "cost_high": 1.0, "default_token_cost": 0.4}
    assert cfg["processor"] == {"max_len": MAX_LEN, "feature_layer": 0}


def test_rate_and_target_are_met_and_deterministic(exported):
    reducer = TokenReducer.from_pretrained(exported[2])
    ctx = "The code for otter is 1234. The code for heron is 9876. The grass is green."
    n = reducer.reduce(ctx).original_tokens
    for rate in (0.1, 0.3, 0.5, 0.9, 1.0):
        red = reducer.reduce(ctx, "What is the code for otter?", rate=rate)
        assert abs(red.kept_tokens - rate * n) <= 1
        assert red.kept_ratio == red.kept_tokens / n
        assert red.keep_mask.sum() == red.kept_tokens
    red = reducer.reduce(ctx, target_tokens=7)
    assert red.kept_tokens == 7
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


def test_long_context_chunking_or_error(exported):
    reducer = TokenReducer.from_pretrained(exported[2])
    long = " ".join(["The code for otter is 1234. The grass is green."] * 40)
    with pytest.raises(ReducerError, match="max_len"):
        reducer.reduce(long, "q", too_long="error")
    red = reducer.reduce(long, "q", rate=0.5)
    assert red.original_tokens > MAX_LEN and abs(red.kept_tokens - 0.5 * red.original_tokens) <= 1


def test_bad_inputs(exported, tmp_path):
    reducer = TokenReducer.from_pretrained(exported[2])
    with pytest.raises(ReducerError, match="empty"):
        reducer.reduce("")
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
    assert red.kept_tokens == round(0.5 * red.original_tokens)
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

    reducer = TokenReducer.from_pretrained(exported[2])
    path = export_onnx(reducer, tmp_path / "policy.onnx")
    sess = ort.InferenceSession(str(path))
    torch.manual_seed(0)
    f = torch.randn(2, 20, reducer.network.feature_dim)
    att = torch.ones(2, 20, dtype=torch.long)
    att[1, 15:] = 0
    red = att.clone()
    red[:, :4] = 0
    cost = torch.tensor([[0.3], [0.8]])
    feeds = {"features": f, "attention_mask": att, "reducible_mask": red, "budget": cost}
    want = reducer.network(feeds)[0].detach().numpy()
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    assert np.allclose(got[0], want[0], atol=1e-4)
    assert np.allclose(got[1, :15], want[1, :15], atol=1e-4)
