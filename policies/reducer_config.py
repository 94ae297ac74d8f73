"""``reducer_config.json``: what a saved reducer records about itself, typed.

A :class:`ReducerConfig` holds the base model it was trained for, the tokenizer's fingerprint, and the
processor, budget and network configs that rebuild it; :mod:`policies.config_io` reads it back with
validation. Nothing in it is a path on the machine that wrote it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from typing import Any

from policies.budget import BudgetConfig
from policies.network import NetworkConfig
from policies.processor import ProcessorConfig
from policies.tokenization import pad_token_id

FORMAT_VERSION = 2
"""Layout version of a reducer directory; readers refuse other versions."""


class ReducerError(ValueError):
    """A reducer cannot be loaded or used as asked; the message names the cause."""


@dataclass
class BaseModelInfo:
    """The frozen model a reducer was trained for.

    Attributes:
        spec: The model spec it was loaded from (e.g. ``smollm2-135m``).
        file_hash: SHA-256 of its weights file, when known.
        hf_config: Its Hugging Face config (``config.to_dict()``), to rebuild the feature module.
    """

    spec: str
    file_hash: str | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizerInfo:
    """The tokenizer a reducer was trained with.

    Attributes:
        fingerprint: :func:`tokenizer_fingerprint` of it.
        pad_id: Token id used for padding.
    """

    fingerprint: str
    pad_id: int


@dataclass
class ReducerConfig:
    """Everything needed to rebuild and check a reducer; written as ``reducer_config.json``.

    Attributes:
        base_model: The frozen model it was trained for.
        tokenizer: The tokenizer it was trained with.
        processor: How observations are built.
        budget: The budgets it was trained on and its default.
        network: The keep network's shape.
        trained_on: Free-form notes: tasks, reward, seed.
        format_version: Layout version of the reducer directory.
        package_version: tokenkeep version that wrote it.
        weights_sha256: SHA-256 of ``model.safetensors`` (filled in on save).
        encoder_sha256: SHA-256 of ``sentence_encoder/model.safetensors`` (with the semantic channel; on save).
    """

    base_model: BaseModelInfo
    tokenizer: TokenizerInfo
    processor: ProcessorConfig
    budget: BudgetConfig
    network: NetworkConfig
    trained_on: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    package_version: str = "unknown"
    weights_sha256: str = ""
    encoder_sha256: str = ""

    @classmethod
    def for_base_model(
        cls,
        model: Any,
        tokenizer: Any,
        spec: str,
        file_hash: str | None,
        processor: ProcessorConfig,
        budget: BudgetConfig,
        network: NetworkConfig,
        trained_on: dict[str, Any] | None = None,
    ) -> ReducerConfig:
        """The config of a reducer over a loaded ``*ForCausalLM`` (its HF config, minus local paths, is recorded)."""
        hf_config = model.config.to_dict()
        hf_config.pop("quantization_config", None)
        hf_config.pop("_name_or_path", None)
        return cls(
            base_model=BaseModelInfo(spec=spec, file_hash=file_hash, hf_config=hf_config),
            tokenizer=TokenizerInfo(fingerprint=tokenizer_fingerprint(tokenizer), pad_id=pad_token_id(tokenizer)),
            processor=processor,
            budget=budget,
            network=network,
            trained_on=dict(trained_on or {}),
            package_version=package_version(),
        )


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


def check_compatible(
    config: ReducerConfig, tokenizer: Any, model_spec: str | None = None, file_hash: str | None = None
) -> None:
    """Raise ReducerError unless ``tokenizer`` (and the base model, when given) is the one ``config`` was trained for.

    The tokenizer is compared by fingerprint; the base model by its weights file's hash when both sides know it,
    else by spec.
    """
    base = config.base_model
    if tokenizer_fingerprint(tokenizer) != config.tokenizer.fingerprint:
        raise ReducerError(
            f"this reducer was trained for a different tokenizer (base model {base.spec!r}); to serve another "
            "model, re-tokenize its kept text (retokenize=True, eval.py --retokenize)"
        )
    if file_hash and base.file_hash and file_hash != base.file_hash:
        raise ReducerError(f"this reducer was trained for base model file {base.file_hash[:12]}, not {file_hash[:12]}")
    if model_spec and not (file_hash and base.file_hash) and model_spec != base.spec:
        raise ReducerError(f"this reducer was trained for base model {base.spec!r}, not {model_spec!r}")
