"""A stable-baselines3 ``VecEnv`` that steps n TokenKeep episodes with one frozen-model forward.

``DummyVecEnv`` of n :class:`~envs.token_keep_env.TokenKeepEnv` copies would score each env's prompt in its
own forward pass; :class:`BatchedTokenKeepVecEnv` scores all n reduced prompts together (sorted by length into
micro-batches, see :class:`~envs.lm.frozen_lm.FrozenLM`) and computes features for all new episodes at once.
With one selection round an episode is one step long, so every step ends every episode and auto-resets it, as
SB3 expects (``info["terminal_observation"]`` holds the finished observation); with R rounds it lasts R steps.
The group-relative baseline, the credit modes and the rounds are described in the docs below.

Details: ``docs/internals.md``, section ``envs.vec_env``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from envs.core import TokenKeepCore
from policies.budget import Budget
from policies.selection import Selection


class BatchedTokenKeepVecEnv(VecEnv):
    """n TokenKeep episodes in lock-step over one shared :class:`~envs.core.TokenKeepCore`.

    Args:
        core: The shared core (model, task pool, caches).
        n_envs: Number of parallel episodes; a multiple of ``group_size``.
        seed: Base seed; group g draws its episodes from ``seed + g``.
        group_size: Episodes per group that share an example and a budget (1: no group baseline).
        credit: ``episode`` (each episode's own prompt), ``counterfactual`` (credit within the group; needs
            ``group_size`` > 1) or ``dense`` (per-unit credit in the infos).
        credit_candidates: Units scored on each side of the selection's edge per episode with dense credit.
    """

    def __init__(
        self,
        core: TokenKeepCore,
        n_envs: int = 8,
        seed: int | None = None,
        group_size: int = 1,
        credit: str = "episode",
        credit_candidates: int = 8,
    ) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if group_size < 1 or n_envs % group_size:
            raise ValueError(f"group_size must be >= 1 and divide n_envs={n_envs}, got {group_size}")
        if credit not in ("episode", "counterfactual", "dense"):
            raise ValueError(f"credit must be 'episode', 'counterfactual' or 'dense', got {credit!r}")
        if credit == "counterfactual" and group_size < 2:
            raise ValueError("counterfactual credit compares the episodes of a group: it needs group_size >= 2")
        self.core = core
        self.group_size = group_size
        self.credit = credit
        self.credit_candidates = credit_candidates
        self.n_groups = n_envs // group_size
        super().__init__(n_envs, core.observation_space, core.action_space)
        self.seed(seed)
        self._episodes: list[tuple[int, Budget]] = []
        self._selection: Selection | None = None
        self._obs: dict[str, np.ndarray] | None = None
        self._actions: np.ndarray | None = None
        self._draw_state: list[dict] = [rng.bit_generator.state for rng in self._rngs]

    def seed(self, seed: int | None = None) -> Sequence[None | int]:  # noqa: D102
        self._rngs = [np.random.default_rng(None if seed is None else seed + g) for g in range(self.n_groups)]
        return [None if seed is None else seed + r // self.group_size for r in range(self.num_envs)]

    def get_rng_state(self) -> dict[str, Any]:
        """The episode generators' state from before the episodes in flight were drawn (JSON-serialisable).

        After :meth:`set_rng_state` with it, :meth:`reset` draws those same episodes again: what resuming a
        checkpoint needs to replay a run exactly.
        """
        return {"groups": self._draw_state}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_rng_state` returned (the next :meth:`reset` redraws the same episodes)."""
        if len(state["groups"]) != self.n_groups:
            raise ValueError(f"saved state has {len(state['groups'])} groups, this vec env {self.n_groups}")
        for rng, s in zip(self._rngs, state["groups"], strict=True):
            rng.bit_generator.state = s
        self._draw_state = list(state["groups"])

    def _new_episodes(self) -> dict[str, np.ndarray]:
        self._draw_state = [rng.bit_generator.state for rng in self._rngs]
        groups = [self.core.sample(rng) for rng in self._rngs]
        self._episodes = [groups[r // self.group_size] for r in range(self.num_envs)]
        indices, budgets = [i for i, _ in self._episodes], [b for _, b in self._episodes]
        self._selection = self.core.start(indices, budgets)
        return self.core.observe(indices, budgets, self._selection)

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env; returns the stacked observations."""
        if self._seeds[0] is not None:
            self.seed(self._seeds[0])
            self._seeds = [None] * self.num_envs
        self._obs = self._new_episodes()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:  # noqa: D102
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Score all n actions in one batch, centre rewards within groups, then start n new episodes."""
        if self._obs is None or self._actions is None or self._selection is None:
            raise RuntimeError("call reset() and step_async() before step_wait()")
        if self._actions.shape[0] != self.num_envs:
            raise ValueError(f"expected actions for {self.num_envs} envs, got shape {self._actions.shape}")
        if not self._selection.final:
            return self._next_round()
        # With a group baseline the full context's score cancels out of every centred reward: skip its forward.
        res = self.core.step_batch(
            [i for i, _ in self._episodes],
            [b for _, b in self._episodes],
            list(self._actions),
            full_context=self.group_size == 1,
            selection=self._selection,
            credit_group=self.group_size if self.credit == "counterfactual" else 0,
            credit_candidates=self.credit_candidates if self.credit == "dense" else 0,
        )
        raw = res.rewards.astype(np.float32)
        rewards = raw.copy()
        if self.group_size > 1:
            g = raw.reshape(self.n_groups, self.group_size)
            others = (g.sum(1, keepdims=True) - g) / (self.group_size - 1)
            rewards = (g - others).reshape(-1).astype(np.float32)
        finished = self._obs
        self._obs = self._new_episodes()
        for r, info in enumerate(res.infos):
            info["terminal_observation"] = {k: v[r] for k, v in finished.items()}
            info["TimeLimit.truncated"] = False
            info["raw_reward"] = float(raw[r])
            info["episode"] = {"r": float(raw[r]), "l": 1, "t": 0.0}
        self._actions = None
        return self._obs, rewards, np.ones(self.num_envs, dtype=bool), res.infos

    def _next_round(self) -> VecEnvStepReturn:
        """A round before the last: keep each action's probe, observe the examples conditioned on it."""
        indices = [i for i, _ in self._episodes]
        budgets = [b for _, b in self._episodes]
        self._selection.advance([self.core.check_action(a) for a in self._actions])
        self._obs = self.core.observe(indices, budgets, self._selection)
        self._actions = None
        infos: list[dict[str, Any]] = [{"round": self._selection.round} for _ in indices]
        return self._obs, np.zeros(self.num_envs, np.float32), np.zeros(self.num_envs, dtype=bool), infos

    def close(self) -> None:  # noqa: D102
        pass

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:  # noqa: D102
        if attr_name == "render_mode":  # nothing to render: episodes are one keep decision
            return [None for _ in self._get_indices(indices)]
        return [getattr(self.core, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:  # noqa: D102
        setattr(self.core, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: VecEnvIndices = None, **kwargs: Any) -> list[Any]:  # noqa: D102
        return [getattr(self.core, method_name)(*args, **kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:  # noqa: D102
        return [False for _ in self._get_indices(indices)]
