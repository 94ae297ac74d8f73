"""TokenKeep-v0: a gymnasium environment in which a policy chooses which context tokens to keep.

Each episode is one example and one budget. ``reset`` returns a padded observation of the question and context
tokens (layout: :mod:`policies.processor`); ``step`` takes one priority per selection unit
(``Box(-1, 1, (max_len,))``: units with priority > 0 are candidates, the best that fit the budget are kept),
scores the reduced prompt with the frozen model and ends the episode. With ``processor.rounds`` R > 1 an
episode is R steps: each step before the last keeps a probe of the best units, returns reward 0 and the example
conditioned on it (:mod:`envs.core`); the last step is scored.

Reward: ``task_score(reduced) [- full_score if relative] - token_cost * kept_context / context_tokens``.
``info`` carries ``kept_ratio``, ``task_score``, ``full_score``, ``token_cost`` and ``reduced_text``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.core import TokenKeepCore
from policies.budget import Budget
from policies.selection import Selection


class TokenKeepEnv(gym.Env):
    """Gymnasium environment over a frozen generative model.

    Args:
        model: A loaded :class:`~envs.lm.frozen_lm.FrozenLM` (shared, never reloaded) or a model spec.
        tasks: Task spec string or list of examples.
        core: An existing :class:`~envs.core.TokenKeepCore` to share (its caches too); when given, every
            other argument is ignored.
        **kwargs: Further :class:`~envs.core.TokenKeepCore` options (``processor``, ``budget``, ``reward``,
            ``num_examples``, ``too_long``, ...).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: Any = "smollm2-135m",
        tasks: Any = "passkey:train",
        *,
        core: TokenKeepCore | None = None,
        **kwargs: Any,
    ) -> None:
        self.core = core if core is not None else TokenKeepCore(model, tasks, **kwargs)
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space
        self._current: tuple[int, Budget] | None = None
        self._obs: dict[str, np.ndarray] | None = None
        self._selection: Selection | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode on a random example and budget.

        ``options={"index": i, "budget": Budget(...)}`` pins either or both.
        """
        super().reset(seed=seed)
        idx, budget = self.core.sample(self.np_random)
        if options:
            idx = int(options.get("index", idx))
            budget = options.get("budget", budget)
            if not 0 <= idx < len(self.core.pool):
                raise ValueError(f"options['index'] must be in [0, {len(self.core.pool)}), got {idx}")
            if not isinstance(budget, Budget):
                raise ValueError(f"options['budget'] must be a policies.budget.Budget, got {type(budget).__name__}")
            self.core.check_budget(idx, budget)  # an example's force-kept units must fit a pinned budget
        self._current = (idx, budget)
        self._selection = self.core.start([idx], [budget])
        obs = self.core.observe([idx], [budget], self._selection)
        self._obs = {k: v[0] for k, v in obs.items()}
        return self._obs, {"example_index": idx, "token_cost": self.core.budget.token_cost(budget)}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        """Apply unit priorities; the episode ends after the last round's step."""
        if self._current is None or self._obs is None or self._selection is None:
            raise RuntimeError("call reset() before step()")
        idx, budget = self._current
        if not self._selection.final:
            self._selection.advance([self.core.check_action(action)])
            obs = self.core.observe([idx], [budget], self._selection)
            self._obs = {k: v[0] for k, v in obs.items()}
            return {k: v.copy() for k, v in self._obs.items()}, 0.0, False, False, {"round": self._selection.round}
        res = self.core.step_batch([idx], [budget], [action], selection=self._selection)
        self._current, self._selection = None, None
        obs = {k: v.copy() for k, v in self._obs.items()}  # callers may keep what reset returned
        return obs, float(res.rewards[0]), True, False, res.infos[0]
