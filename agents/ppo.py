"""PPO training of a TokenKeep policy on the batched vec env: set-up, warm start, resume and the training loop.

Algorithm map (where each piece of the learning lives):

* reward: task score relative to the full context, minus the token cost: ``envs.rewards`` (``task_gain``,
  ``episode_reward``; the scores in ``SCORES``);
* group baseline: RLOO centring within groups that share an example and a budget: ``envs.vec_env``
  (``BatchedTokenKeepVecEnv``); dense per-unit credit: ``envs.credit.unit_credits``, learnt by
  ``agents.credit_ppo.CreditPPO``;
* ranking log-probability: ``policies.ranking.RankingDistribution.log_prob`` (the picks that decide what is kept);
* warm-start loss: ``agents.warm_start`` (``behaviour_cloning``, ``_clone_loss``, ``_rounds_loss``).

The run directory (layout, lock, resume rules) is :mod:`agents.run_dir`; checkpoints that resume exactly are
:mod:`agents.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
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

from agents.callbacks import HeldoutEvalCallback, ReductionStatsCallback
from agents.checkpoints import (
    CheckpointCallback,
    latest_checkpoint,
    load_rng,
    remove_partial_writes,
    restore_rng,
    save_checkpoint,
    write_atomic,
    write_progress,
)
from agents.config import TrainConfig, WarmStartConfig
from agents.credit_ppo import CreditPPO
from agents.eval_metrics import machine_info
from agents.evaluate import load_eval_tasks
from agents.export import export_reducer
from agents.run_dir import RunLock, abandon_start, check_run_path, prepare_run_dir
from agents.warm_start import behaviour_cloning
from envs.core import TokenKeepCore
from envs.lm.frozen_lm import FrozenLM
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.sb3_policy import TokenKeepPolicy


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


def algorithm(config: TrainConfig) -> type[PPO]:
    """SB3's PPO, or :class:`~agents.credit_ppo.CreditPPO` with ``ppo.credit`` ``dense``."""
    return CreditPPO if config.ppo.credit == "dense" else PPO


def build_ppo(config: TrainConfig, venv: BatchedTokenKeepVecEnv, tensorboard_log: str | None) -> PPO:
    """PPO with :class:`TokenKeepPolicy`; every hyperparameter comes from ``config``."""
    p = config.ppo
    return algorithm(config)(
        TokenKeepPolicy,
        venv,
        learning_rate=linear_schedule(p.learning_rate),
        n_steps=p.n_steps,
        batch_size=p.batch_size,
        n_epochs=p.n_epochs,
        gamma=1.0,  # short episodes (one step per round) scored at the end: nothing to discount
        gae_lambda=1.0,
        clip_range=p.clip_range,
        ent_coef=p.ent_coef,
        vf_coef=p.vf_coef,
        max_grad_norm=p.max_grad_norm,
        target_kl=p.target_kl,
        normalize_advantage=True,
        tensorboard_log=tensorboard_log,
        policy_kwargs=dict(network=config.network, exploration=p.exploration),
        seed=config.run.seed,
        device=config.model.device,
        verbose=0,
        **({"anchor": p.anchor} if p.credit == "dense" else {}),
    )


def _init_from_file(path: str | os.PathLike[str]) -> Path:
    """``warm_start.init_from`` as a path; ValueError unless it is a file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"warm_start.init_from: {path} is not a file (a checkpoint such as checkpoints/ckpt_*.zip)")
    return path


def unused_warm_start_settings(ws: WarmStartConfig) -> list[str]:
    """The warm-start settings that differ from their defaults and that ``init_from`` leaves unused, as ``name=value``.

    With ``init_from`` no warm start runs: a preset's ``steps`` or a user's ``family_weights`` would otherwise be
    silently ignored.
    """
    default = WarmStartConfig()
    return [
        f"{f.name}={getattr(ws, f.name)}"
        for f in dataclasses.fields(ws)
        if f.name != "init_from" and getattr(ws, f.name) != getattr(default, f.name)
    ]


def load_policy_weights(model: PPO, path: str | os.PathLike[str]) -> None:
    """Start ``model`` from the policy saved in the checkpoint ``path`` (``warm_start.init_from``).

    Raises:
        ValueError: If ``path`` is not a readable SB3 checkpoint, or its policy's network differs from the config's.
    """
    from stable_baselines3.common.save_util import load_from_zip_file

    path = _init_from_file(path)
    try:
        _, params, _ = load_from_zip_file(path, device=model.device, load_data=False)
    except Exception as err:  # zipfile, pickle and torch raise different errors for a file that is no checkpoint
        raise ValueError(f"warm_start.init_from: {path} is not a stable-baselines3 checkpoint ({err})") from err
    if not params or "policy" not in params:
        raise ValueError(f"warm_start.init_from: {path} holds no policy weights")
    try:
        model.policy.load_state_dict(params["policy"])
    except RuntimeError as err:
        raise ValueError(
            f"warm_start.init_from: the policy in {path} does not fit this run's network config (its network "
            f"options must be the ones the checkpoint was trained with): {str(err).splitlines()[0]}"
        ) from err


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

    Holds the run directory's lock throughout. Ctrl-C (or a kill) loses at most the episodes since the last
    checkpoint; ``--resume`` then continues exactly as an uninterrupted run would have. A fresh start that raises
    before its first checkpoint removes what it wrote (:func:`agents.run_dir.abandon_start`).

    Args:
        config: The resolved config (ignored in favour of the run's own on resume).
        out: Run directory.
        resume: Continue from the latest checkpoint in ``out`` (from the start if it has none yet).
        lm: An already loaded frozen model to use instead of loading ``config.model``.
        command: Command line to record (default ``sys.argv``).
        export: Export the TokenReducer to ``out/reducer`` at the end.

    Returns:
        Path to ``final_model.zip``.

    Raises:
        RunDirectoryError: If the run directory cannot be used as asked (see :mod:`agents.run_dir`).
    """
    out = Path(out)
    check_run_path(out, resume)  # before the lock creates the directory
    existed = out.exists()
    lock = RunLock(out)
    lock.acquire()  # creates the directory
    fresh = not resume and not (out / "config.json").exists()
    try:
        return _train(config, out, resume=resume, lm=lm, command=command, export=export)
    except Exception:
        if fresh:
            # a start that failed before its first checkpoint (a missing model, a bad task spec) trained
            # nothing: leave the directory as it was, not holding a config that --resume would reuse
            abandon_start(out, existed)
        raise
    finally:
        lock.release()


