"""Typed training configuration, presets and the command-line parser built from them.

A config is a preset plus command-line overrides: ``python train.py --preset default --total-timesteps 4096``.
Every field's help text is its docstring-like ``help`` metadata, so ``--help`` documents every option.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any


def _f(default: Any, help: str) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs; serialised to ``config.json`` in the run directory."""

    # model and tasks
    model: str = _f("smollm2-135m", "frozen model spec: smollm2-135m, tiny-random, a .gguf path, a directory or hub id")
    dtype: str = _f("float32", "frozen model dtype (float32, bfloat16, float16)")
    tasks: str = _f("passkey:train,kv:train,qa:train", "training task spec (see envs/tasks.py)")
    eval_tasks: str = _f("passkey:heldout,kv:heldout,qa:heldout", "held-out task spec for periodic evaluation")
    num_examples: int = _f(256, "examples per synthetic training task spec (the pool episodes are drawn from)")
    eval_examples: int = _f(16, "examples per held-out task spec in periodic evaluation")
    max_len: int = _f(256, "observation length: question + context tokens")
    too_long: str = _f("error", "contexts longer than max_len: 'error' or 'skip'")
    feature_layer: int = _f(0, "frozen-model layer whose hidden states are the token features (0 = embeddings)")
    reward: str = _f("loglik", "task score in the reward: loglik, em or kl")
    cost_low: float = _f(0.2, "lowest token cost drawn per episode (budget conditioning)")
    cost_high: float = _f(1.0, "highest token cost drawn per episode")
    eval_cost: float = _f(0.5, "token cost the periodic evaluation asks for")
    # policy
    d_model: int = _f(128, "policy encoder width")
    n_layers: int = _f(2, "policy transformer layers")
    n_heads: int = _f(4, "policy attention heads")
    conv_kernel: int = _f(5, "policy local convolution kernel (odd)")
    init_keep_prob: float = _f(0.7, "initial keep probability of every token")
    # PPO
    total_timesteps: int = _f(4096, "episodes to train for (one step per episode)")
    n_envs: int = _f(8, "parallel episodes per vec-env step (one frozen-model forward)")
    n_steps: int = _f(16, "vec-env steps per rollout (rollout = n_envs * n_steps episodes)")
    batch_size: int = _f(64, "PPO minibatch size")
    n_epochs: int = _f(4, "PPO epochs per rollout")
    learning_rate: float = _f(3e-4, "Adam learning rate (linearly decayed to 10% over the run)")
    clip_range: float = _f(0.2, "PPO clip range")
    ent_coef: float = _f(0.0, "entropy bonus (entropy is per reducible token)")
    vf_coef: float = _f(0.5, "value loss weight")
    max_grad_norm: float = _f(0.5, "gradient clipping norm")
    target_kl: float | None = _f(None, "stop an update's epochs early above this approx KL (None = off)")
    # run
    seed: int = _f(0, "random seed (policy init, episode sampling, task generation)")
    eval_freq: int = _f(1024, "evaluate on the held-out split every this many episodes (0 = off)")
    checkpoint_freq: int = _f(1024, "checkpoint every this many episodes")
    keep_checkpoints: int = _f(3, "how many recent checkpoints to keep")
    torch_threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    device: str = _f("cpu", "device for the frozen model and the policy")
    progress_bar: bool = _f(True, "show a progress bar")

    @property
    def rollout_size(self) -> int:
        """Episodes per PPO rollout."""
        return self.n_envs * self.n_steps

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        if self.cost_low < 0 or self.cost_high < self.cost_low:
            raise ValueError(f"need 0 <= cost_low <= cost_high, got {self.cost_low}, {self.cost_high}")
        if self.rollout_size % self.batch_size:
            raise ValueError(f"batch_size {self.batch_size} must divide n_envs * n_steps = {self.rollout_size}")
        if self.total_timesteps < self.rollout_size:
            raise ValueError(f"total_timesteps {self.total_timesteps} is below one rollout ({self.rollout_size})")
        if self.too_long not in ("error", "skip"):
            raise ValueError(f"too_long must be 'error' or 'skip', got {self.too_long!r}")
        if self.reward not in ("loglik", "em", "kl"):
            raise ValueError(f"reward must be loglik, em or kl, got {self.reward!r}")

    def to_json(self) -> str:
        """Pretty JSON of every field."""
        return json.dumps(dataclasses.asdict(self), indent=2)


PRESETS: dict[str, dict[str, Any]] = {
    # A tiny random model over the default tokenizer: exercises the whole pipeline in well under a minute.
    "smoke": dict(
        model="tiny-random",
        tasks="passkey:train:n=32,kv:train:n=32",
        eval_tasks="passkey:heldout:n=8,kv:heldout:n=8",
        eval_examples=8,
        d_model=32,
        n_layers=1,
        n_heads=2,
        total_timesteps=256,
        n_envs=8,
        n_steps=8,
        batch_size=32,
        n_epochs=2,
        eval_freq=128,
        checkpoint_freq=128,
    ),
    # The real run: SmolLM2-135M on CPU, sized to finish in about 20 minutes on 2 cores.
    "default": dict(
        model="smollm2-135m",
        tasks="passkey:train:filler=3,kv:train:distractors=6",
        eval_tasks="passkey:heldout,kv:heldout",
        num_examples=96,
        eval_examples=16,
        total_timesteps=2048,
        n_envs=16,
        n_steps=8,
        batch_size=64,
        n_epochs=8,
        learning_rate=5e-4,
        eval_freq=1024,
        checkpoint_freq=512,
    ),
}


def _parse_value(kind: Any, text: str) -> Any:
    kind = str(kind)
    if text.lower() == "none" and "None" in kind:
        return None
    if "bool" in kind:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")
    if "int" in kind and "float" not in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--field-name`` option per :class:`TrainConfig` field (default: the preset's value)."""
    group = parser.add_argument_group("config overrides (default: the preset's value)")
    for f in fields(TrainConfig):
        base = TrainConfig.__dataclass_fields__[f.name].default
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            type=lambda s, k=f.type: _parse_value(k, s),
            metavar=type(base).__name__.upper() if base is not None else "VALUE",
            help=f"{f.metadata['help']} [base: {base}]".replace("%", "%%"),
        )


def resolve_config(preset: str, overrides: dict[str, Any]) -> TrainConfig:
    """A preset with overrides applied (None values are ignored) and validated.

    Raises:
        ValueError: On an unknown preset or invalid settings.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**values)
    config.validate()
    return config


def load_config(path: str) -> TrainConfig:
    """Read a ``config.json`` written by a run."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in known})
