"""The deployable reduction module: ``TokenReducer``, loadable and usable without the trainer.

Imports torch, safetensors and transformers' tokenizer/model classes only: no stable-baselines3, no gymnasium.

A saved reducer is a directory::

    reducer_config.json   format version, base model spec and file hash, tokenizer fingerprint, max_len,
                          feature layer, the budget (token-cost) range it was trained on, package version,
                          network shape, and the SHA-256 of model.safetensors
    model.safetensors     "network.*" (the keep network) and "features.*" (the frozen model's embedding
                          table, plus its first k blocks when the policy reads layer-k features)
    tokenizer.json, ...   the tokenizer (Hugging Face tokenizer files, no pickle)

Behaviour on long inputs: a context longer than ``max_len - len(question)`` tokens is split into consecutive
windows that each fit, every window is scored with the question, and the keep decisions are concatenated
(``too_long="chunk"``, the default); ``too_long="error"`` raises instead.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from policies.fileio import atomic_directory, file_sha256
from policies.network import NetworkConfig, TokenKeepNetwork

FORMAT_VERSION = 1
CONFIG_NAME = "reducer_config.json"
WEIGHTS_NAME = "model.safetensors"


class ReducerError(ValueError):
    """A reducer cannot be loaded or used as asked; the message names the cause."""


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


def keep_top(scores: Any, k: int | None = None, *, rate: float | None = None) -> np.ndarray:
    """Bool keep mask of the ``k`` highest scores (or ``round(rate * n)``, at least 1); ties go to earlier tokens.

    The one ranking rule shared by the reducer, the baselines and the training-time evaluation, so every method
    meets a requested rate the same way and results are deterministic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if k is None:
        if rate is None:
            raise ValueError("give k or rate")
        k = max(1, round(rate * n))
    order = np.lexsort((np.arange(n), -scores))
    keep = np.zeros(n, dtype=bool)
    keep[order[: min(n, k)]] = True
    return keep


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 over a tokenizer's vocabulary and special tokens: equal fingerprints tokenise identically."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = sorted(str(t) for t in tokenizer.all_special_tokens)
    payload = json.dumps([vocab, special], ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()


def package_version() -> str:
    """Installed tokenkeep version, or "unknown" when running from a plain checkout."""
    try:
        return importlib.metadata.version("tokenkeep")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class FeatureModule(nn.Module):
    """The frozen model's embedding table and, for layer k > 0, its first k blocks (no final norm).

    Features are rounded through float16, exactly as the training environment caches them.

    Args:
        embedding: For k = 0, the input embedding table (float16); None for k > 0.
        decoder: For k > 0, a decoder with k blocks (its own embedding table included) whose final norm is the
            identity; None for k = 0.
    """

    def __init__(self, embedding: nn.Embedding | None = None, decoder: nn.Module | None = None) -> None:
        super().__init__()
        if (embedding is None) == (decoder is None):
            raise ValueError("give exactly one of embedding (layer 0) or decoder (layer k > 0)")
        self.embedding = embedding
        self.decoder = decoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` features for right-padded ``ids`` with ``mask``."""
        if self.embedding is not None:
            h = self.embedding(ids)
        else:
            h = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return h.half().float()


def build_feature_module(hf_config: dict, layer: int, dtype: torch.dtype = torch.float32) -> FeatureModule:
    """An empty :class:`FeatureModule` for a base model config (``config.to_dict()``) and feature layer."""
    vocab, width = int(hf_config["vocab_size"]), int(hf_config["hidden_size"])
    if layer == 0:
        return FeatureModule(nn.Embedding(vocab, width, dtype=torch.float16))
    from transformers import AutoConfig, AutoModel

    cfg = dict(hf_config)
    cfg["num_hidden_layers"] = layer
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "transformers_version"})
    decoder = AutoModel.from_config(config, dtype=dtype)
    decoder.norm = nn.Identity()
    return FeatureModule(decoder=decoder)


class TokenReducer(nn.Module):
    """A trained keep policy plus what it needs to compute its features.

    Args:
        features: The feature module (frozen-model embeddings / first k blocks).
        network: The trained :class:`~policies.network.TokenKeepNetwork`.
        tokenizer: The base model's tokenizer.
        config: The reducer config (see the module docstring; written as ``reducer_config.json``).
    """

    def __init__(self, features: FeatureModule, network: TokenKeepNetwork, tokenizer: Any, config: dict) -> None:
        super().__init__()
        self.features = features
        self.network = network
        self.tokenizer = tokenizer
        self.config = config
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ properties
    @property
    def max_len(self) -> int:
        """Question + context tokens one window can hold."""
        return int(self.config["max_len"])

    @property
    def default_token_cost(self) -> float:
        """Token cost used when none is given: the one the run evaluated with."""
        return float(self.config["budget"]["default_token_cost"])

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
        tensors = {f"network.{k}": v.contiguous() for k, v in self.network.state_dict().items()}
        tensors |= {f"features.{k}": v.contiguous() for k, v in self.features.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        config = dict(self.config)
        config["weights_sha256"] = file_sha256(directory / WEIGHTS_NAME)
        config["tokenizer"] = dict(config["tokenizer"], fingerprint=tokenizer_fingerprint(self.tokenizer))
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        self.tokenizer.save_pretrained(directory)
        self.config = config

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> TokenReducer:
        """Load a reducer directory written by :meth:`save_pretrained`.

        Raises:
            ReducerError: On a missing or corrupted file, an unknown format version, or a tokenizer that does
                not match the one the reducer was trained with.
        """
        from transformers import AutoTokenizer

        d = Path(directory)
        if not d.is_dir():
            raise ReducerError(f"reducer directory not found: {d}")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / name).is_file():
                raise ReducerError(f"{d} is not a reducer: {name} is missing")
        try:
            config = json.loads((d / CONFIG_NAME).read_text())
        except json.JSONDecodeError as err:
            raise ReducerError(f"{d / CONFIG_NAME} is corrupted: {err}") from err
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ReducerError(
                f"{d / CONFIG_NAME} has format_version {version!r}; this tokenkeep reads {FORMAT_VERSION}"
            )
        if config.get("weights_sha256") and file_sha256(d / WEIGHTS_NAME) != config["weights_sha256"]:
            raise ReducerError(f"{d / WEIGHTS_NAME} is corrupted: its SHA-256 does not match {CONFIG_NAME}")
        try:
            tensors = load_file(str(d / WEIGHTS_NAME))
        except Exception as err:  # safetensors raises its own error types
            raise ReducerError(f"{d / WEIGHTS_NAME} cannot be read: {err}") from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(d)
        except Exception as err:
            raise ReducerError(f"the tokenizer files in {d} cannot be loaded: {err}") from err
        if tokenizer_fingerprint(tokenizer) != config["tokenizer"]["fingerprint"]:
            raise ReducerError(f"the tokenizer in {d} is not the one this reducer was trained with")
        network = TokenKeepNetwork(NetworkConfig(**config["network"]))
        features = build_feature_module(config["base_model"]["hf_config"], int(config["feature_layer"]))
        try:
            network.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("network.")})
            features.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("features.")})
        except RuntimeError as err:
            raise ReducerError(f"{d / WEIGHTS_NAME} does not match {CONFIG_NAME}: {err}") from err
        return cls(features, network, tokenizer, config)

    def check_compatible(self, tokenizer: Any, model_spec: str | None = None, file_hash: str | None = None) -> None:
        """Raise ReducerError unless ``tokenizer`` (and the base model, when given) is the one trained for."""
        if tokenizer_fingerprint(tokenizer) != self.config["tokenizer"]["fingerprint"]:
            raise ReducerError(
                f"this reducer was trained for a different tokenizer (base model {self.config['base_model']['spec']!r})"
            )
        base = self.config["base_model"]
        if file_hash and base.get("file_hash") and file_hash != base["file_hash"]:
            raise ReducerError(
                f"this reducer was trained for base model file {base['file_hash'][:12]}…, not {file_hash[:12]}…"
            )
        if model_spec and not (file_hash and base.get("file_hash")) and model_spec != base["spec"]:
            raise ReducerError(f"this reducer was trained for base model {base['spec']!r}, not {model_spec!r}")

    # ------------------------------------------------------------------ inference
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    @torch.inference_mode()
    def keep_logits(
        self, contexts: Sequence[Sequence[int]], questions: Sequence[Sequence[int]], token_costs: Sequence[float]
    ) -> list[torch.Tensor]:
        """Keep logits over each context's tokens (windows of ``max_len`` when a context is long)."""
        windows, owners = [], []
        for i, (c, q) in enumerate(zip(contexts, questions, strict=True)):
            room = self.max_len - len(q)
            if room < 1:
                raise ReducerError(f"the question has {len(q)} tokens, leaving no room in max_len={self.max_len}")
            for s in range(0, len(c), room):
                windows.append((list(q), list(c[s : s + room]), token_costs[i]))
                owners.append(i)
        width = max(len(q) + len(c) for q, c, _ in windows)
        b = len(windows)
        ids = torch.full((b, width), int(self.config["tokenizer"]["pad_id"]), dtype=torch.long)
        att = torch.zeros((b, width), dtype=torch.long)
        red = torch.zeros((b, width), dtype=torch.long)
        for r, (q, c, _) in enumerate(windows):
            ids[r, : len(q) + len(c)] = torch.tensor(q + c)
            att[r, : len(q) + len(c)] = 1
            red[r, len(q) : len(q) + len(c)] = 1
        costs = torch.tensor([[w[2]] for w in windows], dtype=torch.float32)
        logits, _ = self.network(self.features(ids, att), att, red, costs)
        out: list[list[torch.Tensor]] = [[] for _ in contexts]
        for r, (q, c, _) in enumerate(windows):
            out[owners[r]].append(logits[r, len(q) : len(q) + len(c)])
        return [torch.cat(parts) if parts else torch.empty(0) for parts in out]

    def reduce(
        self,
        context: str,
        question: str | None = None,
        *,
        rate: float | None = None,
        token_cost: float | None = None,
        target_tokens: int | None = None,
        too_long: str = "chunk",
    ) -> Reduction:
        """Reduce one context; see :meth:`reduce_batch`."""
        return self.reduce_batch(
            [context],
            None if question is None else [question],
            rate=rate,
            token_cost=token_cost,
            target_tokens=target_tokens,
            too_long=too_long,
        )[0]

    def reduce_batch(
        self,
        contexts: Sequence[str],
        questions: Sequence[str] | None = None,
        *,
        rate: float | None = None,
        token_cost: float | None = None,
        target_tokens: int | None = None,
        too_long: str = "chunk",
    ) -> list[Reduction]:
        """Reduce many contexts in one batched forward. Deterministic.

        Args:
            contexts: The texts to reduce.
            questions: The question for each context (or None: no question).
            rate: Keep exactly ``round(rate * n)`` context tokens (at least 1), ranked by keep probability.
            token_cost: The token cost the policy is conditioned on (default: the one it was evaluated at).
                Without ``rate``/``target_tokens`` it keeps the tokens whose keep probability exceeds 0.5.
            target_tokens: Keep exactly this many context tokens (capped at the context's length).
            too_long: ``"chunk"`` or ``"error"`` for contexts longer than one window (module docstring).

        Returns:
            One :class:`Reduction` per context.

        Raises:
            ReducerError: On an empty context, conflicting or out-of-range options, or a long context with
                ``too_long="error"``.
        """
        if rate is not None and target_tokens is not None:
            raise ReducerError("give rate or target_tokens, not both")
        if rate is not None and not 0 < rate <= 1:
            raise ReducerError(f"rate must be in (0, 1], got {rate}")
        if target_tokens is not None and target_tokens < 1:
            raise ReducerError(f"target_tokens must be >= 1, got {target_tokens}")
        if too_long not in ("chunk", "error"):
            raise ReducerError(f"too_long must be 'chunk' or 'error', got {too_long!r}")
        if questions is not None and len(questions) != len(contexts):
            raise ReducerError(f"got {len(contexts)} contexts but {len(questions)} questions")
        cost = self.default_token_cost if token_cost is None else float(token_cost)
        if cost < 0:
            raise ReducerError(f"token_cost must be >= 0, got {cost}")
        ctx_ids = [self._encode(c) for c in contexts]
        q_ids = [self._encode(" " + q.strip()) if q else [] for q in (questions or [None] * len(contexts))]
        for i, (c, q) in enumerate(zip(ctx_ids, q_ids, strict=True)):
            if not c:
                raise ReducerError(f"context {i} is empty")
            if too_long == "error" and len(c) + len(q) > self.max_len:
                raise ReducerError(
                    f"context {i} has {len(c)} tokens + {len(q)} question tokens > max_len={self.max_len} "
                    "(pass too_long='chunk' to reduce it window by window)"
                )
        logits = self.keep_logits(ctx_ids, q_ids, [cost] * len(contexts))
        out = []
        for c, lg in zip(ctx_ids, logits, strict=True):
            n = len(c)
            if rate is not None or target_tokens is not None:
                keep = keep_top(lg.numpy(), target_tokens, rate=rate)
            else:
                keep = (lg > 0).numpy()
            kept = [t for t, k_ in zip(c, keep, strict=True) if k_]
            out.append(
                Reduction(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    kept_ids=kept,
                    keep_mask=keep,
                    kept_ratio=len(kept) / n,
                    original_tokens=n,
                    kept_tokens=len(kept),
                )
            )
        return out

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
        origin = len(self._encode("\n\n".join(parts_full)))
        compressed_prompt = "\n\n".join(parts)
        compressed = len(self._encode(compressed_prompt))
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
        prompt, _ = lm.build_prompt(red.kept_ids, lm.encode(" " + question.strip()), lm.encode(answer_prefix))
        return lm.decode(lm.generate([prompt], max_new_tokens=max_new_tokens)[0])
