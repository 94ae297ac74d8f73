"""Checkpoints that resume exactly: the SB3 model and every random state, saved at rollout boundaries.

A checkpoint is a pair in ``checkpoints/``, named by SB3's env-step count (episodes x ``processor.rounds``):
``ckpt_<steps>.zip`` (SB3: weights, optimiser, counters) and ``ckpt_<steps>.rng.json`` (the torch, numpy and
Python generators, and the vec env's episode generators as they were before it drew the episodes in flight).
Both are written to temporary files and renamed, the random states first, so a kill at any moment leaves
either the previous pair or the new one; never half a file.

Checkpoints are taken at the start of a rollout, after the previous PPO update: resuming from one replays
exactly what the uninterrupted run would have done (``tests/test_train.py`` checks the final weights are
equal). A run killed between checkpoints loses at most one checkpoint interval of episodes.
"""

from __future__ import annotations

import base64
import json
import os
import random
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from envs.vec_env import BatchedTokenKeepVecEnv
from policies.fileio import slow_write_pause


def write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temporary file in the same directory, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng(venv: BatchedTokenKeepVecEnv | None) -> dict[str, Any]:
    """Every random state a run depends on, JSON-serialisable."""
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    if venv is not None:
        state["venv"] = venv.get_rng_state()
    return state


def restore_rng(state: dict[str, Any], venv: BatchedTokenKeepVecEnv | None) -> None:
    """Put back what :func:`capture_rng` recorded."""
    torch.set_rng_state(_unb64(state["torch"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    if venv is not None and "venv" in state:
        venv.set_rng_state(state["venv"])


def save_checkpoint(model: Any, directory: Path, keep: int = 3, venv: BatchedTokenKeepVecEnv | None = None) -> Path:
    """Save ``ckpt_<timesteps>.zip`` and its random states atomically; keep the ``keep`` most recent pairs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt_{model.num_timesteps:09d}.zip"
    write_atomic(target.with_suffix(".rng.json"), json.dumps(capture_rng(venv)))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".zip")
    os.close(fd)
    try:
        model.save(tmp)
        slow_write_pause()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in sorted(directory.glob("ckpt_*.zip"))[:-keep]:
        old.unlink()
        old.with_suffix(".rng.json").unlink(missing_ok=True)
    return target


def readable(path: Path) -> bool:
    """True when a checkpoint zip is complete (its archive checks out)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def latest_checkpoint(directory: Path) -> Path | None:
    """The readable checkpoint with the most timesteps, or None (an unreadable one is skipped with a warning)."""
    for path in sorted(Path(directory).glob("ckpt_*.zip"), reverse=True):
        if readable(path):
            return path
        warnings.warn(f"skipping unreadable checkpoint {path}", stacklevel=2)
    return None


def load_rng(checkpoint: Path) -> dict[str, Any] | None:
    """The random states saved with a checkpoint, or None for a checkpoint that has none."""
    path = checkpoint.with_suffix(".rng.json")
    return json.loads(path.read_text()) if path.exists() else None


def write_progress(path: Path | None, episodes: int, phase: str) -> None:
    """Record the episodes done and the phase (rollout, update, export, done) in ``progress.json``."""
    if path is not None:
        write_atomic(path, json.dumps({"episodes": int(episodes), "phase": phase}) + "\n")


def remove_partial_writes(out: Path) -> list[Path]:
    """Delete the temporary files and directories a killed run left (they are never read); return them."""
    # Every dot-entry of a run directory but the lock is a temporary copy of one of its atomic writes.
    stale = [p for d in (out, out / "checkpoints") if d.is_dir() for p in d.glob(".*") if p.name != ".lock"]
    for p in stale:
        if p.is_dir():
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


class CheckpointCallback(BaseCallback):
    """Saves a checkpoint at the start of a rollout once ``save_freq`` episodes have passed since the last one.

    A rollout starts right after the previous PPO update, so the saved state is a clean boundary.

    Args:
        directory: The checkpoints directory.
        save_freq: Episodes between checkpoints.
        keep: How many recent checkpoints to keep.
        venv: The vec env whose episode generators are saved.
        progress_path: A JSON file rewritten at every rollout start and end with the episodes done and the phase
            (``rollout`` or ``update``): what a kill loses is the difference to the latest checkpoint.
        steps_per_episode: Env steps per episode (``processor.rounds``): SB3 counts steps, this counts episodes.
    """

    def __init__(
        self,
        directory: Path,
        save_freq: int,
        keep: int,
        venv: BatchedTokenKeepVecEnv | None,
        progress_path: Path | None = None,
        steps_per_episode: int = 1,
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.steps_per_episode = steps_per_episode
        self.save_freq = save_freq
        self.keep = keep
        self.venv = venv
        self.progress_path = progress_path
        self.last_save: int | None = None

    def _on_rollout_start(self) -> None:
        if self.last_save is None or (self.num_timesteps - self.last_save) // self.steps_per_episode >= self.save_freq:
            if self.last_save is not None or not any(self.directory.glob("ckpt_*.zip")):
                save_checkpoint(self.model, self.directory, self.keep, self.venv)
            self.last_save = self.num_timesteps
        write_progress(self.progress_path, self.num_timesteps // self.steps_per_episode, "rollout")

    def _on_rollout_end(self) -> None:
        write_progress(self.progress_path, self.num_timesteps // self.steps_per_episode, "update")

    def _on_step(self) -> bool:
        return True
