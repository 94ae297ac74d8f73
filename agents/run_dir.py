"""Run directories: one writer at a time, a resumable state from the first moment, nothing half-written.

Layout of ``--out DIR``::

    config.json          the resolved config (written first: from then on ``--resume`` works)
    command.txt          the exact command line
    machine.json         where the run started: platform, CPU count, torch version and threads
    .lock                held (flock) by the one train.py writing to DIR; the OS frees it when that process dies
    progress.json        episodes done and the phase, rewritten at every rollout's start and end, the export and the end
    tb/                  tensorboard logs
    checkpoints/         ckpt_<env steps>.zip + .rng.json, env steps = episodes x rounds (agents/checkpoints.py)
    eval_history.json    periodic held-out evaluations, rewritten after each one
    learning_curve.png   held-out score against episodes, drawn from eval_history.json by train.py at the end
    reducer/             the exported TokenReducer (written when training ends)
    final_model.zip      the trained SB3 model; written last, its presence marks the run finished
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.checkpoints import latest_checkpoint, write_atomic
from agents.config import TrainConfig, load_config


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


class RunLock:
    """An exclusive lock on a run directory: ``flock`` on ``DIR/.lock``, held until :meth:`release` or exit.

    A killed process cannot leave it stuck: the kernel drops the lock with the process's file descriptors.
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            RunDirectoryError: If another process holds it (its pid is named).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirectoryError(
                f"{self.path.parent} is being written by another training process (pid {holder}); "
                "wait for it to end or stop it, then continue with --resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def check_run_path(out: Path, resume: bool) -> None:
    """Check what needs no lock, so that a refused command creates nothing.

    ``out`` must not be a file, and must hold a run when ``resume``.

    Raises:
        RunDirectoryError: Saying what to do.
    """
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out} is a file, not a run directory; choose another --out")
    if resume and not (out / "config.json").exists():
        raise RunDirectoryError(f"--resume: {out} holds no run (no config.json); start one without --resume")


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool, command: Sequence[str] | None) -> TrainConfig:
    """Check and initialise the run directory (the caller holds its :class:`RunLock`); return the config to use.

    On resume the run's own ``config.json`` is used; a run killed before its first checkpoint resumes from the
    start (nothing was lost).

    Raises:
        RunDirectoryError: If ``out`` holds a finished run, a started run without ``resume``, files of something
            else, or nothing to resume; the message says what to do.
    """
    if (out / "final_model.zip").exists():
        raise RunDirectoryError(f"{out} holds a finished run (final_model.zip); choose another --out")
    started = (out / "config.json").exists()
    if resume:
        check_run_path(out, resume)
        config = load_config(out / "config.json")
        if latest_checkpoint(out / "checkpoints") is None:
            print(f"{out} has no checkpoint yet: starting its run from the beginning", file=sys.stderr)
        return config
    if started:
        raise RunDirectoryError(f"{out} already holds a run in progress; pass --resume to continue it")
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise RunDirectoryError(f"{out} exists and is not empty; choose another --out")
    cmd = command if command is not None else sys.argv
    write_atomic(out / "command.txt", " ".join(shlex.quote(c) for c in cmd) + "\n")
    write_atomic(out / "config.json", config.to_json() + "\n")
    return config


START_FILES = ("command.txt", "config.json", "machine.json", "progress.json", "eval_history.json", "tb", "checkpoints")
"""What a run writes into its directory before its first checkpoint."""


def abandon_start(out: Path, existed: bool) -> None:
    """Undo a fresh start that failed before its first checkpoint (the caller still holds the lock).

    Removes what the start wrote (:data:`START_FILES`, only when its ``config.json`` is there: otherwise the
    directory's check failed and nothing was written), then the lock file and the directory itself when the
    start created them. A run with a checkpoint is left alone: ``--resume`` continues it.

    Args:
        out: The run directory.
        existed: Whether ``out`` existed before the start.
    """
    if latest_checkpoint(out / "checkpoints") is not None:
        return
    try:
        if (out / "config.json").exists():
            for name in START_FILES:
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()
        if not existed:
            (out / ".lock").unlink(missing_ok=True)
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
    except OSError as err:  # the error that stopped the start is the one to report
        print(f"warning: could not clean up {out} after the failed start: {err}", file=sys.stderr)
