"""Signal-to-noise of one PPO update's policy gradient at a checkpoint (issue 25: is the reward teaching?).

Collects ``--rollouts`` rollouts with the run's own vec env and PPO (groups of G envs play one example under one
budget, rewards centred within the group), and takes, for every episode group j, the gradient of
``sum A * log pi(a | s)`` over the group's steps: PPO's clipped surrogate has this gradient in its first epoch,
where every ratio is 1 (advantages as PPO computes them, gamma = lambda = 1, before its per-minibatch scaling).
Over n groups:

    signal = |E g|^2, estimated without bias as (|sum_j g_j|^2 - sum_j |g_j|^2) / (n (n - 1))
    noise  = E |g - E g|^2, the variance of one group's gradient
    an update averages m groups (one rollout: n_envs * n_steps / rounds / G), so its SNR = signal / (noise / m)

and prints the SNR, the cosine an update's gradient is expected to have with the true one
(sqrt(SNR / (1 + SNR))) and how many groups would give an SNR of 1. A negative signal estimate means the signal
is below what n groups can resolve (the SNR is then reported as < the bound from the estimate's spread).

With ``--credit dense`` (:class:`agents.credit_ppo.CreditPPO`) episodes play the deterministic selection and each
scored episode's gradient is that of its expected swap credit in the first epoch; a "group" is then one episode
and one update averages a rollout's episodes. ``credit cost`` prints the frozen-model prompts per group or
episode, against 1 per episode for the episode's own score.

Usage:
    python bench/gradient_snr.py --checkpoint runs/default/checkpoints/ckpt_000000000.zip [--rollouts 5]
        [--reward choice] [--credit counterfactual|dense] [--exploration swap] [--last-round]
        [--tasks multihop3:train,before:train]

The checkpoint's run directory gives the config (its ``config.json``); the step-0 checkpoint is the warm-started
policy PPO starts from.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from stable_baselines3 import PPO

from agents.config import load_config
from agents.credit_ppo import CreditPPO, swap_objective
from agents.export import resolve_checkpoint
from agents.ppo import algorithm, make_core
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.ranking import swap_probabilities


def group_gradients(model: PPO, rounds: int, group_size: int, last_round: bool = False) -> list[torch.Tensor]:
    """One flattened policy-gradient vector per episode group of the model's filled rollout buffer.

    ``last_round``: only the last round's terms (what deterministic probe rounds would leave of the gradient).
    """
    buf = model.rollout_buffer
    n_steps, n_envs = buf.advantages.shape
    params = [p for p in model.policy.parameters() if p.requires_grad]
    out = []
    for slot in range(n_steps // rounds):
        for g in range(n_envs // group_size):
            steps = np.arange(slot * rounds + (rounds - 1 if last_round else 0), (slot + 1) * rounds)
            envs = np.arange(g * group_size, (g + 1) * group_size)
            t, e = np.meshgrid(steps, envs, indexing="ij")
            obs = {k: torch.as_tensor(v[t.ravel(), e.ravel()]) for k, v in buf.observations.items()}
            actions = torch.as_tensor(buf.actions[t.ravel(), e.ravel()])
            adv = torch.as_tensor(buf.advantages[t.ravel(), e.ravel()], dtype=torch.float32)
            _, log_prob, _ = model.policy.evaluate_actions(obs, actions)
            grads = torch.autograd.grad((adv * log_prob).sum(), params, allow_unused=True)
            flat = [(d if d is not None else torch.zeros_like(p)).ravel() for d, p in zip(grads, params, strict=True)]
            out.append(torch.cat(flat))
    return out


def dense_gradients(model: CreditPPO) -> list[torch.Tensor]:
    """One flattened gradient per scored episode of :class:`CreditPPO`'s objective in its first epoch (ratio 1)."""
    data = model.rollout_credit()
    params = [p for p in model.policy.parameters() if p.requires_grad]
    out = []
    for r in range(len(data["kept"])):
        scores, valid, _ = model._scores(data["obs"], np.array([r]))
        kept = torch.as_tensor(data["kept"][r : r + 1]) & valid
        credit = torch.as_tensor(data["credit"][r : r + 1])
        old = tuple(p.detach() for p in swap_probabilities(scores, valid, kept))
        adv = model.advantages(kept, credit, old)
        obj, _ = swap_objective(scores, valid, kept, adv, old, clip_range=0.2)
        grads = torch.autograd.grad(obj.sum(), params, allow_unused=True)
        flat = [(d if d is not None else torch.zeros_like(p)).ravel() for d, p in zip(grads, params, strict=True)]
        out.append(torch.cat(flat))
    return out


