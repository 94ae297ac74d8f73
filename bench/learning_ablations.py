"""Learning ablations: train one policy per arm, in parallel processes, and compare held-out learning curves.

Each arm is the ``default`` preset with a few fields changed (selection unit, group baseline, input features,
warm start, PPO settings). Every arm trains with ``train.py`` into ``OUT/<arm>`` and records its held-out
evaluations (every ``--eval-every`` episodes, ``--eval-n`` examples per family, at rate 0.3) in
``eval_history.json`` as it goes, so an arm stopped by the deadline still leaves its curve. Arms that finish in
time are then evaluated by ``eval.py`` on ``--final-n`` held-out examples per family.

Writes ``OUT/ablations.json`` (every arm's overrides, curve and final rows), ``OUT/ablations.md`` (the table)
and ``OUT/curves.png`` (held-out score per family against episodes, heuristics as flat lines). Meant for an
accelerator (minutes) but runs anywhere (hours on 2 CPU cores).

Usage:
    python bench/learning_ablations.py --out runs/ablations --device cuda --parallel 12 --deadline-minutes 8
    python bench/learning_ablations.py --arms default,no_group --episodes 2048 --out runs/abl   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agents.baselines import BASELINES
from agents.checkpoints import write_atomic
from agents.eval_metrics import task_metric
from agents.report import learning_curve_plot

ROOT = Path(__file__).resolve().parents[1]

ARMS: dict[str, list[str]] = {
    "default": [],
    "unit_sentence": ["--processor.unit", "sentence"],
    "unit_token": ["--processor.unit", "token"],
    "no_group_baseline": ["--ppo.group-size", "1"],
    "no_warm_start": ["--warm-start.steps", "0"],
    "no_lexical": ["--processor.no-lexical"],
    "layer4": ["--processor.feature-layer", "4"],
    "layer4_no_lexical": ["--processor.feature-layer", "4", "--processor.no-lexical"],
    "attention4": ["--processor.attention-layers", "4"],
    "attention4_no_lexical": ["--processor.attention-layers", "4", "--processor.no-lexical"],
    "no_warm_start_sentence": ["--warm-start.steps", "0", "--processor.unit", "sentence"],
    "lr1e-4": ["--ppo.learning-rate", "1e-4"],
}
"""Arm name -> train.py options on top of the default preset."""


def arm_command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The train.py command line of one arm."""
    return [
        sys.executable, "train.py", "--preset", "default", "--out", str(out / name),
        "--model.spec", args.model, "--model.device", args.device,
        "--ppo.total-timesteps", str(args.episodes), "--run.eval-freq", str(args.eval_every),
        "--run.eval-rates", "0.3", "--tasks.eval-examples", str(args.eval_n),
        "--tasks.eval-examples-real", str(args.eval_n), "--run.torch-threads", "1",
        "--run.no-progress-bar", "--run.checkpoint-freq", str(args.episodes), *ARMS[name],
    ]  # fmt: skip


def final_eval_command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The eval.py command line of one finished arm."""
    baselines = list(BASELINES)
    if name != "default":
        baselines = ["full", "bm25"]
    return [
        sys.executable, "eval.py", "--reducer", str(out / name / "reducer"), "--model", args.model,
        "--tasks", "passkey:heldout,kv:heldout,qa:heldout,multihop:heldout,state:heldout", "--n", str(args.final_n),
        "--rates", "0.3", "--baselines", *baselines, "--out", str(out / name / "final_eval"), "--no-progress",
    ]  # fmt: skip


def run_all(commands: dict[str, list[str]], parallel: int, deadline: float, logs: Path, env: dict) -> dict[str, int]:
    """Run the commands, at most ``parallel`` at a time; kill what is still running at ``deadline``."""
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(commands)
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    codes: dict[str, int] = {}
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed when the process ends)
            running[name] = (subprocess.Popen(commands[name], cwd=ROOT, env=env, stdout=log, stderr=log), log)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                codes[name] = proc.returncode
                log.close()
                del running[name]
        if time.time() > deadline:
            for name, (proc, log) in running.items():
                proc.kill()
                codes[name] = -9
                log.close()
            for name in pending:
                codes[name] = -1
            break
        time.sleep(1)
    return codes


def main() -> None:
    """Run the arms, then write the summary, the table and the curves."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (one run directory per arm)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms (known: {', '.join(ARMS)})")
    ap.add_argument("--model", default="smollm2-135m", help="frozen model spec")
    ap.add_argument("--device", default="cpu", help="torch device (cuda on an accelerator)")
    ap.add_argument("--episodes", type=int, default=6144, help="training episodes per arm")
    ap.add_argument("--eval-every", type=int, default=1024, help="episodes between held-out evaluations")
    ap.add_argument("--eval-n", type=int, default=48, help="held-out examples per family in the curves")
    ap.add_argument("--final-n", type=int, default=100, help="held-out examples per family in the final eval")
    ap.add_argument("--parallel", type=int, default=1, help="arms trained at the same time")
    ap.add_argument("--deadline-minutes", type=float, default=600.0, help="stop everything after this long")
    ap.add_argument("--final-margin-minutes", type=float, default=1.5, help="time kept for the final evals")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"error: unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty (its arms' runs would be read as this run's); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + 60 * args.deadline_minutes
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    train_deadline = deadline - 60 * args.final_margin_minutes
    codes = run_all({a: arm_command(a, args, out) for a in arms}, args.parallel, train_deadline, out / "logs", env)
    finished = [a for a in arms if codes.get(a) == 0]
    print(f"trained in {(time.time() - start) / 60:.1f} min: {codes}", flush=True)
    eval_codes = run_all(
        {a: final_eval_command(a, args, out) for a in finished}, args.parallel, deadline, out / "logs" / "eval", env
    )
    summary = {"args": vars(args), "train_exit": codes, "eval_exit": eval_codes, "minutes": (time.time() - start) / 60}
    summary["arms"] = {}
    for a in arms:
        hist_path = out / a / "eval_history.json"
        report_path = out / a / "final_eval" / "report.json"
        summary["arms"][a] = {
            "options": ARMS[a],
            "curve": json.loads(hist_path.read_text()) if hist_path.exists() else [],
            "final": json.loads(report_path.read_text())["results"] if report_path.exists() else [],
        }
    write_atomic(out / "ablations.json", json.dumps(summary, indent=2) + "\n")
    lines = ["| arm | episodes | " + " | ".join(FAMILIES) + " |", "|---" * (len(FAMILIES) + 2) + "|"]
    for a, data in summary["arms"].items():
        cells = []
        for fam in FAMILIES:
            task = f"{fam}:heldout"
            row = next((r for r in data["final"] if r["task"] == task and r["method"].startswith("tokenkeep")), None)
            if row is not None:
                ci = row["choice_acc_ci"] if row["choice_acc"] is not None else row["em_ci"]
                cells.append(f"{task_metric(row):.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
            elif data["curve"]:
                cells.append(f"{data['curve'][-1].get(f'{task}/policy_rate0.3', float('nan')):.2f} (curve)")
            else:
                cells.append("-")
        steps = data["curve"][-1]["timesteps"] if data["curve"] else 0
        lines.append(f"| {a} | {steps} | " + " | ".join(cells) + " |")
    write_atomic(out / "ablations.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    curves = {a: d["curve"] for a, d in summary["arms"].items() if d["curve"]}
    if curves:
        learning_curve_plot(curves, out / "curves.png", rate=0.3)
    print(f"done in {(time.time() - start) / 60:.1f} min")


FAMILIES = ("passkey", "kv", "qa", "multihop", "state")

if __name__ == "__main__":
    main()
