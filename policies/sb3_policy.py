"""The stable-baselines3 adapter: an actor-critic policy over TokenKeep observations.

The only module of :mod:`policies` that imports stable-baselines3 and gymnasium; nothing deployable imports it.

:class:`TokenKeepPolicy` replaces SB3's flatten-then-MLP pipeline with :class:`~policies.network.TokenKeepNetwork`
(a token encoder pooled into units, then a unit encoder, conditioned on the budget). Its action distribution is
by default :class:`~policies.ranking.RankingDistribution` (``exploration`` picks another of
:data:`~policies.ranking.DISTRIBUTIONS`): a Plackett-Luce ranking of the units, cut by each episode's
budget; an action is one priority per unit in [-1, 1] (a ``Box`` space), which the environment turns into a
keep mask with :func:`policies.budget.fill_units`. Works with ``PPO.save`` / ``PPO.load``.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs

from policies.features import micro_batches
from policies.network import NetworkConfig, TokenKeepNetwork
from policies.ranking import DISTRIBUTIONS, RankingDistribution

GROUP_TOKENS = 16384
"""Padded tokens per network forward: a batch's rows are grouped by length up to this (see ``_run``)."""


class PassThroughExtractor(BaseFeaturesExtractor):
    """Returns the (preprocessed) observation dict unchanged; the token network does all the work."""

    def __init__(self, observation_space: spaces.Dict) -> None:
        super().__init__(observation_space, features_dim=1)

    def forward(self, observations: PyTorchObs) -> PyTorchObs:  # noqa: D102
        return observations


class TokenKeepPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy over TokenKeep observations.

    Args:
        observation_space: The env's Dict observation space (:func:`policies.observations.observation_layout`).
        action_space: ``Box(-1, 1, (max_len,))``: one priority per unit.
        lr_schedule: Learning-rate schedule (from PPO).
        network: The keep network's shape (input widths are read off the observation space).
        exploration: The action distribution: ``ranking`` samples a Plackett-Luce ranking of all units
            (:class:`~policies.ranking.RankingDistribution`), ``swap`` the deterministic selection with one unit
            exchanged (:class:`~policies.ranking.SwapDistribution`). Both share :meth:`mode`.
        **kwargs: Passed to :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Any,
        network: NetworkConfig | None = None,
        exploration: str = "ranking",
        **kwargs: Any,
    ) -> None:
        if exploration not in DISTRIBUTIONS:
            raise ValueError(f"exploration must be one of {sorted(DISTRIBUTIONS)}, got {exploration!r}")
        self.distribution = DISTRIBUTIONS[exploration]
        self.exploration = exploration
        if not isinstance(observation_space, spaces.Dict) or "features" not in observation_space.spaces:
            raise ValueError("TokenKeepPolicy needs the TokenKeep Dict observation space")
        self.net_config = network if network is not None else NetworkConfig()
        kwargs.setdefault("features_extractor_class", PassThroughExtractor)
        kwargs["share_features_extractor"] = True
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        space = self.observation_space
        self.net = TokenKeepNetwork(
            self.net_config,
            feature_dim=int(space["features"].shape[-1]),
            lexical_size=int(space["lexical"].shape[-1]) if "lexical" in space.spaces else 0,
            budget_size=int(space["budget"].shape[-1]),
            attention_size=int(space["attention"].shape[-1]) if "attention" in space.spaces else 0,
        )
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(network=self.net_config, exploration=self.exploration)
        return data

    def _run(self, obs: PyTorchObs) -> tuple[RankingDistribution, torch.Tensor]:
        o = self.extract_features(obs)
        lengths = o["attention_mask"].sum(1).tolist()
        groups = micro_batches([int(n) for n in lengths], GROUP_TOKENS)
        if len(groups) == 1:
            scores, stop, values = self.net(o)
        else:
            # Rows of similar length together: the network pads a forward to its longest row, and a minibatch
            # mixes short synthetic rows with long real-text ones. Outputs go back to the rows' order.
            parts = [(g, self.net({k: v[g] for k, v in o.items()})) for g in groups]
            order = torch.as_tensor([i for g, _ in parts for i in g], device=o["attention_mask"].device)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order), device=order.device)
            scores, stop, values = (torch.cat([out[j] for _, out in parts])[inverse] for j in range(3))
        return self.distribution(scores, stop, o["unit_lengths"], o["limits"]), values

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[torch.Tensor, ...]:
        """Actions, values ``[B, 1]`` and log-probabilities ``[B]``."""
        dist, values = self._run(obs)
        actions = dist.mode() if deterministic else dist.sample()
        return actions, values[:, None], dist.log_prob(actions)

    def evaluate_actions(self, obs: PyTorchObs, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Values ``[B, 1]``, log-probabilities ``[B]`` and entropies ``[B]`` of given actions."""
        dist, values = self._run(obs)
        return values[:, None], dist.log_prob(actions), dist.entropy()

    def get_distribution(self, obs: PyTorchObs) -> RankingDistribution:  # type: ignore[override]
        """The ranking distribution."""
        return self._run(obs)[0]

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """Values ``[B, 1]``."""
        return self._run(obs)[1][:, None]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        dist = self.get_distribution(observation)
        return dist.mode() if deterministic else dist.sample()
