"""The reducer directory format: writing and reading ``model.safetensors``, ``reducer_config.json`` and tokenizer files.

Reading never executes code from the directory: weights come from safetensors, the config from JSON (validated
into a :class:`~policies.reducer_config.ReducerConfig`), the tokenizer from Hugging Face tokenizer files with
``trust_remote_code=False``, and, for a processor with the semantic channel, the sentence encoder from its own
folder (``sentence_encoder/``: safetensors weights, Hugging Face config and tokenizer files); no other file in the
directory is opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from policies.config_io import from_dict, to_dict
from policies.features import FeatureModule
from policies.fileio import file_sha256
from policies.network import TokenKeepNetwork
from policies.reducer_config import FORMAT_VERSION, ReducerConfig, ReducerError, tokenizer_fingerprint
from policies.semantic import SentenceEncoder

CONFIG_NAME = "reducer_config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_DIR = "sentence_encoder"


def write_reducer_files(
    directory: Path,
    features: FeatureModule,
    network: TokenKeepNetwork,
    tokenizer: Any,
    config: ReducerConfig,
    encoder: SentenceEncoder | None = None,
) -> None:
    """Write a reducer's files into an existing directory; fills in the config's SHA-256 fields."""
    tensors = {f"network.{k}": v.contiguous() for k, v in network.state_dict().items()}
    feats = features.state_dict()
    if features.layer == 0:  # features are float16-rounded: a float16 table gives identical values
        feats = {k: v.to(torch.float16) for k, v in feats.items()}
    tensors |= {f"features.{k}": v.contiguous() for k, v in feats.items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    config.weights_sha256 = file_sha256(directory / WEIGHTS_NAME)
    if encoder is not None:
        encoder.save(directory / ENCODER_DIR)
        config.encoder_sha256 = file_sha256(directory / ENCODER_DIR / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(to_dict(config), indent=2) + "\n")
    tokenizer.save_pretrained(directory)


def read_reducer_files(
    directory: str | os.PathLike[str],
) -> tuple[FeatureModule, TokenKeepNetwork, Any, ReducerConfig, SentenceEncoder | None]:
    """The feature module, network, tokenizer, config and sentence encoder (or None) of a reducer directory.

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
        raw = json.loads((d / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReducerError(f"{d / CONFIG_NAME} is corrupted: {err}") from err
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ReducerError(f"{d / CONFIG_NAME} has format_version {version!r}; this tokenkeep reads {FORMAT_VERSION}")
    try:
        config = from_dict(ReducerConfig, raw)
    except ValueError as err:
        raise ReducerError(f"{d / CONFIG_NAME} is invalid: {err}") from err
    if config.weights_sha256 and file_sha256(d / WEIGHTS_NAME) != config.weights_sha256:
        raise ReducerError(f"{d / WEIGHTS_NAME} is corrupted: its SHA-256 does not match {CONFIG_NAME}")
    try:
        tensors = load_file(str(d / WEIGHTS_NAME))
    except Exception as err:  # safetensors raises its own error types
        raise ReducerError(f"{d / WEIGHTS_NAME} cannot be read: {err}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(d, trust_remote_code=False)
    except Exception as err:
        raise ReducerError(f"the tokenizer files in {d} cannot be loaded: {err}") from err
    if tokenizer_fingerprint(tokenizer) != config.tokenizer.fingerprint:
        raise ReducerError(f"the tokenizer in {d} is not the one this reducer was trained with")
    proc = config.processor
    features = FeatureModule.empty(config.base_model.hf_config, proc.feature_layer, proc.attention_layers)
    network = TokenKeepNetwork(
        config.network, features.hidden_size, proc.lexical_size, config.budget.observation_size, features.attention_size
    )
    try:
        network.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("network.")})
        features.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("features.")})
    except RuntimeError as err:
        raise ReducerError(f"{d / WEIGHTS_NAME} does not match {CONFIG_NAME}: {err}") from err
    encoder = None
    if proc.semantic:
        weights = d / ENCODER_DIR / WEIGHTS_NAME
        if config.encoder_sha256 and weights.is_file() and file_sha256(weights) != config.encoder_sha256:
            raise ReducerError(f"{weights} is corrupted: its SHA-256 does not match {CONFIG_NAME}")
        try:
            encoder = SentenceEncoder.from_directory(d / ENCODER_DIR)
        except Exception as err:
            raise ReducerError(f"the sentence encoder in {d / ENCODER_DIR} cannot be loaded: {err}") from err
    return features, network, tokenizer, config, encoder
