import os
import socket
import sys
import time

import numpy as np
import pytest
import torch

from envs.core import TokenKeepCore
from envs.lm.backends import BackendError, RemoteSpec, ScoringBackend, is_remote_spec
from envs.lm.frozen_lm import FrozenLM
from envs.lm.vllm_backend import VLLMBackend
from envs.scoring import build_prompts
from envs.tasks.examples import encode_example
from envs.tasks.families import make_examples
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.budget import BudgetConfig
from policies.processor import ProcessorConfig
from tests.conftest import build_tiny_tokenizer
from tests.fake_vllm import FakeVLLM

KW = dict(
    tasks="kv:train:n=12,distractors=2",
    processor=ProcessorConfig(max_len=96),
    budget=BudgetConfig(cost_low=0.3, cost_high=0.3, default_token_cost=0.3),
)


@pytest.fixture()
def fake(tiny_lm):
    with FakeVLLM(tiny_lm.model, tiny_lm.tokenizer) as server:
        yield server


def remote_lm(tiny_lm, fake, **kw) -> FrozenLM:
    backend = VLLMBackend(fake.url, tiny_lm.tokenizer, vocab_size=tiny_lm.vocab_size, backoff=0.01, **kw)
    backend.check()
    return FrozenLM(tiny_lm.model, tiny_lm.tokenizer, spec=f"vllm+{fake.url}", backend=backend)


def _pairs(lm, n=7):
    encs = [encode_example(lm.tokenizer, ex) for ex in make_examples("qa", "train", n, seed=3)]
    return build_prompts(lm, encs), [e.answer for e in encs]


def test_remote_spec_parsing():
    s = RemoteSpec.parse("vllm+http://127.0.0.1:8000/v1?model=m&features=smollm2-135m&feature_layers=2&timeout=5")
    assert (s.url, s.model, s.features, s.feature_layers, s.timeout) == (
        "http://127.0.0.1:8000",
        "m",
        "smollm2-135m",
        2,
        5.0,
    )
    assert RemoteSpec.parse("vllm+https://h:1").url == "https://h:1"
    assert is_remote_spec("vllm+http://x:1") and not is_remote_spec("smollm2-135m")
    with pytest.raises(ValueError, match="unknown option"):
        RemoteSpec.parse("vllm+http://h:1?modle=x")
    with pytest.raises(ValueError, match="not a number"):
        RemoteSpec.parse("vllm+http://h:1?max_in_flight=many")
    with pytest.raises(ValueError, match="no host"):
        RemoteSpec.parse("vllm+http://")


def test_backends_implement_the_interface(tiny_lm, fake):
    assert isinstance(tiny_lm.backend, ScoringBackend) and not tiny_lm.remote
    lm = remote_lm(tiny_lm, fake)
    assert isinstance(lm.backend, ScoringBackend) and lm.remote
    assert "tiny-llama" in lm.backend.describe()


