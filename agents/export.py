"""Export a trained PPO policy as a :class:`~policies.reducer.TokenReducer` directory (optionally ONNX too).

Usage:
    python -m agents.export --checkpoint runs/default --out reducers/default
    python -m agents.export --checkpoint runs/default/checkpoints/ckpt_000001024.zip --out r/ --onnx

``--checkpoint`` takes a run directory (its ``final_model.zip``, else its latest checkpoint) or a checkpoint
file inside a run directory; the run's ``config.json`` says which frozen model and processor to use. Checkpoint
zips are pickles: a zip outside a run directory is refused unless ``--config`` names its run config.
Training calls :func:`export_reducer` when it ends.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch

from agents.config import TrainConfig, load_config
from envs.lm.frozen_lm import FrozenLM
from policies.fileio import atomic_directory
from policies.network import TokenKeepNetwork
from policies.reducer import TokenReducer
from policies.semantic import SentenceEncoder


def reducer_from_policy(
    policy: Any, lm: FrozenLM, config: TrainConfig, encoder: SentenceEncoder | None = None
) -> TokenReducer:
    """A TokenReducer over the live frozen model and a copy of the policy's current network (nothing saved).

    Used for the exported reducer and for training-time evaluation, so both go through the deployed code.

    Args:
        policy: The SB3 :class:`~policies.sb3_policy.TokenKeepPolicy` (``model.policy``).
        lm: The frozen model it was trained over (its weights are shared, not copied).
        config: The run's config.
        encoder: The training core's sentence encoder, shared (None: the default one is loaded when the processor
            uses the semantic channel).
    """
    net = policy.net
    with torch.random.fork_rng():  # building the copy must not move training's random stream
        network = TokenKeepNetwork(net.config, net.feature_dim, net.lexical_size, net.budget_size, net.attention_size)
    network.load_state_dict(net.state_dict())
    return TokenReducer.from_base_model(
        lm.model,
        lm.tokenizer,
        spec=lm.spec,
        file_hash=lm.file_hash,
        processor=config.processor,
        budget=config.budget,
        network=network,
        trained_on={"tasks": config.tasks.train, "reward": config.tasks.reward, "seed": config.run.seed},
        encoder=encoder,
    )


ONNX_INPUTS = ("features", "lexical", "attention_mask", "reducible_mask", "unit_index", "sentence_index", "budget")
"""Inputs of ``policy.onnx``, in order: the observation arrays of :func:`policies.observations.pack_observations`
(``sentence_index`` only for a network with sentence layers: :func:`onnx_inputs`)."""


def onnx_inputs(net: TokenKeepNetwork) -> tuple[str, ...]:
    """The inputs ``policy.onnx`` of this network takes, in order."""
    return tuple(n for n in ONNX_INPUTS if n != "sentence_index" or net.config.sentence_layers)


def export_onnx(reducer: TokenReducer, path: Path) -> Path:
    """Export the keep network (observation -> unit scores, STOP score) to ONNX; features stay in torch."""
    net = reducer.network
    n = 16
    names = onnx_inputs(net)
    example = {
        "features": torch.zeros(1, n, net.feature_dim),
        "lexical": torch.zeros(1, n, net.lexical_size),
        "attention_mask": torch.ones(1, n, dtype=torch.long),
        "reducible_mask": torch.ones(1, n, dtype=torch.long),
        "unit_index": torch.arange(n)[None],
        "sentence_index": torch.arange(n)[None] // 4,
        "budget": torch.zeros(1, net.budget_size),
    }
    args = tuple(example[k] for k in names)

    class _Scores(torch.nn.Module):
        def __init__(self, net: TokenKeepNetwork) -> None:
            super().__init__()
            self.net = net

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
            scores, stop, _ = self.net(dict(zip(names, inputs, strict=True)))
            return scores, stop

    net.trim_units = False  # a data-dependent unit count would freeze into the trace
    try:
        torch.onnx.export(
            _Scores(net),
            args,
            str(path),
            input_names=list(names),
            output_names=["unit_scores", "stop_score"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in names if name != "budget"}
            | {"budget": {0: "batch"}, "unit_scores": {0: "batch", 1: "tokens"}, "stop_score": {0: "batch"}},
            dynamo=False,
        )
    finally:
        net.trim_units = True
    return path


def export_reducer(
    model: Any,
    lm: FrozenLM,
    config: TrainConfig,
    out: str | os.PathLike[str],
    onnx: bool = False,
    encoder: SentenceEncoder | None = None,
) -> Path:
    """Write ``out`` as a reducer directory, atomically (a temporary directory, then rename).

    Args:
        model: The SB3 PPO model (or its policy).
        lm: The frozen model it was trained over.
        config: The run's config.
        out: Target directory; must not exist or be empty.
        onnx: Also write ``policy.onnx`` (needs the ``onnx`` package).
        encoder: The sentence encoder to ship (as :func:`reducer_from_policy`).

    Returns:
        The directory.
    """
    reducer = reducer_from_policy(getattr(model, "policy", model), lm, config, encoder)
    with atomic_directory(out) as tmp:
        reducer.write_files(tmp)
        if onnx:
            export_onnx(reducer, tmp / "policy.onnx")
    return Path(out)


def resolve_checkpoint(path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """``(checkpoint zip, run config.json)`` for a run directory or a checkpoint file inside one.

    A checkpoint is inside a run directory when it is ``RUN/final_model.zip`` or ``RUN/checkpoints/*.zip`` and
    ``RUN/config.json`` exists. SB3 checkpoint zips hold pickled objects, which can run code when loaded, so a
    zip anywhere else is refused unless ``config`` names the run config it was trained with (the user's
    explicit statement that they trust it).

    Args:
        path: Run directory or checkpoint zip.
        config: Run config for a checkpoint outside a run directory.

    Raises:
        FileNotFoundError: If no checkpoint or no config.json is found.
        PermissionError: If the checkpoint is outside a run directory and ``config`` is not given.
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
        inside = True
    elif p.is_file():
        ckpt = p
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        inside = p.parent.name == "checkpoints" or p.name == "final_model.zip"
    else:
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if config is None and inside and not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}/config.json not found: cannot tell which frozen model {ckpt} used")
    if config is not None:
        cfg = Path(config)
        if not cfg.is_file():
            raise FileNotFoundError(f"--config {cfg} not found")
        return ckpt, cfg
    if not inside:
        raise PermissionError(
            f"{ckpt} is not inside a run directory (RUN/final_model.zip or RUN/checkpoints/*.zip next to "
            "RUN/config.json). Checkpoint zips hold pickled objects that can run code when loaded: export only "
            "checkpoints you made. To export this one anyway, pass --config with the run's config.json."
        )
    return ckpt, run / "config.json"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint .zip inside one")
    parser.add_argument("--out", required=True, help="reducer directory to write (must not exist or be empty)")
    parser.add_argument("--onnx", action="store_true", help="also export the keep network as policy.onnx")
    parser.add_argument(
        "--config",
        help="run config.json for a checkpoint outside a run directory; checkpoints are pickles, so give only "
        "ones you made",
    )
    parser.prog = "python -m agents.export"
    args = parser.parse_args(argv)
    from stable_baselines3 import PPO

    from envs.lm.backends import BackendError

    target = Path(args.out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        sys.exit(f"error: {target} exists and is not an empty directory; choose another --out")
    if args.onnx and importlib.util.find_spec("onnx") is None:
        sys.exit("error: --onnx needs the onnx package (pip install onnx)")
    try:
        ckpt, config_path = resolve_checkpoint(args.checkpoint, args.config)
        config = load_config(config_path)
        lm = FrozenLM.load(config.model.spec, dtype=config.model.dtype)
        model = PPO.load(ckpt, device="cpu")
        out = export_reducer(model, lm, config, args.out, onnx=args.onnx)
    except (OSError, ValueError, BackendError) as err:
        sys.exit(f"error: {err}")
    print(f"exported {ckpt} -> {out}")


if __name__ == "__main__":
    main()
