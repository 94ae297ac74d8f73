"""Training callbacks: reduction scalars, periodic held-out evaluation with text examples, atomic checkpoints.

Tensorboard prefixes are stable: ``rollout/`` (reward, episodes_per_second), ``reduction/`` (task_score,
full_score, kept_ratio, token_cost), ``eval/`` (held-out reward, task_score, full_score, kept_ratio,
random_task_score, examples as text). SB3 itself logs ``train/`` (entropy_loss, approx_kl, clip_fraction,
explained_variance, ...).
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor

from envs.core import TokenKeepCore
from policies.reducer import keep_top


class ReductionStatsCallback(BaseCallback):
    """Averages the env infos of each rollout and logs them."""

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self.stats: dict[str, list[float]] = {
            k: [] for k in ("reward", "task_score", "full_score", "kept_ratio", "token_cost")
        }
        self.t0 = time.perf_counter()

    def _on_step(self) -> bool:
        for info, r in zip(self.locals["infos"], self.locals["rewards"], strict=True):
            self.stats["reward"].append(float(r))
            for k in ("task_score", "full_score", "kept_ratio", "token_cost"):
                self.stats[k].append(float(info[k]))
        return True

    def _on_rollout_end(self) -> None:
        if not self.stats["reward"]:
            return
        n = len(self.stats["reward"])
        self.logger.record("rollout/reward", float(np.mean(self.stats["reward"])))
        self.logger.record("rollout/episodes_per_second", n / max(time.perf_counter() - self.t0, 1e-9))
        for k in ("task_score", "full_score", "kept_ratio", "token_cost"):
            self.logger.record(f"reduction/{k}", float(np.mean(self.stats[k])))
        self._reset()


def evaluate_policy_on_core(
    policy, core: TokenKeepCore, token_cost: float, seed: int = 0, rate: float | None = None
) -> dict:
    """The policy on every example of ``core``'s pool, plus random keeping at the same ratio.

    Args:
        policy: An SB3 :class:`~policies.sb3_policy.TokenKeepPolicy`.
        core: A core over held-out examples.
        token_cost: The token cost asked for.
        seed: Seed of the random-keep comparison.
        rate: None: the deterministic action (keep where p > 0.5). A float: keep the ``round(rate * n)``
            tokens with the highest keep probability, as the deployed reducer does for a requested rate.

    Returns:
        Means of reward, task_score, full_score and kept_ratio, the random baseline's task score, and per-example
        ``(context ids, keep mask)`` pairs for text examples.
    """
    idx = list(range(len(core.pool)))
    obs = core.observe(idx, [token_cost] * len(idx))
    if rate is None:
        actions, _ = policy.predict(obs, deterministic=True)
    else:
        with torch.no_grad():
            dist = policy.get_distribution(obs_as_tensor(obs, policy.device))
        actions = np.zeros((len(idx), core.max_len), np.int8)
        for r, lg in enumerate(dist.logits.cpu().numpy()):
            red = np.flatnonzero(obs["reducible_mask"][r])
            actions[r, red[keep_top(lg[red], rate=rate)]] = 1
    res = core.step_batch(idx, [token_cost] * len(idx), list(actions))
    # Random keeping at each example's achieved ratio: same budget, no learning.
    rng = np.random.default_rng(seed)
    rand_actions = []
    for r, info in enumerate(res.infos):
        red = np.flatnonzero(obs["reducible_mask"][r])
        k = info["kept_tokens"]
        a = np.zeros(core.max_len, np.int8)
        a[rng.choice(red, size=k, replace=False)] = 1
        rand_actions.append(a)
    rand = core.step_batch(idx, [token_cost] * len(idx), rand_actions)
    masks = []
    for r, i in enumerate(idx):
        e = core.pool[i]
        q = len(e.question)
        masks.append((e.context, np.asarray(actions[r][q : q + len(e.context)]).astype(bool)))
    return {
        "reward": float(np.mean(res.rewards)),
        "task_score": float(np.mean([x["task_score"] for x in res.infos])),
        "full_score": float(np.mean([x["full_score"] for x in res.infos])),
        "kept_ratio": float(np.mean([x["kept_ratio"] for x in res.infos])),
        "random_task_score": float(np.mean([x["task_score"] for x in rand.infos])),
        "masks": masks,
    }


def mark_tokens(tokenizer, ids, keep) -> str:
    """Markdown text with dropped tokens struck through: ``kept ~~dropped~~ kept``."""
    out, run, run_keep = [], [], None
    for t, k in zip(ids, keep, strict=True):
        if run and bool(k) != run_keep:
            text = tokenizer.decode(run)
            out.append(text if run_keep else f"~~{text}~~")
            run = []
        run.append(int(t))
        run_keep = bool(k)
    if run:
        text = tokenizer.decode(run)
        out.append(text if run_keep else f"~~{text}~~")
    return html.escape("".join(out), quote=False)


class HeldoutEvalCallback(BaseCallback):
    """Evaluates the deterministic policy on a held-out core every ``eval_freq`` episodes.

    Args:
        core: Core over the held-out examples (sharing the training model).
        eval_freq: Episodes between evaluations.
        token_cost: Token cost asked for.
        n_text_examples: How many examples to log as text with dropped tokens struck through.
    """

    def __init__(self, core: TokenKeepCore, eval_freq: int, token_cost: float, n_text_examples: int = 3) -> None:
        super().__init__()
        self.core = core
        self.eval_freq = eval_freq
        self.token_cost = token_cost
        self.n_text_examples = n_text_examples
        self.last_eval = 0
        self.history: list[dict] = []

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_eval >= self.eval_freq:
            self.last_eval = self.num_timesteps
            self.run_eval()
        return True

    def run_eval(self) -> dict:
        """Evaluate now (deterministic action, and ranking at rate 0.5) and log under ``eval/``."""
        r = evaluate_policy_on_core(self.model.policy, self.core, self.token_cost)
        for k in ("reward", "task_score", "full_score", "kept_ratio", "random_task_score"):
            self.logger.record(f"eval/{k}", r[k])
        half = evaluate_policy_on_core(self.model.policy, self.core, self.token_cost, rate=0.5)
        self.logger.record("eval/rate0.5_task_score", half["task_score"])
        self.logger.record("eval/rate0.5_random_task_score", half["random_task_score"])
        texts = [mark_tokens(self.core.lm.tokenizer, ids, keep) for ids, keep in r["masks"][: self.n_text_examples]]
        self.logger.record("eval/examples", "\n\n---\n\n".join(texts), exclude=("stdout", "log", "json", "csv"))
        self.logger.dump(self.num_timesteps)
        summary = {k: v for k, v in r.items() if k != "masks"} | {
            "timesteps": self.num_timesteps,
            "rate0.5_task_score": half["task_score"],
            "rate0.5_random_task_score": half["random_task_score"],
        }
        self.history.append(summary)
        return summary


class AtomicCheckpointCallback(BaseCallback):
    """Saves ``checkpoints/ckpt_<timesteps>.zip`` every ``save_freq`` episodes, atomically; keeps the last k.

    Args:
        directory: The checkpoints directory.
        save_freq: Episodes between checkpoints.
        keep: How many recent checkpoints to keep.
    """

    def __init__(self, directory: Path, save_freq: int, keep: int = 3) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.save_freq = save_freq
        self.keep = keep
        self.last_save = 0

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_save >= self.save_freq:
            self.last_save = self.num_timesteps
            save_checkpoint(self.model, self.directory, self.keep)
        return True


def save_checkpoint(model, directory: Path, keep: int = 3) -> Path:
    """Save an SB3 model as ``ckpt_<timesteps>.zip`` via a temporary file and rename; prune old ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt_{model.num_timesteps:09d}.zip"
    tmp = directory / f".tmp_{os.getpid()}_{model.num_timesteps}.zip"
    model.save(tmp)
    os.replace(tmp, target)
    for old in sorted(directory.glob("ckpt_*.zip"))[:-keep]:
        old.unlink()
    return target


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the most timesteps, or None."""
    found = sorted(Path(directory).glob("ckpt_*.zip"))
    return found[-1] if found else None
