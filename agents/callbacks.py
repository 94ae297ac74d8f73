"""Training callbacks: reduction scalars, periodic held-out evaluation with text examples, atomic checkpoints.

Tensorboard prefixes are stable: ``rollout/`` (reward, episodes_per_second), ``reduction/`` (task_score,
full_score, kept_ratio, token_cost), ``eval/`` (per held-out task and rate: the policy's task metric, the best
heuristic's, random's, the full context's; examples as text). SB3 itself logs ``train/`` (entropy_loss,
approx_kl, clip_fraction, explained_variance, ...).

The held-out evaluation is :func:`agents.evaluate.evaluate`, the evaluator of ``eval.py``, run on a reducer
built from the current policy (:func:`agents.export.reducer_from_policy`), so the curves measure the code
that ships.
"""

from __future__ import annotations

import html
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agents.baselines import HEURISTICS, KeepMethod, ReducerMethod, make_baselines
from agents.checkpoints import write_atomic
from agents.config import TrainConfig
from agents.eval_metrics import task_metric
from agents.evaluate import evaluate
from agents.export import reducer_from_policy
from envs.lm.frozen_lm import FrozenLM
from envs.tasks.examples import EncodedExample
from policies.semantic import SentenceEncoder


class ReductionStatsCallback(BaseCallback):
    """Averages the env infos of each rollout and logs them.

    ``rollout/reward`` is the raw reward (before any group baseline); ``reduction/kept_ratio_rate`` and
    ``reduction/budget_use`` (kept tokens over the budget) describe rate episodes, ``reduction/kept_ratio_adaptive``
    the episodes in which the policy chose how much to keep.
    """

    KEYS = ("task_score", "full_score", "kept_ratio", "token_cost")

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        names = ("reward", "kept_ratio_rate", "budget_use", "kept_ratio_adaptive", *self.KEYS)
        self.stats: dict[str, list[float]] = {k: [] for k in names}
        self.t0 = time.perf_counter()

    def _on_step(self) -> bool:
        for info, r in zip(self.locals["infos"], self.locals["rewards"], strict=True):
            if "task_score" not in info:  # a round before the last: nothing was scored
                continue
            self.stats["reward"].append(float(info.get("raw_reward", r)))
            for k in self.KEYS:
                if np.isfinite(info[k]):  # full_score is NaN where a group baseline made it unnecessary
                    self.stats[k].append(float(info[k]))
            if info.get("adaptive"):
                self.stats["kept_ratio_adaptive"].append(float(info["kept_ratio"]))
            elif info.get("rate"):
                self.stats["kept_ratio_rate"].append(float(info["kept_ratio"]))
                self.stats["budget_use"].append(float(info["kept_ratio"]) / float(info["rate"]))
        return True

    def _on_rollout_end(self) -> None:
        if not self.stats["reward"]:
            return
        n = len(self.stats["reward"])
        self.logger.record("rollout/reward", float(np.mean(self.stats["reward"])))
        self.logger.record("rollout/episodes_per_second", n / max(time.perf_counter() - self.t0, 1e-9))
        for k, v in self.stats.items():
            if k != "reward" and v:
                self.logger.record(f"reduction/{k}", float(np.mean(v)))
        self._reset()


