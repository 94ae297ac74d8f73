"""docs/extending.md's examples run as written: a new reward and a new task family, each one registry line."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from envs import rewards
from envs.core import TokenKeepCore
from envs.lm import backends
from envs.lm.backends import RemoteSpec, is_remote_spec, remote_backend
from envs.tasks import families as task_families
from envs.tasks.specs import load_tasks
from policies.budget import Budget
from policies.processor import ProcessorConfig
from tests.fake_vllm import FakeVLLM

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def registries(monkeypatch):
    # the examples register into the live registries: give them copies the test throws away
    monkeypatch.setattr(rewards, "SCORES", dict(rewards.SCORES))
    monkeypatch.setattr(task_families, "REGISTRY", dict(task_families.REGISTRY))
    monkeypatch.setattr(backends, "REMOTE_BACKENDS", dict(backends.REMOTE_BACKENDS))


def test_the_docs_reward_and_family_work_end_to_end(tiny_lm, registries):
    reward_code, family_code, _ = _blocks()
    exec(compile(reward_code, f"{DOC}:reward", "exec"), {})
    exec(compile(family_code, f"{DOC}:family", "exec"), {})
    examples = load_tasks("colour:heldout:n=6")
    assert len(examples) == 6 and all(e.family == "colour:heldout" for e in examples)
    for e in examples:  # the evidence span is the asked thing's fact, which holds the answer
        ((s, t),) = e.evidence
        assert e.answer.strip() in e.context[s:t] and e.question.split()[-1].rstrip("?") in e.context[s:t]
    core = TokenKeepCore(tiny_lm, "colour:train:n=4", processor=ProcessorConfig(max_len=96), reward="answer_prob")
    assert type(core.score).__name__ == "AnswerProbScore"
    res = core.step_batch([0, 1], [Budget(rate=0.5)] * 2, [np.zeros(96, np.float32)] * 2)
    full = [info["full_score"] for info in res.infos]
    assert all(0 < f <= 1 for f in full)  # a probability
    assert np.allclose(res.rewards, [i["task_score"] - i["full_score"] for i in res.infos], atol=1e-6)  # relative


def test_the_docs_backend_connects_by_its_spec_and_scores(tiny_lm, registries, monkeypatch):
    exec(compile(_blocks()[2], f"{DOC}:backend", "exec"), {})
    monkeypatch.setenv("TOKENKEEP_API_KEY", "k3y")
    with FakeVLLM(tiny_lm.model, tiny_lm.tokenizer) as server:
        spec = f"vllm-gateway+{server.url}?timeout=10"
        assert is_remote_spec(spec)
        parsed = RemoteSpec.parse(spec)
        assert (parsed.backend, parsed.url) == ("vllm-gateway", server.url)
        backend = remote_backend(parsed.backend).connect(parsed, tiny_lm.tokenizer, vocab_size=tiny_lm.vocab_size)
        prompts, answers = [[5, 6, 7, 8]], [[9, 10]]
        got = backend.score_answers(prompts, answers).token_logprobs[0]
        want = tiny_lm.backend.score_answers(prompts, answers).token_logprobs[0]
        assert torch.allclose(got, want, atol=1e-3)
        assert backend._session().headers["Authorization"] == "Bearer k3y"
