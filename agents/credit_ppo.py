"""PPO on dense counterfactual credit (issue 25): each unit's measured effect is the advantage of picking it.

stable-baselines3's PPO with :meth:`CreditPPO.train` replaced: rollouts play the deterministic selection, the
frozen model scores the units at its edge, and the update maximises the expected credit of one swap, with PPO's
clipped ratio per pick and an optional anchor to the policy PPO started from (``ppo.anchor``).

Details: ``docs/internals.md``, section ``agents.credit_ppo``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO

from policies.ranking import swap_probabilities


def swap_objective(
    scores: torch.Tensor,
    valid: torch.Tensor,
    kept: torch.Tensor,
    advantage: torch.Tensor,
    old: tuple[torch.Tensor, torch.Tensor],
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipped expected advantage of one swap, and the share of clipped pick mass (for logging).

    Args:
        scores: ``[B, U]`` unit scores of the current policy.
        valid: ``[B, U]`` real units.
        kept: ``[B, U]`` the selection the credits were measured at.
        advantage: ``[B, U]`` advantage of adding each dropped unit and of taking out each kept one.
        old: ``(p_add, p_out)`` of the policy that played the rollout.
        clip_range: PPO's ``e``.
    """
    new_add, new_out = swap_probabilities(scores, valid, kept)
    new = torch.where(kept, new_out, new_add)
    old_p = torch.where(kept, old[1], old[0])
    ratio = new / old_p.clamp(min=1e-12)
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range)
    per_pick = old_p * torch.minimum(ratio * advantage, clipped * advantage)
    clip_mass = (old_p * ((ratio - 1).abs() > clip_range)).sum(1)
    return per_pick.sum(1), clip_mass