def main() -> None:
    """Collect, compute and print the ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a ckpt_*.zip of a run directory")
    ap.add_argument("--rollouts", type=int, default=5, help="rollouts to collect (each one PPO update's data)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the episodes drawn")
    ap.add_argument("--reward", default=None, help="task score of the reward (default: the run's own)")
    ap.add_argument("--tasks", default=None, help="training task spec (default: the run's own)")
    ap.add_argument(
        "--credit",
        choices=("episode", "counterfactual", "dense"),
        default=None,
        help="credit (default: the run's own; dense implies --exploration none)",
    )
    ap.add_argument(
        "--exploration",
        choices=("ranking", "swap", "none"),
        default=None,
        help="action distribution (default: the run's own)",
    )
    ap.add_argument("--last-round", action="store_true", help="the gradient of the last round's picks only")
    args = ap.parse_args()
    try:  # a run directory or a checkpoint inside one, as agents.export takes them
        ckpt, config_path = resolve_checkpoint(args.checkpoint)
    except (FileNotFoundError, PermissionError) as err:
        sys.exit(f"error: {err}")
    config = load_config(config_path)
    if args.reward or args.tasks:
        tasks = replace(config.tasks, reward=args.reward or config.tasks.reward, train=args.tasks or config.tasks.train)
        config = replace(config, tasks=tasks)
    if args.credit or args.exploration:
        exploration = "none" if args.credit == "dense" else args.exploration or config.ppo.exploration
        ppo = replace(config.ppo, credit=args.credit or config.ppo.credit, exploration=exploration)
        config = replace(config, ppo=ppo)
    rounds, group = config.processor.rounds, config.ppo.group_size
    t0 = time.perf_counter()
    core = make_core(config)
    dense = config.ppo.credit == "dense"
    if dense:
        group = 1  # deterministic episodes: a group would play one selection G times
        config = replace(config, ppo=replace(config.ppo, group_size=1))
    venv = BatchedTokenKeepVecEnv(
        core,
        n_envs=config.ppo.n_envs,
        seed=args.seed,
        group_size=group,
        credit=config.ppo.credit,
        credit_candidates=config.ppo.credit_candidates,
    )
    # the checkpoint's network under this run's action distribution
    kwargs = {"network": config.network, "exploration": config.ppo.exploration}
    model = algorithm(config).load(ckpt, env=venv, device="cpu", custom_objects={"policy_kwargs": kwargs})
    _, callback = model._setup_learn(model.n_steps * args.rollouts, None, reset_num_timesteps=True)
    callback.on_training_start(locals(), globals())
    grads: list[torch.Tensor] = []
    for r in range(args.rollouts):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        grads += dense_gradients(model) if dense else group_gradients(model, rounds, group, args.last_round)
        print(f"rollout {r + 1}/{args.rollouts}: {len(grads)} groups, {time.perf_counter() - t0:.0f}s", flush=True)
    g = torch.stack(grads).double()
    n = len(g)
    per_update = config.ppo.rollout_size // rounds // group
    total = g.sum(0)
    sq = (g * g).sum(1)
    signal = float((total @ total - sq.sum()) / (n * (n - 1)))
    noise = float(((g - g.mean(0)) ** 2).sum(1).mean() * n / (n - 1))
    # the signal estimate's own spread (jackknife), so a small or negative estimate reads as a bound
    loo = [float(((total - g[j]) @ (total - g[j]) - (sq.sum() - sq[j])) / ((n - 1) * (n - 2))) for j in range(n)]
    spread = float(np.sqrt((n - 1) / n * np.sum((np.asarray(loo) - np.mean(loo)) ** 2)))
    snr = signal / (noise / per_update)
    print(
        f"reward {config.tasks.reward}, credit {config.ppo.credit}, exploration {config.ppo.exploration}, "
        f"tasks {config.tasks.train}"
    )
    c = core.credit_stats
    if c["prompts"]:
        unit = "episode" if dense else f"group of {group}"
        print(
            f"credit cost: {c['prompts'] / max(c['episodes'] if dense else c['groups'], 1):.2f} prompts per {unit} "
            f"({c['context_tokens'] / max(c['prompts'], 1):.0f} context tokens each; episode credit: 1 per episode)"
        )
    terms = "the last round's picks" if args.last_round else "every round's picks"
    print(f"checkpoint {ckpt}: {n} groups of {group} episodes ({rounds} rounds each, gradient of {terms});")
    print(f"one update = {per_update} groups")
    print(f"signal |E g|^2 = {signal:.3e} +- {spread:.1e}; noise per group E|g - E g|^2 = {noise:.3e}")
    if signal > 2 * spread:
        cos = np.sqrt(snr / (1 + snr))
        need = noise / signal
        print(f"one update's gradient SNR = {snr:.3f} (expected cosine with the true gradient {cos:.2f});")
        print(f"SNR 1 needs {need:.0f} groups ({need * group:.0f} episodes) per update")
    else:
        bound = (signal + 2 * spread) / (noise / per_update)
        print(
            f"one update's gradient SNR = {snr:.3f}, < {bound:.3f} (the signal is within 2 spreads of 0 at {n} "
            "groups: collect more rollouts to resolve it)"
        )
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
