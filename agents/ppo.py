"""PPO training of a TokenKeep policy on the batched vec env; run directories, resume and Ctrl-C handling.

Run directory layout (``--out DIR``)::

    config.json          the resolved config
    command.txt          the exact command line
    tb/                  tensorboard logs
    checkpoints/         ckpt_<episodes>.zip (SB3 format: weights, optimiser, counters)
    final_model.zip      the trained SB3 model (its presence marks the run finished)
    eval_history.json    periodic held-out evaluations
    reducer/             the exported TokenReducer (written when training ends)
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import set_random_seed

from agents.callbacks import (
    AtomicCheckpointCallback,
    HeldoutEvalCallback,
    ReductionStatsCallback,
    latest_checkpoint,
    save_checkpoint,
)
from agents.config import TrainConfig, load_config
from envs.core import TokenKeepCore
from envs.frozen_lm import FrozenLM
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.sb3_policy import TokenKeepPolicy


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (finished run, or a run in progress without --resume)."""


def write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file in the same directory and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def linear_schedule(start: float, end_fraction: float = 0.1) -> Callable[[float], float]:
    """Learning rate decaying linearly from ``start`` to ``start * end_fraction`` over the run."""

    def schedule(progress_remaining: float) -> float:
        return start * (end_fraction + (1 - end_fraction) * progress_remaining)

    return schedule


def make_cores(config: TrainConfig, lm: FrozenLM | None = None) -> tuple[FrozenLM, TokenKeepCore, TokenKeepCore | None]:
    """Load the frozen model once and build the training and held-out cores that share it."""
    if lm is None:
        lm = FrozenLM.load(config.model, dtype=config.dtype, device=config.device)
    common = dict(
        max_len=config.max_len,
        reward=config.reward,
        feature_layer=config.feature_layer,
        too_long=config.too_long,
        task_seed=config.seed,
    )
    train_core = TokenKeepCore(
        lm,
        config.tasks,
        cost_range=(config.cost_low, config.cost_high),
        num_examples=config.num_examples,
        **common,
    )
    eval_core = None
    if config.eval_freq > 0 and config.eval_tasks:
        eval_core = TokenKeepCore(
            lm,
            config.eval_tasks,
            cost_range=(config.cost_low, config.cost_high),
            num_examples=config.eval_examples,
            **common,
        )
    return lm, train_core, eval_core


def build_ppo(config: TrainConfig, venv: BatchedTokenKeepVecEnv, tensorboard_log: str | None) -> PPO:
    """PPO with :class:`TokenKeepPolicy`; every hyperparameter comes from ``config``."""
    return PPO(
        TokenKeepPolicy,
        venv,
        learning_rate=linear_schedule(config.learning_rate),
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=1.0,  # one-step episodes: nothing to discount
        gae_lambda=1.0,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        target_kl=config.target_kl,
        normalize_advantage=True,
        tensorboard_log=tensorboard_log,
        policy_kwargs=dict(
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            conv_kernel=config.conv_kernel,
            init_keep_prob=config.init_keep_prob,
            cost_scale=config.cost_high,
        ),
        seed=config.seed,
        device=config.device,
        verbose=0,
    )


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool, command: Sequence[str] | None) -> TrainConfig:
    """Check and initialise the run directory; on resume return the run's own config.

    Raises:
        RunDirectoryError: If ``out`` holds a finished run, or a started run without ``resume``, or ``resume``
            is asked for where there is nothing to resume.
    """
    finished = (out / "final_model.zip").exists()
    started = (out / "config.json").exists()
    if finished:
        raise RunDirectoryError(f"{out} holds a finished run (final_model.zip); choose another --out")
    if resume:
        if not started or latest_checkpoint(out / "checkpoints") is None:
            raise RunDirectoryError(f"--resume: {out} has no config.json and checkpoint to resume from")
        return load_config(str(out / "config.json"))
    if started:
        raise RunDirectoryError(f"{out} already holds a run in progress; pass --resume to continue it")
    if out.exists() and any(out.iterdir()):
        raise RunDirectoryError(f"{out} exists and is not empty; choose another --out")
    write_atomic(out / "config.json", config.to_json() + "\n")
    cmd = command if command is not None else sys.argv
    write_atomic(out / "command.txt", " ".join(shlex.quote(c) for c in cmd) + "\n")
    return config


def train(
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    lm: FrozenLM | None = None,
    command: Sequence[str] | None = None,
    export: bool = True,
) -> Path:
    """Train (or resume) a PPO policy; returns the path of the final SB3 model.

    Ctrl-C saves a checkpoint and re-raises ``KeyboardInterrupt`` after telling how to resume.

    Args:
        config: The resolved config (ignored in favour of the run's own on resume).
        out: Run directory.
        resume: Continue from the latest checkpoint in ``out``.
        lm: An already loaded frozen model to use instead of loading ``config.model``.
        command: Command line to record (default ``sys.argv``).
        export: Export the TokenReducer to ``out/reducer`` at the end.

    Returns:
        Path to ``final_model.zip``.
    """
    out = Path(out)
    config = prepare_run_dir(out, config, resume, command)
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    set_random_seed(config.seed)
    lm, train_core, eval_core = make_cores(config, lm)
    venv = BatchedTokenKeepVecEnv(train_core, n_envs=config.n_envs, seed=config.seed)
    if resume:
        ckpt = latest_checkpoint(out / "checkpoints")
        model = PPO.load(ckpt, env=venv, device=config.device, tensorboard_log=str(out / "tb"))
        print(f"resuming from {ckpt} at {model.num_timesteps} episodes")
    else:
        model = build_ppo(config, venv, str(out / "tb"))
    callbacks: list = [
        ReductionStatsCallback(),
        AtomicCheckpointCallback(out / "checkpoints", config.checkpoint_freq, config.keep_checkpoints),
    ]
    evaluator = None
    if eval_core is not None:
        evaluator = HeldoutEvalCallback(eval_core, config.eval_freq, config.eval_cost)
        evaluator.last_eval = model.num_timesteps
        callbacks.append(evaluator)
    remaining = config.total_timesteps - model.num_timesteps
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=not resume,
                tb_log_name="ppo",
                progress_bar=config.progress_bar,
            )
    except KeyboardInterrupt:
        path = save_checkpoint(model, out / "checkpoints", config.keep_checkpoints)
        print(f"\ninterrupted: saved {path}; continue with: python train.py --resume --out {out}", file=sys.stderr)
        raise
    if evaluator is not None:
        if evaluator.last_eval != model.num_timesteps:
            evaluator.run_eval()
        history_path = out / "eval_history.json"
        old = json.loads(history_path.read_text()) if history_path.exists() else []
        write_atomic(history_path, json.dumps(old + evaluator.history, indent=2) + "\n")
    save_checkpoint(model, out / "checkpoints", config.keep_checkpoints)
    final = out / "final_model.zip"
    if export:
        from policies.export import export_reducer

        export_reducer(model, lm, config, out / "reducer")
    tmp = out / ".final_model.tmp.zip"
    model.save(tmp)
    os.replace(tmp, final)
    return final
