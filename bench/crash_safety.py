"""Crash safety under ``kill -9``: kill a real training run at random moments, resume it each time, and count.

A training run (``train.py``) is started and killed with SIGKILL ``--kills`` times, each time in one of four
phases, taken in turn: during a rollout, during a PPO update (both read off ``progress.json``), while a
checkpoint is being written, and while the reducer is being exported (those two windows are widened to
``--write-window`` seconds with the ``TOKENKEEP_SLOW_WRITES`` test hook, so a kill lands inside them). After
every kill the bench checks the run directory: every checkpoint, random-state file, config, history and reducer
must read back, and the work lost is the episodes done minus the latest checkpoint's. The next start is
``train.py --resume``; the last one runs to the end, and the exported reducer must load.

The last line reads ``resumed R/K, C corrupt files, max lost L episodes (checkpoint interval I)``, K counting the kills
that reached a live run (a run that ends before all kills are spent says so and stops early).

Usage:
    python bench/crash_safety.py --out runs/crash [--replace]           # smoke preset (tiny model), ~2 minutes
    python bench/crash_safety.py --out runs/crash-default --preset default --episodes 512 --checkpoint-freq 128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agents.checkpoints import readable
from agents.config import load_config
from policies.reducer import TokenReducer

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ("rollout", "update", "checkpoint") * 3 + ("export",)
"""Where the kills land, in order (the export happens once, at the end, so it comes last)."""


def progress(out: Path) -> dict:
    """The run's progress.json, or {} before the first rollout."""
    try:
        return json.loads((out / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def latest_checkpoint_episodes(out: Path) -> int:
    """Episodes of the newest checkpoint (-1: none)."""
    found = sorted((out / "checkpoints").glob("ckpt_*.zip"))
    return int(found[-1].stem.split("_")[1]) if found else -1


def corrupt_files(out: Path) -> list[str]:
    """Files of the run directory that do not read back (temporary dot-files are not counted: never read)."""
    bad = []
    for ckpt in (out / "checkpoints").glob("ckpt_*.zip"):
        if not readable(ckpt):
            bad.append(str(ckpt))
    for path in [*(out / "checkpoints").glob("ckpt_*.rng.json"), out / "eval_history.json", out / "progress.json"]:
        if path.exists():
            try:
                json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad.append(str(path))
    if (out / "config.json").exists():
        try:
            load_config(out / "config.json")
        except ValueError:
            bad.append(str(out / "config.json"))
    if (out / "reducer").exists():
        try:
            TokenReducer.from_pretrained(out / "reducer")
        except Exception:  # noqa: BLE001 (any failure to load is what we count)
            bad.append(str(out / "reducer"))
    return bad


def fresh(path: Path, since: float) -> bool:
    """True when ``path`` was written after ``since`` (by the process under test, not its killed predecessor)."""
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def wait_for(phase: str, proc: subprocess.Popen, out: Path, rng: random.Random, timeout: float, step: int) -> bool:
    """Block until the run started at ``proc`` is in ``phase`` (True), or it exits or times out (False).

    The run is first let through a random number (0 to 3) of ``step``-episode rollouts past where it resumed, so
    kills land at varied points of the run, not always at its first rollout.
    """
    start = time.time()
    end = start + timeout
    floor = max(latest_checkpoint_episodes(out), 0) + rng.randint(0, 3) * step
    while time.time() < end and proc.poll() is None:
        p = progress(out) if fresh(out / "progress.json", start) else {}
        if phase in ("rollout", "update"):
            if p.get("phase") == phase and p.get("episodes", -1) >= floor:
                time.sleep(rng.uniform(0, 0.05 if phase == "update" else 0.5))
                return True
        elif phase == "checkpoint":
            writing = [q for q in (out / "checkpoints").glob(".ckpt_*.zip*") if fresh(q, start)]
            if any(int(q.name.split("_")[1].split(".")[0]) >= floor for q in writing):
                time.sleep(rng.uniform(0, 0.5))
                return True
        elif any(fresh(q, start) for q in out.glob(".reducer.tmp-*")):
            time.sleep(rng.uniform(0, 0.5))
            return True
        time.sleep(0.005)
    return False


def main() -> None:
    """Kill, check, resume; print the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run directory (new or empty; see --replace)")
    ap.add_argument("--replace", action="store_true", help="delete --out first (an earlier run of this bench)")
    ap.add_argument("--preset", default="smoke", help="train.py preset")
    ap.add_argument("--kills", type=int, default=10, help=f"SIGKILLs (at most {len(SCHEDULE)})")
    ap.add_argument("--episodes", type=int, default=1024, help="training episodes")
    ap.add_argument("--checkpoint-freq", type=int, default=128, help="episodes between checkpoints")
    ap.add_argument("--write-window", type=float, default=1.5, help="seconds each atomic write is held open")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for one phase")
    ap.add_argument("--rollout", type=int, default=64, help="episodes per rollout of the preset (smoke: 8 x 8)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.replace:
            sys.exit(f"error: {out} is not empty; choose another --out, or pass --replace to delete it first")
        shutil.rmtree(out)
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENKEEP_SLOW_WRITES=str(args.write_window))
    base = [sys.executable, "train.py", "--preset", args.preset, "--out", str(out), "--run.no-progress-bar"]
    base += ["--ppo.total-timesteps", str(args.episodes), "--run.checkpoint-freq", str(args.checkpoint_freq)]
    resume = [sys.executable, "train.py", "--out", str(out), "--resume"]  # the run's own config.json: no options
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115
    resumed = corrupt = 0
    lost: list[int] = []
    kills = 0  # SIGKILLs that reached a live run; each must be followed by a resume that works
    pending = False  # a kill whose resume has not run yet
    for k, phase in enumerate(SCHEDULE[: args.kills]):
        if (out / "final_model.zip").exists():  # the run ended under an earlier start: nothing left to kill
            print(f"the run finished after {kills} kills; give more --episodes for {args.kills}")
            break
        resuming = (out / "config.json").exists()
        proc = subprocess.Popen(resume if resuming else base, cwd=ROOT, env=env, stdout=log, stderr=log)
        hit = wait_for(phase, proc, out, rng, args.timeout, args.rollout)
        done_before = progress(out).get("episodes", 0)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        if pending:  # this start resumed the previous kill: it must have run (until our kill, or to the end)
            if code in (-signal.SIGKILL, 0):
                resumed += 1
            else:
                print(f"start {k + 1}: the resume failed (exit {code}); see {log.name}")
        pending = alive
        kills += int(alive)
        bad = corrupt_files(out)
        corrupt += len(bad)
        ckpt = latest_checkpoint_episodes(out)
        lost.append(max(0, done_before - max(ckpt, 0)))
        print(
            f"kill {k + 1:2d} in {phase:10s} ({'hit' if hit else 'missed'}): at {done_before} episodes, "
            f"latest checkpoint {ckpt}, lost {lost[-1]}, corrupt files {len(bad)}",
            flush=True,
        )
    if pending:  # the last kill's resume runs to the end
        final = subprocess.run(resume, cwd=ROOT, env=env, stdout=log, stderr=log)
        if final.returncode == 0 and (out / "final_model.zip").exists():
            resumed += 1
        else:
            print(f"the final resume failed (exit {final.returncode}); see {log.name}")
    try:
        TokenReducer.from_pretrained(out / "reducer")
    except Exception as err:  # noqa: BLE001
        print(f"the final reducer does not load: {err}")
        corrupt += 1
    corrupt += len(corrupt_files(out))
    print(f"resumed {resumed}/{kills}, {corrupt} corrupt files, max lost {max(lost)} episodes "
          f"(checkpoint interval {args.checkpoint_freq})")  # fmt: skip


if __name__ == "__main__":
    main()