def anchor_penalty(
    margin: torch.Tensor, anchor_margin: torch.Tensor, valid: torch.Tensor, credit: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Mean over rows of ``sum_u (m_u - m0_u)^2`` over the valid units without credit, and its root-mean-square.

    Args:
        margin: ``[B, U]`` units' scores minus STOP under the current policy.
        anchor_margin: ``[B, U]`` the same under the anchor.
        valid: ``[B, U]`` real units.
        credit: ``[B, U]`` the units' credits (0: not scored, held by the anchor).
    """
    held = valid & (credit == 0)
    drift = torch.where(held, margin - anchor_margin, 0.0).square()
    return drift.sum(1).mean(), float((drift.detach().sum() / held.sum().clamp(min=1)).sqrt())


class CreditPPO(PPO):
    """PPO whose update maximises the expected counterfactual credit of one swap.

    The objective and the anchor: ``docs/internals.md``, ``agents.credit_ppo``.
    """

    def __init__(self, *args: Any, anchor: float = 0.0, **kwargs: Any) -> None:
        self.anchor = anchor
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        # the policy PPO starts from: copied again when learning starts (after the warm start); SB3's load restores
        # it from the checkpoint after this
        self._anchor_policy = copy.deepcopy(self.policy).requires_grad_(False) if self.anchor > 0 else None
        if self._anchor_policy is not None:
            self._anchor_policy.set_training_mode(False)  # its margins are a fixed target (no dropout noise)
        shape = (self.n_steps, self.n_envs, int(self.action_space.shape[0]))
        self._credit = np.zeros(shape, np.float32)
        self._kept = np.zeros(shape, bool)
        self._scored = np.zeros(shape[:2], bool)

    def _excluded_save_params(self) -> list[str]:
        # the rollout's credits are rebuilt by the next rollout, like SB3's own rollout buffer
        return [*super()._excluded_save_params(), "_credit", "_kept", "_scored"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        names, variables = super()._get_torch_save_params()
        return ([*names, "_anchor_policy"] if self._anchor_policy is not None else names), variables

    def learn(self, *args: Any, **kwargs: Any) -> CreditPPO:  # noqa: D102
        if self._anchor_policy is not None and self.num_timesteps == 0:  # a resumed run keeps its saved anchor
            self._anchor_policy.load_state_dict(self.policy.state_dict())
        return super().learn(*args, **kwargs)

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:  # noqa: D102
        self._scored[:] = False
        return super().collect_rollouts(*args, **kwargs)

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        # Called once per env step, before the step is added to the buffer: pos is the step's row.
        super()._update_info_buffer(infos, dones)
        pos = self.rollout_buffer.pos
        for e, info in enumerate(infos):
            if "unit_credit" in info:
                self._credit[pos, e] = info["unit_credit"]
                self._kept[pos, e] = info["unit_kept"]
                self._scored[pos, e] = True

    def _scores(
        self, obs: Mapping[str, np.ndarray], rows: np.ndarray, policy: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, U]`` unit scores, ``[B, U]`` valid units and ``[B, U]`` margins over STOP of ``policy``'s."""
        batch = {k: torch.as_tensor(v[rows], device=self.device) for k, v in obs.items()}
        dist = (policy or self.policy).get_distribution(batch)
        return dist.scores, dist.valid, dist.scores - dist.stop[:, None]

    def rollout_credit(self) -> dict[str, np.ndarray]:
        """The scored last-round steps of the rollout: observations, kept units and credits."""
        steps, envs = np.nonzero(self._scored)
        obs = {k: np.asarray(v)[steps, envs] for k, v in self.rollout_buffer.observations.items()}
        return {"obs": obs, "kept": self._kept[steps, envs], "credit": self._credit[steps, envs]}

    @staticmethod
    def advantages(kept: torch.Tensor, credit: torch.Tensor, old: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``[B, U]`` advantages of each pick (``docs/internals.md``, ``agents.credit_ppo``), before scaling."""
        base_add = (old[0] * credit).sum(1, keepdim=True)
        base_out = (old[1] * credit).sum(1, keepdim=True)
        return torch.where(kept, base_out - credit, credit - base_add)

    def train(self) -> None:
        """Epochs of minibatch updates on the rollout's scored steps (no value loss)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = float(self.clip_range(self._current_progress_remaining))  # type: ignore[operator]
        data = self.rollout_credit()
        n = len(data["kept"])
        if n == 0:  # every rollout holds whole episodes, so their last rounds were scored unless the env is wrong
            raise RuntimeError("the rollout holds no unit credits: CreditPPO needs a vec env with credit='dense'")
        kept = torch.as_tensor(data["kept"], device=self.device)
        credit = torch.as_tensor(data["credit"], device=self.device)
        with torch.no_grad():
            chunks = [np.arange(n)[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            parts = [self._scores(data["obs"], rows) for rows in chunks]
            scores = torch.cat([p[0] for p in parts])
            valid = torch.cat([p[1] for p in parts])
            if self._anchor_policy is not None:
                anchor_margin = torch.cat([self._scores(data["obs"], rows, self._anchor_policy)[2] for rows in chunks])
            kept = kept & valid
            old = swap_probabilities(scores, valid, kept)
            adv = self.advantages(kept, credit, old)
            # one scale for the rollout: the credits' spread over the picks that have mass
            mass = torch.where(kept, old[1], old[0]) > 0
            adv = adv / (adv[mass].std() + 1e-8) if mass.sum() > 1 else adv
        losses, clip_fractions, drifts = [], [], []
        for _ in range(self.n_epochs):
            for rows in np.array_split(np.random.permutation(n), max(1, round(n / self.batch_size))):
                r = torch.as_tensor(rows, device=self.device)
                new_scores, _, margin = self._scores(data["obs"], rows)
                obj, clip_mass = swap_objective(
                    new_scores, valid[r], kept[r], adv[r], (old[0][r], old[1][r]), clip_range
                )
                pg_loss = -obj.mean()
                loss = pg_loss
                if self._anchor_policy is not None:
                    penalty, rms = anchor_penalty(margin, anchor_margin[r], valid[r], credit[r])
                    loss = pg_loss + self.anchor * penalty
                    drifts.append(rms)
                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                losses.append(pg_loss.item())
                clip_fractions.append(clip_mass.mean().item() / 2)  # two picks' mass per row
        self._n_updates += self.n_epochs
        self.logger.record("train/policy_gradient_loss", float(np.mean(losses)))
        self.logger.record("train/clip_fraction", float(np.mean(clip_fractions)))
        self.logger.record(
            "train/credit_abs_mean", float(credit.abs()[credit != 0].mean()) if (credit != 0).any() else 0.0
        )
        self.logger.record("train/scored_steps", n)
        if drifts:  # root-mean-square change of an uncredited unit's margin over STOP since PPO started
            self.logger.record("train/anchor_drift", float(np.mean(drifts)))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
