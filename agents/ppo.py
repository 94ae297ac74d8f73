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

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
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
    write_atomic,
)
from agents.config import TrainConfig, load_config
from agents.evaluate import load_eval_tasks
from agents.export import export_reducer
from agents.warm_start import behaviour_cloning
from envs.core import TokenKeepCore
from envs.frozen_lm import FrozenLM
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.sb3_policy import TokenKeepPolicy


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (finished run, or a run in progress without --resume)."""


def linear_schedule(start: float, end_fraction: float = 0.1) -> Callable[[float], float]:
    """Learning rate decaying linearly from ``start`` to ``start * end_fraction`` over the run."""

    def schedule(progress_remaining: float) -> float:
        return start * (end_fraction + (1 - end_fraction) * progress_remaining)

    return schedule


def make_core(config: TrainConfig, lm: FrozenLM | None = None) -> TokenKeepCore:
    """The training core: the frozen model (loaded once unless given) and the training task pool."""
    if lm is None:
        lm = FrozenLM.load(config.model.spec, dtype=config.model.dtype, device=config.model.device)
    return TokenKeepCore(
        lm,
        config.tasks.train,
        processor=config.processor,
        budget=config.budget,
        reward=config.tasks.reward,
        num_examples=config.tasks.num_examples,
        task_seed=config.run.seed,
        too_long=config.tasks.too_long,
    )


def build_ppo(config: TrainConfig, venv: BatchedTokenKeepVecEnv, tensorboard_log: str | None) -> PPO:
    """PPO with :class:`TokenKeepPolicy`; every hyperparameter comes from ``config``."""
    p = config.ppo
    return PPO(
        TokenKeepPolicy,
        venv,
        learning_rate=linear_schedule(p.learning_rate),
        n_steps=p.n_steps,
        batch_size=p.batch_size,
        n_epochs=p.n_epochs,
        gamma=1.0,  # one-step episodes: nothing to discount
        gae_lambda=1.0,
        clip_range=p.clip_range,
        ent_coef=p.ent_coef,
        vf_coef=p.vf_coef,
        max_grad_norm=p.max_grad_norm,
        target_kl=p.target_kl,
        normalize_advantage=True,
        tensorboard_log=tensorboard_log,
        policy_kwargs=dict(network=config.network),
        seed=config.run.seed,
        device=config.model.device,
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
        return load_config(out / "config.json")
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
    run = config.run
    if run.torch_threads > 0:
        torch.set_num_threads(run.torch_threads)
    set_random_seed(run.seed)
    core = make_core(config, lm)
    lm = core.lm
    venv = BatchedTokenKeepVecEnv(core, n_envs=config.ppo.n_envs, seed=run.seed, group_size=config.ppo.group_size)
    if resume:
        ckpt = latest_checkpoint(out / "checkpoints")
        model = PPO.load(ckpt, env=venv, device=config.model.device, tensorboard_log=str(out / "tb"))
        print(f"resuming from {ckpt} at {model.num_timesteps} episodes")
    else:
        model = build_ppo(config, venv, str(out / "tb"))
        if config.warm_start.steps:
            from stable_baselines3.common.logger import configure

            bc_logger = configure(str(out / "tb" / "warm_start"), ["tensorboard"])
            losses = behaviour_cloning(model.policy.net, core, config.warm_start, run.seed, bc_logger)
            if losses:
                print(f"warm start: {len(losses)} steps, loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
    callbacks: list = [
        ReductionStatsCallback(),
        AtomicCheckpointCallback(out / "checkpoints", run.checkpoint_freq, run.keep_checkpoints),
    ]
    evaluator = None
    if run.eval_freq > 0 and config.tasks.heldout.strip():
        heldout = load_eval_tasks(config.tasks.heldout, lm.tokenizer, config.tasks.eval_examples, seed=run.seed)
        evaluator = HeldoutEvalCallback(
            lm, config, heldout, run.eval_freq, run.eval_heuristics, history_path=out / "eval_history.json"
        )
        evaluator.last_eval = model.num_timesteps
        callbacks.append(evaluator)
    remaining = config.ppo.total_timesteps - model.num_timesteps
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=not resume,
                tb_log_name="ppo",
                progress_bar=run.progress_bar,
            )
    except KeyboardInterrupt:
        path = save_checkpoint(model, out / "checkpoints", run.keep_checkpoints)
        print(f"\ninterrupted: saved {path}; continue with: python train.py --resume --out {out}", file=sys.stderr)
        raise
    if evaluator is not None and evaluator.last_eval != model.num_timesteps:
        evaluator.run_eval()
    save_checkpoint(model, out / "checkpoints", run.keep_checkpoints)
    final = out / "final_model.zip"
    if export:
        export_reducer(model, lm, config, out / "reducer")
    tmp = out / ".final_model.tmp.zip"
    model.save(tmp)
    os.replace(tmp, final)
    return final
