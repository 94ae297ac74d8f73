"""Export a trained PPO policy as a :class:`~policies.reducer.TokenReducer` directory (optionally ONNX too).

Usage:
    python -m policies.export --checkpoint runs/default --out reducers/default
    python -m policies.export --checkpoint runs/default/checkpoints/ckpt_000001024.zip --out r/ --onnx

``--checkpoint`` takes a run directory (its ``final_model.zip``, else its latest checkpoint) or a checkpoint
file inside a run directory; the run's ``config.json`` says which frozen model and feature layer to use.
train.py calls :func:`export_reducer` when training ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from policies.fileio import atomic_directory
from policies.network import TokenKeepNetwork
from policies.reducer import TokenReducer, build_feature_module, package_version, tokenizer_fingerprint


def reducer_from_policy(policy: Any, lm: Any, config: Any) -> TokenReducer:
    """Assemble a TokenReducer from an SB3 :class:`~policies.sb3_policy.TokenKeepPolicy` and its frozen model.

    Args:
        policy: The trained SB3 policy (``model.policy``).
        lm: The :class:`~envs.frozen_lm.FrozenLM` it was trained over.
        config: The run's :class:`~agents.config.TrainConfig`.

    Returns:
        The reducer (not yet saved).
    """
    network = TokenKeepNetwork(policy.net_config)
    network.load_state_dict(policy.net.state_dict())
    hf_config = lm.model.config.to_dict()
    hf_config.pop("quantization_config", None)
    layer = int(config.feature_layer)
    features = build_feature_module(hf_config, layer)
    decoder = lm.model.get_decoder()
    if layer == 0:
        features.embedding.weight.data.copy_(lm.model.get_input_embeddings().weight.detach().half())
    else:
        state = {
            k: v
            for k, v in decoder.state_dict().items()
            if k.startswith("embed_tokens.") or any(k.startswith(f"layers.{i}.") for i in range(layer))
        }
        missing, unexpected = features.decoder.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(("norm.", "rotary_emb.")) for k in missing):
            raise RuntimeError(f"cannot copy the first {layer} blocks: missing {missing}, unexpected {unexpected}")
    reducer_config = {
        "format_version": 1,
        "package_version": package_version(),
        "base_model": {
            "spec": lm.spec,
            "file_hash": lm.file_hash,
            "model_type": hf_config.get("model_type"),
            "hf_config": hf_config,
        },
        "tokenizer": {
            "name": getattr(lm.tokenizer, "name_or_path", ""),
            "fingerprint": tokenizer_fingerprint(lm.tokenizer),
            "pad_id": lm.pad_id,
        },
        "max_len": int(config.max_len),
        "feature_layer": layer,
        "budget": {
            "cost_low": float(config.cost_low),
            "cost_high": float(config.cost_high),
            "default_token_cost": float(config.eval_cost),
        },
        "network": policy.net_config.to_dict(),
        "trained_on": {"tasks": config.tasks, "reward": config.reward, "seed": config.seed},
    }
    return TokenReducer(features, network, lm.tokenizer, reducer_config)


def export_onnx(reducer: TokenReducer, path: Path) -> Path:
    """Export the keep network (features -> keep logits) to ONNX; the feature module stays in torch."""
    d = reducer.network.config.feature_dim
    n = 16
    args = (
        torch.zeros(1, n, d),
        torch.ones(1, n, dtype=torch.long),
        torch.ones(1, n, dtype=torch.long),
        torch.ones(1, 1),
    )

    class _Logits(torch.nn.Module):
        def __init__(self, net: TokenKeepNetwork) -> None:
            super().__init__()
            self.net = net

        def forward(self, features, attention_mask, reducible_mask, token_cost):  # noqa: D102
            return self.net(features, attention_mask, reducible_mask, token_cost)[0]

    torch.onnx.export(
        _Logits(reducer.network),
        args,
        str(path),
        input_names=["features", "attention_mask", "reducible_mask", "token_cost"],
        output_names=["keep_logits"],
        dynamic_axes={
            "features": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "reducible_mask": {0: "batch", 1: "tokens"},
            "token_cost": {0: "batch"},
            "keep_logits": {0: "batch", 1: "tokens"},
        },
        dynamo=False,
    )
    return path


def export_reducer(model: Any, lm: Any, config: Any, out: str | os.PathLike[str], onnx: bool = False) -> Path:
    """Write ``out`` as a reducer directory, atomically (a temporary directory, then rename).

    Args:
        model: The SB3 PPO model (or its policy).
        lm: The frozen model it was trained over.
        config: The run's TrainConfig.
        out: Target directory; must not exist or be empty.
        onnx: Also write ``policy.onnx`` (needs the ``onnx`` package).

    Returns:
        The directory.
    """
    policy = getattr(model, "policy", model)
    reducer = reducer_from_policy(policy, lm, config)
    with atomic_directory(out) as tmp:
        reducer.write_files(tmp)
        if onnx:
            export_onnx(reducer, tmp / "policy.onnx")
    return Path(out)


def resolve_checkpoint(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(checkpoint zip, run directory)`` for a run directory or a checkpoint file inside one.

    Raises:
        FileNotFoundError: If no checkpoint or no config.json is found.
    """
    p = Path(path)
    if p.is_dir():
        run = p
        ckpt = p / "final_model.zip"
        if not ckpt.exists():
            found = sorted((p / "checkpoints").glob("ckpt_*.zip"))
            if not found:
                raise FileNotFoundError(f"{p} has neither final_model.zip nor checkpoints/ckpt_*.zip")
            ckpt = found[-1]
    elif p.is_file():
        ckpt = p
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    else:
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}/config.json not found: cannot tell which frozen model {ckpt} used")
    return ckpt, run


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint .zip inside one")
    parser.add_argument("--out", required=True, help="reducer directory to write (must not exist or be empty)")
    parser.add_argument("--onnx", action="store_true", help="also export the keep network as policy.onnx")
    args = parser.parse_args(argv)
    from stable_baselines3 import PPO

    from agents.config import load_config
    from envs.frozen_lm import FrozenLM

    try:
        ckpt, run = resolve_checkpoint(args.checkpoint)
        config = load_config(str(run / "config.json"))
        lm = FrozenLM.load(config.model, dtype=config.dtype)
        model = PPO.load(ckpt, device="cpu")
        out = export_reducer(model, lm, config, args.out, onnx=args.onnx)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"exported {ckpt} -> {out}")


if __name__ == "__main__":
    main()
