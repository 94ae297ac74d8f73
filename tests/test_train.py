import json

import pytest
import torch
from stable_baselines3 import PPO

from agents.callbacks import evaluate_policy_on_core, latest_checkpoint
from agents.config import TrainConfig, resolve_config
from agents.ppo import RunDirectoryError, build_ppo, train
from envs.core import TokenKeepCore
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.network import NetworkConfig, TokenKeepNetwork
from policies.sb3_policy import MaskedBernoulli


def smoke_config(**kw) -> TrainConfig:
    base = dict(
        model="tiny-llama",  # ignored: tests pass the fixture model
        tasks="kv:train:n=16,distractors=2",
        eval_tasks="kv:heldout:n=4,distractors=3",
        eval_examples=4,
        max_len=96,
        d_model=32,
        n_layers=1,
        n_heads=2,
        total_timesteps=64,
        n_envs=4,
        n_steps=8,
        batch_size=16,
        n_epochs=2,
        eval_freq=32,
        checkpoint_freq=32,
        progress_bar=False,
    )
    base.update(kw)
    return resolve_config("smoke", base)


def test_masked_bernoulli_ignores_unmasked_positions():
    logits = torch.randn(2, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    d = MaskedBernoulli(logits, mask)
    a = torch.tensor([[1.0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1]])
    b = a.clone()
    b[~mask] = 1 - b[~mask]  # flipping ignored positions changes nothing
    assert torch.allclose(d.log_prob(a), d.log_prob(b))
    full = torch.distributions.Bernoulli(logits=logits).log_prob(a)
    assert torch.allclose(d.log_prob(a), (full * mask).sum(-1))
    s = d.sample()
    assert (s[~mask] == 0).all()
    assert d.entropy().shape == (2,)


def test_network_is_token_level_and_length_agnostic():
    torch.manual_seed(0)
    net = TokenKeepNetwork(NetworkConfig(feature_dim=8, d_model=16, n_layers=1, n_heads=2))
    f = torch.randn(1, 10, 8)
    att = torch.ones(1, 10)
    red = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])
    cost = torch.tensor([[0.5]])
    logits, value = net(f, att, red, cost)
    assert logits.shape == (1, 10) and value.shape == (1,)
    # padding the same sequence to a longer length does not change its logits
    f2 = torch.cat([f, torch.randn(1, 5, 8)], 1)
    att2 = torch.cat([att, torch.zeros(1, 5)], 1)
    red2 = torch.cat([red, torch.zeros(1, 5, dtype=red.dtype)], 1)
    logits2, value2 = net(f2, att2, red2, cost)
    assert torch.allclose(logits, logits2[:, :10], atol=1e-5)
    assert torch.allclose(value, value2, atol=1e-5)


def test_smoke_training_leaves_checkpoint_and_logs(tiny_lm, tmp_path):
    out = tmp_path / "run"
    final = train(smoke_config(), out, lm=tiny_lm, command=["train.py", "--preset", "smoke"], export=False)
    assert final.exists()
    assert latest_checkpoint(out / "checkpoints") is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["total_timesteps"] == 64
    assert "train.py --preset smoke" in (out / "command.txt").read_text()
    history = json.loads((out / "eval_history.json").read_text())
    assert history and {"task_score", "kept_ratio", "random_task_score"} <= history[-1].keys()
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    # a finished run is never overwritten silently
    with pytest.raises(RunDirectoryError, match="finished"):
        train(smoke_config(), out, lm=tiny_lm, export=False)
    model = PPO.load(final)
    assert model.num_timesteps == 64


def test_run_dir_guards(tiny_lm, tmp_path):
    with pytest.raises(RunDirectoryError, match="nothing|no config"):
        train(smoke_config(), tmp_path / "nothing", resume=True, lm=tiny_lm, export=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(RunDirectoryError, match="not empty"):
        train(smoke_config(), tmp_path / "busy", lm=tiny_lm, export=False)


def test_resume_continues_counters(tiny_lm, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = smoke_config(total_timesteps=64, checkpoint_freq=32)
    # Interrupt after the first rollout (32 episodes) as Ctrl-C would.
    import agents.callbacks as cb

    orig = cb.AtomicCheckpointCallback._on_step

    def interrupt(self):
        keep_going = orig(self)
        if self.num_timesteps >= 32:
            raise KeyboardInterrupt
        return keep_going

    monkeypatch.setattr(cb.AtomicCheckpointCallback, "_on_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, lm=tiny_lm, export=False)
    monkeypatch.setattr(cb.AtomicCheckpointCallback, "_on_step", orig)
    ckpt = latest_checkpoint(out / "checkpoints")
    assert PPO.load(ckpt).num_timesteps == 32
    with pytest.raises(RunDirectoryError, match="resume"):
        train(cfg, out, lm=tiny_lm, export=False)
    final = train(cfg, out, resume=True, lm=tiny_lm, export=False)
    model = PPO.load(final)
    assert model.num_timesteps == 64
    # the learning-rate schedule continued rather than restarting
    assert model._current_progress_remaining == pytest.approx(0.0, abs=0.51)


def test_same_seed_same_weights(tiny_lm, tmp_path):
    a = train(smoke_config(eval_freq=0), tmp_path / "a", lm=tiny_lm, export=False)
    b = train(smoke_config(eval_freq=0), tmp_path / "b", lm=tiny_lm, export=False)
    wa, wb = PPO.load(a).policy.state_dict(), PPO.load(b).policy.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def evidence_recall(lm, encs, contexts):
    """Fraction of evidence tokens kept (1.0 for the full context): trivially learnable from token identity."""
    if contexts is None:
        return [1.0] * len(encs)
    out = []
    for e, c in zip(encs, contexts, strict=True):
        need = [t for t, k in zip(e.context, e.evidence, strict=True) if k]
        kept = list(c)
        hits = 0
        for t in need:
            if t in kept:
                kept.remove(t)
                hits += 1
        out.append(hits / len(need))
    return out


def test_policy_learns_to_beat_random_keeping(tiny_lm):
    cfg = smoke_config(
        max_len=192, total_timesteps=2048, n_envs=16, n_steps=8, batch_size=64, n_epochs=6, learning_rate=1e-3
    )
    kw = dict(max_len=192, reward=evidence_recall, token_cost=0.6)
    core = TokenKeepCore(tiny_lm, "passkey:train:n=64,filler=3", **kw)
    held = TokenKeepCore(tiny_lm, "passkey:heldout:n=32,filler=3", **kw)
    torch.manual_seed(0)
    model = build_ppo(cfg, BatchedTokenKeepVecEnv(core, n_envs=16, seed=0), None)
    model.learn(cfg.total_timesteps)
    # Ranked by keep probability at rate 0.3 (as the deployed reducer does), against random keeping at the same
    # ratio: the policy must keep far more of the evidence than chance.
    r = evaluate_policy_on_core(model.policy, held, token_cost=0.6, rate=0.3)
    assert r["kept_ratio"] == pytest.approx(0.3, abs=0.02)
    assert r["task_score"] > r["random_task_score"] + 0.25, r
