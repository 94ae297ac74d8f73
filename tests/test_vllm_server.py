"""Integration tests against a real vLLM server serving the embedded default model (``make test-vllm``).

``make test-vllm`` builds the vLLM venv, starts the server (``python -m envs.lm.vllm_server``) and runs this file
with ``TOKENKEEP_VLLM_URL`` set; without it every test here is skipped, so ``make test`` stays light.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.core import TokenKeepCore
from envs.lm.backends import BackendError
from envs.lm.frozen_lm import FrozenLM
from envs.lm.model_cache import DEFAULT_MODEL_SPEC
from envs.scoring import build_prompts, score_reduced
from envs.tasks.examples import encode_example
from envs.tasks.families import make_examples
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.budget import BudgetConfig
from policies.processor import ProcessorConfig
from tests.conftest import build_tiny_tokenizer, make_tiny_lm

URL = os.environ.get("TOKENKEEP_VLLM_URL", "")
MODEL = os.environ.get("TOKENKEEP_VLLM_MODEL", DEFAULT_MODEL_SPEC)
SPEC = f"vllm+{URL}?model={MODEL}"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not URL, reason="TOKENKEEP_VLLM_URL is unset (make test-vllm)")]
TASKS = "passkey:train:n=6,filler=2,kv:train:n=6,distractors=4,qa:train:n=6"


@pytest.fixture(scope="module")
def local():
    return FrozenLM.load(DEFAULT_MODEL_SPEC)


@pytest.fixture(scope="module")
def remote():
    return FrozenLM.load(SPEC)


def _step_rewards(lm, reward, n_envs=8, seed=0):
    core = TokenKeepCore(
        lm,
        TASKS,
        processor=ProcessorConfig(max_len=256),
        budget=BudgetConfig(cost_low=0.3, cost_high=0.3, default_token_cost=0.3),
        reward=reward,
    )
    venv = BatchedTokenKeepVecEnv(core, n_envs=n_envs, seed=seed)
    venv.reset()
    actions = np.random.default_rng(seed).uniform(-1, 1, (n_envs, 256))
    _, rewards, _, infos = venv.step(actions)
    return rewards, infos


@pytest.mark.parametrize("reward", ["loglik", "em", "kl"])
def test_rewards_equal_in_process(local, remote, reward):
    n = 4 if reward == "kl" else 8  # kl asks for whole-vocabulary distributions: keep the step small
    ref, ref_infos = _step_rewards(local, reward, n)
    got, infos = _step_rewards(remote, reward, n)
    assert np.abs(got - ref).max() < 1e-3, (reward, got, ref)
    assert [i["kept_tokens"] for i in infos] == [i["kept_tokens"] for i in ref_infos]
    assert any(i["kept_ratio"] < 1 for i in infos)  # the server really scored reduced prompts


def test_choice_scores_equal_in_process(local, remote):
    # evaluation of choice tasks scores the gold answer and every choice as continuations of one prompt
    encs = [encode_example(local.tokenizer, x) for x in make_examples("multihop", "heldout", 6, seed=1)]
    contexts = [e.context[: len(e.context) // 2] for e in encs]
    ref, got = (score_reduced(lm, encs, contexts) for lm in (local, remote))
    assert (got.loglik - ref.loglik).abs().max() < 1e-3, (got.loglik, ref.loglik)
    assert torch.equal(got.exact_match, ref.exact_match)
    assert got.choice_calibrated is not None and got.choice_calibrated.shape == ref.choice_calibrated.shape
    prompts, conts = build_prompts(local, encs, contexts), [list(e.choices) for e in encs]
    pairs = zip(remote.score_continuations(prompts, conts), local.score_continuations(prompts, conts), strict=True)
    for (lp, _), (ref_lp, _) in pairs:
        assert (lp - ref_lp).abs().max() < 1e-3, (lp, ref_lp)


def test_generation_matches_in_process(local, remote):
    prompt, _ = local.build_prompt(
        local.encode("The pass key is 48213. Remember it."), local.encode(" What is the pass key?")
    )
    assert remote.generate([prompt], max_new_tokens=6) == local.generate([prompt], max_new_tokens=6)


def test_smoke_training_then_eval_through_the_server(local, tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, "train.py", "--preset", "smoke", "--out", str(run), "--model.spec", SPEC]
    train += [
        "--ppo.total-timesteps",
        "128",
        "--warm-start.steps",
        "4",
        "--run.eval-freq",
        "0",
        "--run.no-progress-bar",
    ]
    out = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert (run / "final_model.zip").is_file()
    config = json.loads((run / "reducer" / "reducer_config.json").read_text())
    assert config["base_model"]["spec"] == SPEC
    report = tmp_path / "report"
    evaluate = [sys.executable, "eval.py", "--reducer", str(run / "reducer"), "--tasks", "kv:heldout:n=6,distractors=3"]
    evaluate += ["--model", SPEC, "--rates", "0.5", "--baselines", "full", "random", "--out", str(report)]
    evaluate += ["--no-progress"]
    out = subprocess.run(evaluate, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    rows = json.loads((report / "report.json").read_text())["results"]
    assert {r["method"] for r in rows} == {"tokenkeep:run", "full", "random"}
    # the same evaluation in process gives the same full-context scores
    from agents.run_eval import EvalArgs, run_eval

    tasks, out_dir = "kv:heldout:n=6,distractors=3", str(tmp_path / "local")
    run_eval(EvalArgs(tasks=tasks, out=out_dir, rates=(0.5,), baselines=("full",), progress=False), lm=local)
    ref = json.loads((tmp_path / "local" / "report.json").read_text())["results"]
    full = [next(r for r in rs if r["method"] == "full") for rs in (rows, ref)]
    assert abs(full[0]["loglik"] - full[1]["loglik"]) < 1e-3 and full[0]["em"] == full[1]["em"]


def test_server_down_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match="did not answer GET /v1/models after 2 tries: cannot connect"):
        FrozenLM.load(f"vllm+http://127.0.0.1:{port}?retries=1")
    cmd = [sys.executable, "eval.py", "--tasks", "kv:heldout:n=2", "--baselines", "full", "--out", str(tmp_path / "r")]
    out = subprocess.run(
        cmd + ["--model", f"vllm+http://127.0.0.1:{port}?retries=0"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 1 and "error: the vLLM server at http://127.0.0.1" in out.stderr, out.stderr[-2000:]


def test_wrong_model_or_tokenizer_is_refused(tmp_path):
    with pytest.raises(BackendError, match=rf"serves \['{MODEL}'\], not 'llama-70b'"):
        FrozenLM.load(f"vllm+{URL}?model=llama-70b")
    other = make_tiny_lm(build_tiny_tokenizer())
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(BackendError, match="another tokenizer"):
        FrozenLM.load(f"{SPEC}&features={tmp_path / 'other'}")