def _train(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool,
    lm: FrozenLM | None,
    command: Sequence[str] | None,
    export: bool,
) -> Path:
    if config.warm_start.init_from and not resume:
        _init_from_file(config.warm_start.init_from)  # before the frozen model loads: fail in seconds
    config = prepare_run_dir(out, config, resume, command)
    remove_partial_writes(out)  # what a killed predecessor was writing; never read
    run = config.run
    if run.torch_threads > 0:
        torch.set_num_threads(run.torch_threads)
    if not resume or not (out / "machine.json").exists():
        # float results (and so a warm start's outcome) change with the thread count: say what this run had
        write_atomic(out / "machine.json", json.dumps(machine_info(), indent=2) + "\n")
    set_random_seed(run.seed)
    core = make_core(config, lm)
    lm = core.lm
    rounds = config.processor.rounds  # env steps per episode; SB3 counts steps, the config episodes
    venv = BatchedTokenKeepVecEnv(
        core,
        n_envs=config.ppo.n_envs,
        seed=run.seed,
        group_size=config.ppo.group_size,
        credit=config.ppo.credit,
        credit_candidates=config.ppo.credit_candidates,
    )
    ckpt = latest_checkpoint(out / "checkpoints") if resume else None
    if ckpt is not None:
        model = algorithm(config).load(ckpt, env=venv, device=config.model.device, tensorboard_log=str(out / "tb"))
        state = load_rng(ckpt)
        if state is None:
            print(f"{ckpt} has no saved random state: the run continues, but not exactly as it would have")
        else:
            restore_rng(state, venv)
        print(f"resuming from {ckpt} at {model.num_timesteps // rounds} episodes")
    else:
        model = build_ppo(config, venv, str(out / "tb"))
        if config.warm_start.init_from:
            load_policy_weights(model, config.warm_start.init_from)
            print(f"warm start: the policy of {config.warm_start.init_from}")
            unused = unused_warm_start_settings(config.warm_start)
            if unused:
                print(f"warm start: not run, so these settings are not used: {', '.join(unused)}")
        elif config.warm_start.steps:
            from stable_baselines3.common.logger import configure

            bc_logger = configure(str(out / "tb" / "warm_start"), ["tensorboard"])
            losses = behaviour_cloning(
                model.policy.net, core, config.warm_start, run.seed, bc_logger, progress=run.progress_bar
            )
            if losses:
                print(f"warm start: {len(losses)} steps, loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
    callbacks: list = [
        ReductionStatsCallback(),
        CheckpointCallback(
            out / "checkpoints",
            run.checkpoint_freq,
            run.keep_checkpoints,
            venv,
            progress_path=out / "progress.json",
            steps_per_episode=rounds,
        ),
    ]
    evaluator = None
    if run.eval_freq > 0 and config.tasks.heldout.strip():
        heldout = load_eval_tasks(
            config.tasks.heldout,
            lm.tokenizer,
            config.tasks.eval_examples,
            seed=run.seed,
            n_real=config.tasks.eval_examples_real,
        )
        evaluator = HeldoutEvalCallback(
            lm,
            config,
            heldout,
            run.eval_freq,
            run.eval_heuristics,
            history_path=out / "eval_history.json",
            steps_per_episode=rounds,
            encoder=core.encoder,
        )
        evaluator.last_eval = model.num_timesteps
        callbacks.append(evaluator)
    remaining = config.ppo.total_timesteps * rounds - model.num_timesteps
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=ckpt is None,
                tb_log_name="ppo",
                progress_bar=run.progress_bar,
            )
    except KeyboardInterrupt:
        last = latest_checkpoint(out / "checkpoints")
        where = f"the checkpoint at {int(last.stem.split('_')[1]) // rounds} episodes" if last else "the start"
        q = shlex.quote(str(out))
        hint = f"python train.py --resume --out {q} (or tokenkeep train --resume --out {q})"
        print(f"\ninterrupted: continue from {where} with: {hint}", file=sys.stderr)
        raise
    if evaluator is not None and evaluator.last_eval != model.num_timesteps:
        evaluator.run_eval()
    save_checkpoint(model, out / "checkpoints", run.keep_checkpoints, venv)
    write_progress(out / "progress.json", model.num_timesteps // rounds, "export")
    if export:
        reducer_dir = out / "reducer"
        if reducer_dir.exists():  # left by a run killed after its export: the new export replaces it
            import shutil

            shutil.rmtree(reducer_dir)
        export_reducer(model, lm, config, reducer_dir, encoder=core.encoder)
    final = out / "final_model.zip"
    tmp = out / ".final_model.tmp.zip"
    model.save(tmp)
    os.replace(tmp, final)
    write_progress(out / "progress.json", model.num_timesteps // rounds, "done")
    return final
