import json
import typing
from dataclasses import replace

import numpy as np
import pytest

from agents.config import PRESETS, PPOConfig, TrainCommand, TrainConfig, load_config, parse_train_command
from policies.budget import Budget, BudgetConfig, BudgetError
from policies.config_io import from_dict, to_dict
from policies.network import NetworkConfig


def test_presets_are_valid_and_listed():
    assert set(typing.get_args(typing.get_type_hints(TrainCommand)["preset"])) == set(PRESETS)
    for name, cfg in PRESETS.items():
        assert from_dict(TrainConfig, to_dict(cfg)) == cfg, name


def test_config_json_round_trip(tmp_path):
    cfg = replace(PRESETS["default"], ppo=replace(PRESETS["default"].ppo, learning_rate=1e-3, target_kl=0.05))
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "edit,msg",
    [
        (lambda d: d["ppo"].update(batch_size=7), "ppo.batch_size 7 must divide"),
        (lambda d: d["ppo"].update(n_envs="8"), r"ppo.n_envs: expected an integer"),
        (lambda d: d["budget"].update(cost_low=2.0), "budget: need 0 <= cost_low <= cost_high"),
        (lambda d: d["budget"].update(rate_high=1.5), "budget: need 0 < rate_low <= rate_high <= 1"),
        (lambda d: d["ppo"].update(group_size=3), "ppo.group_size 3 must divide"),
        (lambda d: d["network"].update(conv_kernel=4), "conv_kernel must be odd"),
        (lambda d: d["tasks"].update(reward="bleu"), r"tasks.reward: must be one of"),
        (lambda d: d["tasks"].update(eval_examples_real=0), r"tasks.eval_examples_real must be >= 1"),
        (lambda d: d.update(surprise=1), r"unknown key\(s\) \['surprise'\]"),
        (lambda d: d["run"].update(eval_rates=[0.5, 1.5]), r"eval_rates must lie in \(0, 1\]"),
    ],
)
def test_invalid_config_json_names_the_field(tmp_path, edit, msg):
    data = json.loads(PRESETS["smoke"].to_json())
    edit(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=msg) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_cli_overrides_the_chosen_preset():
    cmd = parse_train_command(["--preset", "smoke", "--out", "x", "--ppo.learning-rate", "0.01", "--resume"])
    assert cmd.resume and cmd.out == "x" and cmd.preset == "smoke"
    assert cmd.config.ppo.learning_rate == 0.01
    assert cmd.config.ppo.total_timesteps == PRESETS["smoke"].ppo.total_timesteps
    assert cmd.config.model.spec == "tiny-random"
    default = parse_train_command(["--out", "y"])
    assert default.config == PRESETS["default"]
    with pytest.raises(SystemExit):
        parse_train_command(["--out", "x", "--ppo.batch-size", "7"])  # validation runs on the CLI too


def test_budget_validation():
    with pytest.raises(BudgetError, match="not both"):
        Budget(rate=0.5, target_tokens=3)
    with pytest.raises(BudgetError, match="rate"):
        Budget(rate=0.0)
    with pytest.raises(BudgetError, match="token_cost"):
        Budget(token_cost=float("nan"))
    with pytest.raises(BudgetError, match="adaptive mode only"):
        Budget(rate=0.3, token_cost=0.5)
    assert Budget(rate=0.25).max_tokens(10) == 2 and Budget(target_tokens=50).max_tokens(10) == 10
    assert Budget().max_tokens(10) is None
    cfg = BudgetConfig(cost_low=0.2, cost_high=0.8, default_token_cost=0.4)
    assert cfg.observe(Budget(), 10).tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert cfg.observe(Budget(token_cost=0.8), 10).tolist() == pytest.approx([1.0, 0.0, 1.0])
    draws = [cfg.sample(np.random.default_rng(s)) for s in range(400)]
    assert 0.15 < np.mean([b.adaptive for b in draws]) < 0.35  # adaptive_fraction 0.25
    assert all(cfg.rate_low <= b.rate <= cfg.rate_high for b in draws if not b.adaptive)


def test_network_shape_is_defined_once():
    # the network's hyper-parameters live in NetworkConfig only: the PPO config holds none of them
    ppo_fields = set(PPOConfig.__dataclass_fields__)
    assert not ppo_fields & set(NetworkConfig.__dataclass_fields__)
    assert TrainConfig.__dataclass_fields__["network"].type in ("NetworkConfig", NetworkConfig)


def test_total_episodes_are_checked_against_a_rollout_in_episodes():
    """ppo.total_timesteps counts episodes; one rollout is n_envs * n_steps / rounds of them."""
    default = PRESETS["default"]
    episodes = default.ppo.rollout_size // default.processor.rounds
    assert replace(default, ppo=replace(default.ppo, total_timesteps=episodes)).ppo.total_timesteps == episodes
    with pytest.raises(ValueError, match=f"below one rollout: {episodes} episodes"):
        replace(default, ppo=replace(default.ppo, total_timesteps=episodes - 1))