def mark_tokens(tokenizer: Any, ids: Sequence[int], keep: Sequence[int]) -> str:
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
    """Evaluates the current policy on held-out tasks every ``eval_freq`` episodes, against heuristics.

    The baselines (the full context where ``config.run.eval_full``, and ``heuristics``) are scored once per run.

    Args:
        lm: The frozen model (shared with training).
        config: The run's config (processor, budget, the held-out rates).
        tasks: Held-out task name -> encoded examples.
        eval_freq: Episodes between evaluations.
        heuristics: Baseline names to compare with; their rows are computed once and reused.
        n_text_examples: How many examples to log as text with dropped tokens struck through.
        history_path: A JSON file that holds every evaluation so far, rewritten atomically after each one (on a
            resume, the entries up to the resumed checkpoint are kept).
        steps_per_episode: Env steps per episode (``processor.rounds``): SB3 counts steps, ``eval_freq`` and the
            history's ``timesteps`` count episodes.
        encoder: The training core's sentence encoder, shared by every evaluated reducer (None: loaded per
            evaluation when the processor uses the semantic channel).
    """

    def __init__(
        self,
        lm: FrozenLM,
        config: TrainConfig,
        tasks: dict[str, list[EncodedExample]],
        eval_freq: int,
        heuristics: Sequence[str] = HEURISTICS,
        n_text_examples: int = 3,
        history_path: Path | None = None,
        steps_per_episode: int = 1,
        encoder: SentenceEncoder | None = None,
    ) -> None:
        super().__init__()
        self.steps_per_episode = steps_per_episode
        self.encoder = encoder
        self.lm = lm
        self.config = config
        self.tasks = tasks
        self.eval_freq = eval_freq
        self.rates = list(config.run.eval_rates)
        self.heuristic_names = list(heuristics)
        self.n_text_examples = n_text_examples
        self.last_eval = 0
        self.history_path = history_path
        self.history: list[dict[str, Any]] = []
        if history_path is not None and history_path.exists():
            self.history = json.loads(history_path.read_text())
        self._baseline_rows: list[dict[str, Any]] | None = None

    def _on_training_start(self) -> None:
        # A resumed run repeats the episodes after its checkpoint, and with them their evaluations: drop the
        # killed run's, or the curve would show them twice.
        self.history = [h for h in self.history if self._env_steps(h) <= self.num_timesteps]
        if self.history:  # the next evaluation falls where the uninterrupted run's did
            self.last_eval = self._env_steps(self.history[-1])
        # A fresh run is evaluated before its first PPO step, so the curve shows what the warm start gave.
        if self.num_timesteps == 0 and not self.history:
            self.run_eval()

    def _env_steps(self, entry: dict[str, Any]) -> int:
        """The env steps at which a history entry was evaluated (an evaluation may fall inside an episode)."""
        return int(entry.get("env_steps", entry["timesteps"] * self.steps_per_episode))

    def _on_step(self) -> bool:
        if (self.num_timesteps - self.last_eval) // self.steps_per_episode >= self.eval_freq:
            self.last_eval = self.num_timesteps
            self.run_eval()
        return True

    def _baselines(self) -> list[dict[str, Any]]:
        if self._baseline_rows is None:
            names = (["full"] if self.config.run.eval_full else []) + self.heuristic_names
            methods: list[KeepMethod] = make_baselines(names, self.lm, seed=self.config.run.seed)
            self._baseline_rows = (
                evaluate(self.lm, methods, self.tasks, self.rates, progress=False)["results"] if methods else []
            )
        return self._baseline_rows

    def run_eval(self) -> dict[str, Any]:
        """Evaluate now, log under ``eval/`` and append a summary to :attr:`history`.

        ``eval/seconds`` is the evaluation's wall time (the first one also computes the baselines' rows).
        """
        start = time.perf_counter()
        episodes = self.num_timesteps // self.steps_per_episode
        # minutes without a sign of life otherwise (the progress bar stands still while it runs)
        print(f"held-out evaluation at {episodes} episodes ({len(self.tasks)} tasks)...", file=sys.stderr, flush=True)
        reducer = reducer_from_policy(self.model.policy, self.lm, self.config, self.encoder)
        policy = ReducerMethod(reducer, "policy")
        report = evaluate(self.lm, [policy], self.tasks, self.rates, progress=False, n_html_examples=1)
        rows = report["results"] + self._baselines()
        summary: dict[str, Any] = {
            "timesteps": self.num_timesteps // self.steps_per_episode,
            "env_steps": self.num_timesteps,
        }
        for task in self.tasks:
            mine = [r for r in rows if r["task"] == task]
            full = next((r for r in mine if r["method"] == "full"), None)
            if full is not None:
                self.logger.record(f"eval/{task}/full", task_metric(full))
                summary[f"{task}/full"] = task_metric(full)
            summary[f"{task}/metric"] = mine[0].get("metric", "")
            auto = next((r for r in mine if r["method"] == "policy" and r["budget"] == "adaptive"), None)
            if auto is not None:  # the no-rate reducer: its score and how much it chose to keep
                for key, value in (("policy_auto", task_metric(auto)), ("policy_auto_kept", auto["kept_ratio"])):
                    self.logger.record(f"eval/{task}/{key}", value)
                    summary[f"{task}/{key}"] = value
            for rate in self.rates:
                at = [r for r in mine if r["rate"] == rate and r["budget"] == "rate"]
                ours = next(r for r in at if r["method"] == "policy")
                heur = [r for r in at if r["method"] in self.heuristic_names]
                best = max(heur, key=task_metric) if heur else None
                values = {
                    f"policy_rate{rate}": task_metric(ours),
                    f"policy_loglik_rate{rate}": ours["loglik"],
                    f"policy_kept_rate{rate}": ours["kept_ratio"],
                }
                if ours.get("evidence_recall") is not None:
                    values[f"policy_recall_rate{rate}"] = ours["evidence_recall"]
                if best is not None:
                    values[f"best_heuristic_rate{rate}"] = task_metric(best)
                rand = next((r for r in at if r["method"] == "random"), None)
                if rand is not None:
                    values[f"random_rate{rate}"] = task_metric(rand)
                for k, v in values.items():
                    self.logger.record(f"eval/{task}/{k}", v)
                    summary[f"{task}/{k}"] = v
                if best is not None:
                    summary[f"{task}/best_heuristic_name_rate{rate}"] = best["method"]
        texts = [
            mark_tokens(self.lm.tokenizer, ex["token_ids"], ex["keep"])
            for ex in report["examples"][: self.n_text_examples]
        ]
        self.logger.record("eval/examples", "\n\n---\n\n".join(texts), exclude=("stdout", "log", "json", "csv"))
        seconds = round(time.perf_counter() - start, 1)
        print(f"held-out evaluation at {episodes} episodes: done in {seconds} s", file=sys.stderr, flush=True)
        self.logger.record("eval/seconds", seconds)  # not in the history: not a result
        self.logger.dump(self.num_timesteps // self.steps_per_episode)
        self.history.append(summary)
        if self.history_path is not None:
            write_atomic(self.history_path, json.dumps(self.history, indent=2) + "\n")
        return summary
