"""The shared engine behind TokenKeep-v0: observations, cached full-context data and batched rewards.

One :class:`TokenKeepCore` holds the frozen model, the tokenised example pool, the reward score
(:mod:`envs.rewards`) and a bounded cache of per-example features and full-context scores. The single env and the
batched vec env both call :meth:`TokenKeepCore.observe` and :meth:`TokenKeepCore.step_batch`, so a batch of n
episodes costs one frozen-model forward (per micro-batch), and full-context work is done once per example.

Observations are :func:`policies.observations.pack_observations`, as the deployed reducer packs them. Action: one
priority per unit (``Box(-1, 1, (max_len,))``, aligned with ``unit_index``). An episode is ``processor.rounds``
steps of the selection engine (:class:`policies.selection.Selection`, also the reducer's and the warm start's): a
round before the last keeps a probe, scores nothing, earns 0; the last round's keep decision is scored.

Force-keep: an example's ``force_keep`` spans mark units every selection keeps, first and inside the budget. The
observation gives those units ``unit_lengths`` 0 and ``limits`` what is left of the budget
(:func:`policies.budget.forced_limits`), so the ranking's log-probability covers exactly the picks that decide
what is kept. A drawn rate too small for the forced units is raised to fit them (:meth:`TokenKeepCore.sample`);
a budget given explicitly that is too small is refused.

Contexts longer than ``max_len`` with the question: ``too_long="error"`` (default) raises naming the example;
``"skip"`` drops them from the pool and reports how many. Nothing is ever truncated silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from envs.cache import LRUCache, tensor_bytes
from envs.credit import credit_gains, unit_credits
from envs.lm.backends import BackendError
from envs.lm.frozen_lm import FrozenLM
from envs.rewards import StepResult, TaskScore, make_score, results, task_gain
from envs.tasks.examples import EncodedExample, Example, encode_example, prepare_examples
from envs.tasks.specs import load_tasks
from policies.budget import (
    Budget,
    BudgetConfig,
    TokenLimits,
    check_forced,
    forced_limits,
    forced_tokens,
)
from policies.force_keep import force_keep_mask, resolve_force_keep
from policies.observations import observation_layout, pack_observations
from policies.processor import Encoded, ProcessorConfig
from policies.selection import Selection
from policies.semantic import SentenceEncoder


class TokenKeepCore:
    """Shared state and batched computation for TokenKeep environments.

    Args:
        model: A loaded :class:`FrozenLM` (shared, never reloaded) or a model spec to load.
        tasks: A task spec string (see :mod:`envs.tasks.specs`) or a list of examples.
        processor: How observations are built (``max_len``, feature layer).
        budget: The budgets episodes are drawn from (and the policy is conditioned on).
        reward: A task score's name (:data:`envs.rewards.SCORES`), a :class:`TaskScore` or a callable.
        num_examples: Examples per synthetic task spec in the pool.
        task_seed: Seed used to generate synthetic examples.
        too_long: ``"error"`` or ``"skip"`` for contexts that do not fit (see the module docstring).
        cache_bytes: Memory bound of the feature and full-score cache.
        dtype: Model dtype when ``model`` is a spec.
        encoder: The sentence encoder of ``processor.semantic`` (default: :meth:`SentenceEncoder.default`).
    """

    def __init__(
        self,
        model: FrozenLM | str = "smollm2-135m",
        tasks: str | Sequence[Example] = "passkey:train",
        *,
        processor: ProcessorConfig | None = None,
        budget: BudgetConfig | None = None,
        reward: str | TaskScore | Callable[..., Sequence[float]] = "loglik",
        num_examples: int = 256,
        task_seed: int = 0,
        too_long: str = "error",
        cache_bytes: float = 2**30,
        dtype: str = "float32",
        encoder: SentenceEncoder | None = None,
    ) -> None:
        self.lm = model if isinstance(model, FrozenLM) else FrozenLM.load(model, dtype=dtype)
        if too_long not in ("error", "skip"):
            raise ValueError(f"too_long must be 'error' or 'skip', got {too_long!r}")
        self.processor = processor if processor is not None else ProcessorConfig()
        self.budget = budget if budget is not None else BudgetConfig()
        self.max_len = self.processor.max_len
        self.encoder = (encoder or SentenceEncoder.default()) if self.processor.semantic else None
        self.features = self.lm.feature_module(self.processor.feature_layer, self.processor.attention_layers)
        self.score = make_score(reward)
        examples = load_tasks(tasks, default_n=num_examples, seed=task_seed) if isinstance(tasks, str) else list(tasks)
        if not examples:
            raise ValueError("the task pool is empty")
        self.pool: list[EncodedExample] = []
        skipped = 0
        for i, ex in enumerate(examples):
            enc = encode_example(self.lm.tokenizer, ex)
            if len(enc.question) + len(enc.context) > self.max_len:
                if too_long == "error":
                    raise ValueError(
                        f"example {i} ({ex.family}) needs {len(enc.question)} question + {len(enc.context)} "
                        f"context tokens > max_len={self.max_len}; raise max_len or pass too_long='skip'"
                    )
                skipped += 1
                continue
            self.pool.append(enc)
        if not self.pool:
            raise ValueError(f"every example is longer than max_len={self.max_len}")
        self.inputs: list[Encoded] = prepare_examples(self.processor, self.pool, self.encoder)
        self.forced_units: list[np.ndarray | None] = [self._forced_units(i) for i in range(len(self.pool))]
        by_family: dict[str, list[int]] = {}
        for i, e in enumerate(self.pool):
            by_family.setdefault(e.example.family, []).append(i)
        self.families: list[list[int]] = list(by_family.values())  # pool indices by family, for sample()
        if skipped:
            warnings.warn(
                f"skipped {skipped} of {len(examples)} examples longer than max_len={self.max_len}", stacklevel=2
            )
        self.skipped = skipped
        # what counterfactual credit (envs.credit) has cost: groups or episodes credited, prompts, context tokens
        self.credit_stats = {"groups": 0, "episodes": 0, "prompts": 0, "context_tokens": 0}
        self.cache = LRUCache(cache_bytes, cost=tensor_bytes)
        layout = observation_layout(
            self.max_len,
            self.features.hidden_size,
            self.processor.lexical_size,
            self.budget.observation_size,
            self.lm.vocab_size,
            self.features.attention_size,
        )
        self.observation_space = spaces.Dict(
            {name: spaces.Box(low, high, shape, dtype) for name, (shape, dtype, low, high) in layout.items()}
        )
        self.action_space = spaces.Box(-1.0, 1.0, (self.max_len,), np.float32)

    def _forced_units(self, index: int) -> np.ndarray | None:
        """Bool per unit of pool example ``index``: the units its ``force_keep`` spans touch (None: none)."""
        ex = self.pool[index].example
        if not ex.force_keep:
            return None
        try:
            spans = resolve_force_keep(ex.context, ex.force_keep)
        except ValueError as err:
            raise ValueError(f"example {index} ({ex.family}): {err}") from err
        enc = self.inputs[index]
        return np.bincount(enc.unit_index[force_keep_mask(enc, spans)], minlength=enc.n_units) > 0

    def forced_tokens(self, index: int) -> int:
        """Context tokens of pool example ``index`` that every selection keeps (its force-kept units)."""
        return forced_tokens(self.inputs[index].unit_lengths, self.forced_units[index])

    def check_budget(self, index: int, budget: Budget) -> None:
        """Refuse a budget whose rate or target is smaller than example ``index``'s force-kept tokens.

        Raises:
            ValueError: Naming the example, its forced tokens and the budget in tokens.
        """
        try:
            check_forced(self.forced_tokens(index), self.limits(index, budget))
        except ValueError as err:
            raise ValueError(f"example {index} ({self.pool[index].example.family}): {err}") from err

    # ------------------------------------------------------------------ episodes
    def sample(self, rng: np.random.Generator) -> tuple[int, Budget]:
        """Draw an example index and a budget.

        Examples are drawn family by family (a family uniformly, then one of its examples), so a family with more
        examples in the pool is not played more often. A drawn rate below the example's force-kept share of its
        context is raised to that share, so that the forced units fit (the draws themselves, and so the random
        streams, are unchanged).
        """
        family = self.families[int(rng.integers(len(self.families)))]
        index, budget = family[int(rng.integers(len(family)))], self.budget.sample(rng)
        n_forced = self.forced_tokens(index)
        if budget.rate is not None and n_forced > self.limits(index, budget).max_tokens:
            budget = Budget(rate=min(1.0, n_forced / len(self.pool[index].context)))
        return index, budget

    def _cached(self, kind: str, indices: Sequence[int], compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        """Per-example values from the cache; the misses are computed together by one ``compute(missing)`` call."""
        out: dict[int, Any] = {}
        for i in dict.fromkeys(indices):
            hit = self.cache.get((kind, i))
            if hit is not None:
                out[i] = hit
        missing = [i for i in dict.fromkeys(indices) if i not in out]
        if missing:
            for i, value in zip(missing, compute(missing), strict=True):
                self.cache.put((kind, i), value)
                out[i] = value
        return [out[i] for i in indices]

    def _features(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Per-token features (float16) of each example's observation sequence (question + context)."""

        def compute(missing: list[int]) -> list[torch.Tensor]:
            seqs = [self.pool[i].question + self.pool[i].context for i in missing]
            q_len = [len(self.pool[i].question) for i in missing]
            return self.features.extract(seqs, self.lm.pad_id, self.lm.max_batch_tokens, question_lengths=q_len)

        return self._cached("feat", indices, compute)

    def limits(self, index: int, budget: Budget) -> TokenLimits:
        """Token limits of example ``index`` under ``budget`` (its last round's)."""
        return self.budget.limits(budget, len(self.pool[index].context))

    def start(self, indices: Sequence[int], budgets: Sequence[Budget], last_round: bool = False) -> Selection:
        """A selection episode per example (the engine the reducer runs too), in its first round.

        ``last_round``: open it in the last round instead (to apply a final keep decision on its own).
        """
        inputs = [self.inputs[i] for i in indices]
        units = [self.forced_units[i] for i in indices]
        forced = [None if u is None else u[x.unit_index] for u, x in zip(units, inputs, strict=True)]  # per token
        return Selection.start(self.processor, self.budget, inputs, budgets, forced, last_round=last_round)

    def observe(
        self, indices: Sequence[int], budgets: Sequence[Budget], selection: Selection | None = None
    ) -> dict[str, np.ndarray]:
        """Stacked observations ``[B, ...]`` for examples ``indices`` under ``budgets``.

        Args:
            indices: Example indices.
            budgets: Their budgets.
            selection: Their episode (:meth:`start`) in the round to observe; None: the first round.
        """
        sel = selection if selection is not None else self.start(indices, budgets)
        sizes = [len(self.pool[i].context) for i in indices]
        # force-kept units: not ranked (unit_lengths 0), and the limits are what they leave of the budget
        limits = [forced_limits(sel.round_limits(k), self.forced_tokens(i)) for k, i in enumerate(indices)]
        return pack_observations(
            sel.current,
            self._features(indices),
            [self.budget.observe(b, n) for b, n in zip(budgets, sizes, strict=True)],
            max_len=self.max_len,
            pad_id=self.lm.pad_id,
            limits=[lim.as_array() for lim in limits],
            attention_size=self.features.attention_size,
            forced_units=[self.forced_units[i] for i in indices],
        )

    def keep_mask(self, index: int, budget: Budget, action: np.ndarray) -> np.ndarray:
        """Bool mask over example ``index``'s context tokens: what the last round keeps for ``action``.

        Raises:
            BudgetError: If the example's force-kept units alone exceed the budget.
        """
        return self.start([index], [budget], last_round=True).keep([action])[0]

    def full_scores(self, indices: Sequence[int]) -> list[tuple[float, Any]]:
        """Cached ``(full-context score, reference)`` per example; misses are scored in one batch."""

        def compute(missing: list[int]) -> list[tuple[float, Any]]:
            res = self._score(missing)
            return [(float(s), ref) for s, ref in zip(res.scores.tolist(), res.references, strict=True)]

        return self._cached("full", indices, compute)

    def score_contexts(self, indices: Sequence[int], contexts: Sequence[Sequence[int]]) -> np.ndarray:
        """The reward's task score of each example with a replacement context, in one batched call.

        Absolute scores (the full context's is not subtracted); differences between two contexts of the same
        example are what a teacher compares (:mod:`agents.credit`).

        Args:
            indices: Pool example per row (repeats allowed).
            contexts: The context token ids to score each row with.
        """
        refs = [ref for _, ref in self.full_scores(indices)] if self.score.needs_reference else [None] * len(indices)
        return self._score(list(indices), [tuple(c) for c in contexts], refs).scores.numpy().astype(np.float64)

    def _score(
        self, indices: Sequence[int], contexts: Sequence[Sequence[int]] | None = None, refs: Sequence[Any] | None = None
    ) -> Any:
        """The reward score of a batch; an exception or a non-finite score is re-raised naming the example.

        PPO must never see NaN or inf: one bad score stops training with the example that caused it.
        """
        encs = [self.pool[i] for i in indices]
        try:
            res = self.score(self.lm, encs, contexts, refs) if contexts is not None else self.score(self.lm, encs)
        except BackendError:
            raise  # the server's own message (down, wrong model) says more than the examples do
        except Exception as err:
            names = ", ".join(f"{i} ({self.pool[i].example.family})" for i in list(indices)[:3])
            raise RuntimeError(f"the {self.score.name} score failed on examples {names}: {err}") from err
        bad = [r for r, v in enumerate(res.scores.tolist()) if not np.isfinite(v)]
        if bad:
            i = indices[bad[0]]
            ex = self.pool[i].example
            raise ValueError(
                f"the {self.score.name} score of example {i} ({ex.family}: {ex.question!r}) is "
                f"{res.scores[bad[0]].item()}; rewards must be finite"
            )
        return res

    def check_action(self, action: Any) -> np.ndarray:
        """Validate one action and return it as float64 priorities of shape ``(max_len,)``.

        Raises:
            ValueError: On a wrong shape, a non-numeric dtype, or a value that is not finite.
        """
        a = np.asarray(action)
        if a.shape != (self.max_len,):
            raise ValueError(f"action must have shape ({self.max_len},), got {a.shape}")
        if not (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"action must be a numeric array of unit priorities, got dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"action priorities must be finite, got e.g. {a[~np.isfinite(a)][:3].tolist()}")
        return a

    def step_batch(
        self,
        indices: Sequence[int],
        budgets: Sequence[Budget],
        actions: Sequence[Any],
        full_context: bool = True,
        selection: Selection | None = None,
        credit_group: int = 0,
        credit_candidates: int = 0,
    ) -> StepResult:
        """Score a batch of keep decisions with one frozen-model call.

        Identical reduced prompts in the batch (the same example kept the same way, as happens within a group once
        the policy is confident) are scored once.

        Args:
            indices: Example index per episode.
            budgets: Budget per episode.
            actions: Unit priorities per episode, aligned with the observation's unit indices.
            full_context: Score the full contexts too (cached per example) and make relative rewards relative to
                them. False skips that forward where the score needs no reference: the rewards are then the
                task scores themselves and ``full_score`` is NaN (what a group baseline, which subtracts the mean
                of the group, needs: the full context's score cancels there).
            selection: The episodes (:meth:`start`) in their last round; None: the actions are applied as last-round
                decisions.
            credit_group: Groups of this many consecutive episodes play one example (> 1): each episode's task
                score is its counterfactual credit within the group (:func:`envs.credit.credit_gains`), not its
                own prompt's score; ``task_score`` is then NaN in the infos.
            credit_candidates: > 0: each episode's units get their dense counterfactual credit at its own selection
                (:func:`envs.credit.unit_credits` with this many candidates), in ``info["unit_credit"]``; the reward
                is the selection's own task score (not relative to the full context).

        Returns:
            Rewards and infos.
        """
        actions = [self.check_action(a) for a in actions]
        masks = (selection if selection is not None else self.start(indices, budgets, last_round=True)).keep(actions)
        kept_ids = [
            tuple(t for t, k in zip(self.pool[i].context, keep, strict=True) if k)
            for i, keep in zip(indices, masks, strict=True)
        ]
        if credit_group > 1:
            gains = credit_gains(self, indices, masks, credit_group)
            return self._results(indices, budgets, kept_ids, gains, [float("nan")] * len(indices))
        if credit_candidates > 0:
            credit, kept, scores = unit_credits(self, indices, masks, actions, credit_candidates)
            res = self._results(indices, budgets, kept_ids, scores.tolist(), scores.tolist())
            for r, info in enumerate(res.infos):
                info["unit_credit"], info["unit_kept"] = credit[r], kept[r]
            return res
        need_full = full_context or self.score.needs_reference
        full = self.full_scores(indices) if need_full else [(float("nan"), None)] * len(indices)
        # Episodes that keep everything reuse the cached full-context score: exact, and no forward needed.
        todo = [
            r
            for r, (i, k) in enumerate(zip(indices, kept_ids, strict=True))
            if not need_full or len(k) < len(self.pool[i].context)
        ]
        scores = [f[0] for f in full]
        unique = list(dict.fromkeys((indices[r], kept_ids[r]) for r in todo))
        if unique:
            first = {key: next(r for r in todo if (indices[r], kept_ids[r]) == key) for key in unique}
            res = self._score([i for i, _ in unique], [k for _, k in unique], [full[first[key]][1] for key in unique])
            value = dict(zip(unique, res.scores.tolist(), strict=True))
            for r in todo:
                scores[r] = float(value[(indices[r], kept_ids[r])])
        relative = self.score.relative and need_full
        gains = [task_gain(s, f[0], relative) for s, f in zip(scores, full, strict=True)]
        return self._results(indices, budgets, kept_ids, gains, scores, [f[0] for f in full])

    def _results(
        self,
        indices: Sequence[int],
        budgets: Sequence[Budget],
        kept_ids: Sequence[Sequence[int]],
        gains: Sequence[float],
        scores: Sequence[float],
        full: Sequence[float] | None = None,
    ) -> StepResult:
        """Rewards and infos of scored keep decisions (``kept_ids``: the kept tokens): :func:`envs.rewards.results`."""
        costs = [self.budget.token_cost(b) for b in budgets]
        episodes = [self.pool[i] for i in indices]
        return results(episodes, indices, budgets, kept_ids, gains, scores, costs, self.lm.decode, full)