def test_http_scores_match_in_process(tiny_lm, fake):
    lm = remote_lm(tiny_lm, fake, max_in_flight=3)
    prompts, answers = _pairs(tiny_lm)
    # the model's own greedy continuation as an answer makes greedy_match True for some pairs
    answers[0] = tiny_lm.generate([prompts[0]], max_new_tokens=2)[0] or answers[0]
    ref = tiny_lm.score_answers(prompts, answers, return_distributions=True)
    got = lm.score_answers(prompts, answers, return_distributions=True)
    assert torch.allclose(got.logprob, ref.logprob, atol=1e-4)
    for a, b in zip(got.token_logprobs, ref.token_logprobs, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.equal(got.greedy_match, ref.greedy_match) and bool(got.greedy_match[0])
    for a, b in zip(got.answer_logprobs_full, ref.answer_logprobs_full, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    assert lm.generate(prompts[:3], max_new_tokens=4) == tiny_lm.generate(prompts[:3], max_new_tokens=4)
    assert len([c for c in fake.calls if c == "/v1/completions"]) >= 3  # the batch went out as several requests


def test_continuations_match_in_process_in_one_scoring_call(tiny_lm, fake, monkeypatch):
    lm = remote_lm(tiny_lm, fake, max_in_flight=3)
    encs = [encode_example(tiny_lm.tokenizer, x) for x in make_examples("multihop", "heldout", 4, seed=3)]
    prompts = build_prompts(tiny_lm, encs, [e.context[: len(e.context) // 2] for e in encs])
    conts = [[e.answer, *e.choices, (5, 6, 7)] for e in encs]
    conts[0][1] = tiny_lm.generate([prompts[0]], max_new_tokens=2)[0] or conts[0][1]  # a greedy hit
    ref = tiny_lm.score_continuations(prompts, conts)
    calls = []
    orig = lm.backend.score_answers
    monkeypatch.setattr(lm.backend, "score_answers", lambda *a, **k: calls.append(len(a[0])) or orig(*a, **k))
    got = lm.score_continuations(prompts, conts)
    assert calls == [sum(len(c) for c in conts)]  # every (prompt, continuation) pair in one batched call
    for (lp, greedy), (ref_lp, ref_greedy) in zip(got, ref, strict=True):
        assert torch.allclose(lp, ref_lp, atol=1e-4)
        assert torch.equal(greedy, ref_greedy)
    assert bool(got[0][1][1])
    with pytest.raises(ValueError, match="non-empty"):
        lm.score_continuations([[1, 2]], [[[]]])
    with pytest.raises(ValueError, match="continuation lists"):
        lm.score_continuations([[1, 2]], [])


def test_truncated_distributions_spread_the_rest(tiny_lm, fake):
    lm = remote_lm(tiny_lm, fake, dist_top_k=5)
    prompts, answers = _pairs(tiny_lm, 2)
    ref = tiny_lm.score_answers(prompts, answers, return_distributions=True).answer_logprobs_full
    got = lm.score_answers(prompts, answers, return_distributions=True).answer_logprobs_full
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a.exp().sum(-1), torch.ones(len(a)), atol=1e-4)  # still distributions
        top = b.argsort(-1, descending=True)[:, :5]
        assert torch.allclose(a.gather(1, top), b.gather(1, top), atol=1e-4)


def test_env_rewards_match_and_one_scoring_call_per_step(tiny_lm, fake, monkeypatch):
    lm = remote_lm(tiny_lm, fake, max_in_flight=2)
    local, remote = TokenKeepCore(tiny_lm, **KW), TokenKeepCore(lm, **KW)
    rewards = []
    for core in (local, remote):
        venv = BatchedTokenKeepVecEnv(core, n_envs=4, seed=0)
        venv.reset()
        actions = np.random.default_rng(0).uniform(-1, 1, (4, 96))
        rewards.append(venv.step(actions)[1])
    assert np.allclose(rewards[0], rewards[1], atol=1e-4)
    calls = []
    orig = lm.backend.score_answers
    monkeypatch.setattr(lm.backend, "score_answers", lambda *a, **k: calls.append(len(a[0])) or orig(*a, **k))
    venv.step(np.random.default_rng(1).uniform(-1, 1, (4, 96)))
    assert len(calls) <= 2 and calls[-1] == 4  # full-context misses (once per example), then one call for the step


def test_in_flight_requests_are_bounded(tiny_lm, fake):
    lm = remote_lm(tiny_lm, fake, max_in_flight=2)
    fake.delay = 0.1
    prompts, answers = _pairs(tiny_lm, 8)
    lm.score_answers(prompts, answers)
    assert fake.max_concurrent == 2


def test_scoring_is_retried_and_generation_is_not(tiny_lm, fake):
    lm = remote_lm(tiny_lm, fake, retries=2)
    prompts, answers = _pairs(tiny_lm, 1)  # one request, so the failures all hit it
    fake.fail_next = 2
    assert torch.allclose(
        lm.score_answers(prompts, answers).logprob, tiny_lm.score_answers(prompts, answers).logprob, atol=1e-4
    )
    fake.fail_next = 3
    with pytest.raises(BackendError, match="after 3 tries: HTTP 503"):
        lm.score_answers(prompts, answers)
    fake.fail_next = 1
    with pytest.raises(BackendError, match="not retried"):
        lm.generate(prompts, max_new_tokens=2)


def test_server_down_wrong_model_and_wrong_tokenizer(tiny_lm, fake):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    down = VLLMBackend(f"http://127.0.0.1:{port}", tiny_lm.tokenizer, retries=1, backoff=0.01)
    with pytest.raises(BackendError, match=r"did not answer GET /v1/models after 2 tries: cannot connect"):
        down.check()
    with pytest.raises(BackendError, match=r"serves \['tiny-llama'\], not 'other-model'"):
        VLLMBackend(fake.url, tiny_lm.tokenizer, model="other-model").check()
    other = build_tiny_tokenizer()
    other.add_tokens(["<extra>"], special_tokens=True)
    fake.served_tokenizer = build_tiny_tokenizer()
    fake.served_tokenizer.add_tokens(["otter"])  # tokenises "otter" differently from the local tokenizer
    with pytest.raises(BackendError, match="another tokenizer"):
        VLLMBackend(fake.url, tiny_lm.tokenizer).check("The code for otter is 1234.")


def test_load_from_a_remote_spec(tiny_lm, fake, tmp_path):
    tiny_lm.model.save_pretrained(tmp_path / "m")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "m")
    lm = FrozenLM.load(f"vllm+{fake.url}?features={tmp_path / 'm'}&feature_layers=1&max_in_flight=2")
    assert lm.remote and lm.backend.model == "tiny-llama" and lm.num_layers == 1  # only the first block loaded
    assert lm.file_hash is None and lm.spec.startswith("vllm+http://")
    prompts, answers = _pairs(tiny_lm, 3)
    assert torch.allclose(
        lm.score_answers(prompts, answers).logprob, tiny_lm.score_answers(prompts, answers).logprob, atol=1e-4
    )
    feats = lm.features([[5, 6, 7]], layer=1)[0]
    assert torch.equal(feats, tiny_lm.features([[5, 6, 7]], layer=1)[0])  # the same features as the full model's
    with pytest.raises(ValueError, match="feature layer"):
        lm.features([[5, 6]], layer=2)


FAKE_ENTRY = """
import argparse, json, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int)
ap.add_argument("--served-model-name")
args, _ = ap.parse_known_args()
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # stands for the engine process
print("engine", engine.pid, flush=True)


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": args.served_model_name}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


time.sleep(0.5)
HTTPServer(("127.0.0.1", args.port), H).serve_forever()
"""


def test_server_launcher_waits_for_the_model_and_stops_the_server_by_pid(tmp_path, monkeypatch):
    from envs.lm.vllm_server import ENTRY, VLLMServer

    pkg = tmp_path / "fakevllm"
    *parts, last = ENTRY.split(".")
    d = pkg
    for p in parts:
        d = d / p
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").write_text("")
    (d / f"{last}.py").write_text(FAKE_ENTRY)
    monkeypatch.setenv("PYTHONPATH", str(pkg))
    server = VLLMServer(sys.executable, str(tmp_path), log=tmp_path / "server.log", startup_timeout=30)
    with server:
        assert server.spec == f"vllm+{server.url}?model={tmp_path}&features={tmp_path}"
        pid = server.proc.pid
        engine = int(server.log.read_text().split("engine ")[1].split()[0])
        os.kill(engine, 0)  # alive while serving
    assert server.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # the engine process of the server's group is gone too
            os.kill(engine, 0)
            time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_spans_and_evaluation_through_the_server_match_in_process(tiny_lm, fake):
    from agents.baselines import make_baselines
    from agents.eval_batch import EvalTrace
    from agents.evaluate import evaluate

    lm = remote_lm(tiny_lm, fake, max_in_flight=2)
    encs = [encode_example(tiny_lm.tokenizer, x) for x in make_examples("qa", "heldout", 3, seed=3)]
    full = [tiny_lm.build_prompt(e.context, e.question, e.answer_prefix) for e in encs]
    prompts, spans = [p for p, _ in full], [s for _, s in full]
    conts = [[e.answer, *e.choices] for e in encs]
    conts[1], spans[2] = [], None  # a span alone, continuations alone
    ref = tiny_lm.score_continuations_and_spans(prompts, conts, spans)
    got = lm.score_continuations_and_spans(prompts, conts, spans)
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a.logprob, b.logprob, atol=1e-4) and torch.equal(a.greedy, b.greedy)
        assert (a.span_logprobs is None) == (b.span_logprobs is None)
        if a.span_logprobs is not None:
            assert torch.allclose(a.span_logprobs, b.span_logprobs, atol=1e-4)
    traces = []
    for model in (tiny_lm, lm):
        traces.append(EvalTrace())
        methods = make_baselines(["full", "head", "selective_context", "llmlingua"], model)
        evaluate(model, methods, {"qa": encs}, [0.3], n_boot=10, progress=False, trace=traces[-1])
    for key, ref_rows in traces[0].per_example.items():
        rows = traces[1].per_example[key]
        assert rows["em"] == ref_rows["em"] and rows["choice_acc"] == ref_rows["choice_acc"], key
        assert np.allclose(rows["loglik"], ref_rows["loglik"], atol=1e-4), key
