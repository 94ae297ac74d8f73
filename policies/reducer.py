"""The deployable reduction module: ``TokenReducer``, loadable and usable without the trainer.

Imports torch, safetensors, tokenizers and transformers' model classes only: no stable-baselines3, no gymnasium,
nothing from ``envs`` or ``agents``. Observations are built by :mod:`policies.processor`, the same code the
training environment uses.

A saved reducer is a directory::

    reducer_config.json   a ReducerConfig: format version, base model (spec, file hash, HF config), tokenizer
                          fingerprint, processor, budget and network configs, what it was trained on, and the
                          SHA-256 of model.safetensors
    model.safetensors     "network.*" (the keep network) and "features.*" (the frozen model's embedding table,
                          or its first k blocks when the policy reads layer-k features)
    tokenizer.json, ...   the tokenizer (Hugging Face tokenizer files, no pickle)

Long contexts: a context longer than ``max_len - len(question)`` tokens is split into consecutive windows that
each fit, every window is scored with the question, and the keep logits are concatenated
(``too_long="chunk"``, the default); ``too_long="error"`` raises instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.budget import Budget, BudgetConfig, BudgetError, keep_top
from policies.features import FeatureModule
from policies.fileio import atomic_directory
from policies.network import NetworkConfig, TokenKeepNetwork
from policies.processor import (
    ProcessorConfig,
    context_windows,
    encode_question,
    encode_text,
    pack_observations,
    pad_token_id,
)
from policies.reducer_config import (
    BaseModelInfo,
    ReducerConfig,
    ReducerError,
    TokenizerInfo,
    package_version,
    tokenizer_fingerprint,
)
from policies.reducer_files import read_reducer_files, write_reducer_files


@dataclass
class Reduction:
    """The result of reducing one context.

    Attributes:
        text: The reduced context text.
        kept_ids: Token ids kept, in order.
        keep_mask: Bool array over the context's tokens, True = kept.
        kept_ratio: ``kept_tokens / original_tokens``.
        original_tokens: Context tokens before reduction.
        kept_tokens: Context tokens after reduction.
    """

    text: str
    kept_ids: list[int]
    keep_mask: np.ndarray
    kept_ratio: float
    original_tokens: int
    kept_tokens: int


class TokenReducer(nn.Module):
    """A trained keep policy plus what it needs to compute its features.

    Args:
        features: The feature module (frozen-model embeddings or first k blocks).
        network: The keep network.
        tokenizer: The base model's tokenizer.
        config: The reducer config.
    """

    def __init__(
        self, features: FeatureModule, network: TokenKeepNetwork, tokenizer: Any, config: ReducerConfig
    ) -> None:
        super().__init__()
        if features.layer != config.processor.feature_layer:
            raise ReducerError(
                f"feature module is layer {features.layer}, config says {config.processor.feature_layer}"
            )
        self.features = features
        self.network = network
        self.tokenizer = tokenizer
        self.config = config
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_base_model(
        cls,
        model: nn.Module,
        tokenizer: Any,
        *,
        spec: str,
        file_hash: str | None = None,
        processor: ProcessorConfig | None = None,
        budget: BudgetConfig | None = None,
        network: TokenKeepNetwork | NetworkConfig | None = None,
        trained_on: dict[str, Any] | None = None,
    ) -> TokenReducer:
        """A reducer over a loaded ``*ForCausalLM``, sharing its weights; untrained unless ``network`` is given.

        Args:
            model: The frozen causal LM whose embeddings / first blocks give the features.
            tokenizer: Its tokenizer.
            spec: Its model spec, recorded in the config.
            file_hash: Hash of its weights file, when known.
            processor: Observation settings (default: :class:`ProcessorConfig` defaults).
            budget: Budget settings (default: :class:`BudgetConfig` defaults).
            network: A trained network, or a shape for a fresh untrained one.
            trained_on: Notes recorded in the config.
        """
        processor = processor or ProcessorConfig()
        budget = budget or BudgetConfig()
        features = FeatureModule.from_causal_lm(model, processor.feature_layer)
        if not isinstance(network, TokenKeepNetwork):
            network = TokenKeepNetwork(network or NetworkConfig(), features.width, budget.observation_size)
        hf_config = model.config.to_dict()
        hf_config.pop("quantization_config", None)
        hf_config.pop("_name_or_path", None)
        config = ReducerConfig(
            base_model=BaseModelInfo(spec=spec, file_hash=file_hash, hf_config=hf_config),
            tokenizer=TokenizerInfo(fingerprint=tokenizer_fingerprint(tokenizer), pad_id=pad_token_id(tokenizer)),
            processor=processor,
            budget=budget,
            network=network.config,
            trained_on=dict(trained_on or {}),
            package_version=package_version(),
        )
        return cls(features, network, tokenizer, config)

    @property
    def max_len(self) -> int:
        """Question + context tokens one window can hold."""
        return self.config.processor.max_len

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the reducer directory atomically (temporary directory, then rename).

        Raises:
            FileExistsError: If ``directory`` exists and is not empty.
        """
        with atomic_directory(directory) as tmp:
            self.write_files(tmp)
        return Path(directory)

    def write_files(self, directory: Path) -> None:
        """Write the reducer's files into an existing directory (use :meth:`save_pretrained` for atomicity)."""
        write_reducer_files(directory, self.features, self.network, self.tokenizer, self.config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> TokenReducer:
        """Load a reducer directory written by :meth:`save_pretrained` (safetensors, JSON, tokenizer files only).

        Raises:
            ReducerError: On a missing or corrupted file, an unknown format version, or a tokenizer that does
                not match the one the reducer was trained with.
        """
        return cls(*read_reducer_files(directory))

    def check_compatible(self, tokenizer: Any, model_spec: str | None = None, file_hash: str | None = None) -> None:
        """Raise ReducerError unless ``tokenizer`` (and the base model, when given) is the one trained for."""
        base = self.config.base_model
        if tokenizer_fingerprint(tokenizer) != self.config.tokenizer.fingerprint:
            raise ReducerError(f"this reducer was trained for a different tokenizer (base model {base.spec!r})")
        if file_hash and base.file_hash and file_hash != base.file_hash:
            raise ReducerError(
                f"this reducer was trained for base model file {base.file_hash[:12]}…, not {file_hash[:12]}…"
            )
        if model_spec and not (file_hash and base.file_hash) and model_spec != base.spec:
            raise ReducerError(f"this reducer was trained for base model {base.spec!r}, not {model_spec!r}")

    # ------------------------------------------------------------------ inference
    def encode(self, text: str) -> list[int]:
        """Token ids of a context text, as the policy sees them."""
        return list(encode_text(self.tokenizer, text))

    @torch.inference_mode()
    def keep_logits(
        self,
        contexts: Sequence[Sequence[int]],
        questions: Sequence[Sequence[int]],
        budgets: Sequence[Budget],
        max_batch_tokens: int = 16384,
    ) -> list[np.ndarray]:
        """Keep logits over each context's tokens, window by window when a context is long.

        Args:
            contexts: Context token ids.
            questions: Question token ids (:func:`~policies.processor.encode_question`).
            budgets: The budget of each context (the policy is conditioned on its token cost).
            max_batch_tokens: Padded-token budget of one feature micro-batch.

        Returns:
            One float32 array per context.
        """
        rows: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
        for i, (c, q) in enumerate(zip(contexts, questions, strict=True)):
            try:
                spans = context_windows(len(q), len(c), self.max_len)
            except ValueError as err:
                raise ReducerError(str(err)) from err
            rows += [(i, tuple(q), tuple(c[s])) for s in spans]
        if not rows:
            return [np.zeros(0, np.float32) for _ in contexts]
        pad = self.config.tokenizer.pad_id
        feats = self.features.encode([q + c for _, q, c in rows], pad, max_batch_tokens)
        budget_obs = [self.config.budget.observe(budgets[i]) for i, _, _ in rows]
        width = max(len(q) + len(c) for _, q, c in rows)
        obs = pack_observations(
            [q for _, q, _ in rows], [c for _, _, c in rows], feats, budget_obs, max_len=width, pad_id=pad
        )
        logits, _ = self.network({k: torch.as_tensor(v) for k, v in obs.items()})
        parts: list[list[np.ndarray]] = [[] for _ in contexts]
        for r, (i, q, c) in enumerate(rows):
            parts[i].append(logits[r, len(q) : len(q) + len(c)].float().numpy())
        return [np.concatenate(p) if p else np.zeros(0, np.float32) for p in parts]

    def reduce(
        self,
        context: str,
        question: str | None = None,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        token_cost: float | None = None,
        too_long: str = "chunk",
    ) -> Reduction:
        """Reduce one context; see :meth:`reduce_batch`."""
        return self.reduce_batch(
            [context],
            None if question is None else [question],
            rate=rate,
            target_tokens=target_tokens,
            token_cost=token_cost,
            too_long=too_long,
        )[0]

    def reduce_batch(
        self,
        contexts: Sequence[str],
        questions: Sequence[str | None] | None = None,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        token_cost: float | None = None,
        too_long: str = "chunk",
    ) -> list[Reduction]:
        """Reduce many contexts with batched forwards. Deterministic.

        Args:
            contexts: The texts to reduce.
            questions: The question for each context (or None: no question).
            rate: Keep ``round(rate * n)`` context tokens (at least 1), ranked by keep logit.
            target_tokens: Keep this many context tokens (capped at the context's length).
            token_cost: The token cost the policy is conditioned on (default: the reducer's). Without
                ``rate``/``target_tokens`` the policy keeps the tokens whose keep probability exceeds 0.5.
            too_long: ``"chunk"`` or ``"error"`` for contexts longer than one window (module docstring).

        Returns:
            One :class:`Reduction` per context.

        Raises:
            ReducerError: On an empty context, a bad budget, or a long context with ``too_long="error"``.
        """
        try:
            budget = Budget(rate=rate, target_tokens=target_tokens, token_cost=token_cost)
        except BudgetError as err:
            raise ReducerError(str(err)) from err
        if too_long not in ("chunk", "error"):
            raise ReducerError(f"too_long must be 'chunk' or 'error', got {too_long!r}")
        if questions is not None and len(questions) != len(contexts):
            raise ReducerError(f"got {len(contexts)} contexts but {len(questions)} questions")
        ctx_ids = [self.encode(c) for c in contexts]
        q_ids = [list(encode_question(self.tokenizer, q)) for q in (questions or [None] * len(contexts))]
        for i, (c, q) in enumerate(zip(ctx_ids, q_ids, strict=True)):
            if not c:
                raise ReducerError(f"context {i} is empty")
            if too_long == "error" and len(c) + len(q) > self.max_len:
                raise ReducerError(
                    f"context {i} has {len(c)} tokens + {len(q)} question tokens > max_len={self.max_len} "
                    "(pass too_long='chunk' to reduce it window by window)"
                )
        logits = self.keep_logits(ctx_ids, q_ids, [budget] * len(contexts))
        return [self.select(c, lg, budget) for c, lg in zip(ctx_ids, logits, strict=True)]

    def select(self, context_ids: Sequence[int], logits: np.ndarray, budget: Budget) -> Reduction:
        """The :class:`Reduction` of one context given its keep logits and budget."""
        n = len(context_ids)
        k = budget.keep_count(n)
        keep = keep_top(logits, k) if k is not None else np.asarray(logits > 0)
        kept = [int(t) for t, k_ in zip(context_ids, keep, strict=True) if k_]
        return Reduction(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            kept_ids=kept,
            keep_mask=keep,
            kept_ratio=len(kept) / n,
            original_tokens=n,
            kept_tokens=len(kept),
        )

    def compress_prompt(
        self,
        context: str | Sequence[str],
        instruction: str = "",
        question: str = "",
        rate: float = 0.5,
        target_token: int = -1,
    ) -> dict[str, Any]:
        """LLMLingua-shaped adapter: ``compressor.compress_prompt(...)`` with the same arguments and keys.

        Args:
            context: The context (a string or a list of strings, joined with blank lines).
            instruction: Kept as is, placed before the context.
            question: Kept as is, placed after the context; also conditions the policy.
            rate: Fraction of context tokens to keep (ignored when ``target_token`` > 0).
            target_token: Context tokens to keep; -1 uses ``rate``.

        Returns:
            ``compressed_prompt`` (str), ``origin_tokens`` and ``compressed_tokens`` (ints, whole prompt),
            ``ratio`` (float, origin / compressed) and ``rate`` (float, compressed / origin).
        """
        text = context if isinstance(context, str) else "\n\n".join(context)
        red = self.reduce(
            text,
            question or None,
            rate=None if target_token > 0 else rate,
            target_tokens=target_token if target_token > 0 else None,
        )
        parts_full = [p for p in (instruction, text, question) if p]
        parts = [p for p in (instruction, red.text, question) if p]
        origin = len(self.encode("\n\n".join(parts_full)))
        compressed_prompt = "\n\n".join(parts)
        compressed = len(self.encode(compressed_prompt))
        return {
            "compressed_prompt": compressed_prompt,
            "origin_tokens": origin,
            "compressed_tokens": compressed,
            "ratio": origin / max(compressed, 1),
            "rate": compressed / max(origin, 1),
        }

    def generate(
        self,
        lm: Any,
        context: str,
        question: str,
        *,
        answer_prefix: str = "",
        max_new_tokens: int = 32,
        **reduce_kwargs: Any,
    ) -> str:
        """Reduce the context, then generate the answer with the frozen model ``lm`` (a ``FrozenLM``).

        Raises:
            ReducerError: If ``lm`` uses another tokenizer or base model than the reducer was trained for.
        """
        self.check_compatible(lm.tokenizer, getattr(lm, "spec", None), getattr(lm, "file_hash", None))
        red = self.reduce(context, question, **reduce_kwargs)
        prompt, _ = lm.build_prompt(red.kept_ids, encode_question(lm.tokenizer, question), lm.encode(answer_prefix))
        return lm.decode(lm.generate([prompt], max_new_tokens=max_new_tokens)[0])
