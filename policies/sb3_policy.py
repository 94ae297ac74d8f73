"""The stable-baselines3 adapter: an actor-critic policy over TokenKeep observations.

The only module of :mod:`policies` that imports stable-baselines3 and gymnasium; nothing deployable imports it.

:class:`TokenKeepPolicy` replaces SB3's flatten-then-MLP pipeline with :class:`~policies.network.TokenKeepNetwork`
(a token-level encoder over the env's per-token features, conditioned on the budget). Its action
distribution, :class:`MaskedBernoulli`, is a product of independent Bernoullis over the *reducible* positions
only: padding and question positions contribute nothing to the log-probability or the entropy, so PPO's
probability ratios are not noise. Works with ``PPO.save`` / ``PPO.load``.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs

from policies.network import NetworkConfig, TokenKeepNetwork


class MaskedBernoulli:
    """Independent Bernoulli keep decisions over the positions where ``mask`` is 1.

    Args:
        logits: ``[B, L]`` keep logits.
        mask: ``[B, L]`` bool, the positions that are decided (reducible context tokens).
    """

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        self.logits = logits
        self.mask = mask.bool()
        self.dist = torch.distributions.Bernoulli(logits=logits)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B]`` summed log-probability of the actions at masked positions."""
        lp = self.dist.log_prob(actions.float())
        return (lp * self.mask).sum(-1)

    def entropy(self) -> torch.Tensor:
        """``[B]`` mean per-token entropy over masked positions (length-independent scale for ent_coef)."""
        ent = self.dist.entropy() * self.mask
        return ent.sum(-1) / self.mask.sum(-1).clamp(min=1)

    def sample(self) -> torch.Tensor:
        """Sampled keep mask, 0 outside the masked positions."""
        return self.dist.sample() * self.mask

    def mode(self) -> torch.Tensor:
        """Deterministic keep mask: keep where the keep probability exceeds 0.5."""
        return (self.logits > 0).float() * self.mask

    def get_actions(self, deterministic: bool = False) -> torch.Tensor:
        """Mode or sample."""
        return self.mode() if deterministic else self.sample()


class PassThroughExtractor(BaseFeaturesExtractor):
    """Returns the (preprocessed) observation dict unchanged; the token network does all the work."""

    def __init__(self, observation_space: spaces.Dict) -> None:
        super().__init__(observation_space, features_dim=1)

    def forward(self, observations: PyTorchObs) -> PyTorchObs:  # noqa: D102
        return observations


class TokenKeepPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy over TokenKeep observations.

    Args:
        observation_space: The env's Dict observation space (:func:`policies.processor.observation_layout`).
        action_space: ``MultiBinary(max_len)``.
        lr_schedule: Learning-rate schedule (from PPO).
        network: The keep network's shape (input widths are read off the observation space).
        **kwargs: Passed to :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.MultiBinary,
        lr_schedule: Any,
        network: NetworkConfig | None = None,
        **kwargs: Any,
    ) -> None:
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
            budget_size=int(space["budget"].shape[-1]),
        )
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(network=self.net_config)
        return data

    def _run(self, obs: PyTorchObs) -> tuple[MaskedBernoulli, torch.Tensor]:
        o = self.extract_features(obs)
        logits, values = self.net(o)
        return MaskedBernoulli(logits, o["reducible_mask"]), values

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[torch.Tensor, ...]:
        """Actions, values ``[B, 1]`` and log-probabilities ``[B]``."""
        dist, values = self._run(obs)
        actions = dist.get_actions(deterministic)
        return actions, values[:, None], dist.log_prob(actions)

    def evaluate_actions(self, obs: PyTorchObs, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Values ``[B, 1]``, log-probabilities ``[B]`` and entropies ``[B]`` of given actions."""
        dist, values = self._run(obs)
        return values[:, None], dist.log_prob(actions), dist.entropy()

    def get_distribution(self, obs: PyTorchObs) -> MaskedBernoulli:  # type: ignore[override]
        """The masked Bernoulli action distribution."""
        return self._run(obs)[0]

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """Values ``[B, 1]``."""
        return self._run(obs)[1][:, None]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        return self.get_distribution(observation).get_actions(deterministic)
