"""The ``tokenkeep`` command (``[project.scripts]``): dispatches to ``compress``, ``train`` and ``eval``.

``tokenkeep compress ...`` runs :func:`policies.compress.main` (deployable: it imports neither the trainer nor
gymnasium); ``tokenkeep train ...`` and ``tokenkeep eval ...`` run :func:`train` and :func:`evaluate`, the code
behind ``python train.py`` and ``python eval.py``, with the same arguments. Every import happens inside the
command that needs it, so ``compress`` loads no training code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

USAGE = """usage: tokenkeep {compress,train,eval} [ARGS...]

commands:
  compress   reduce the context on standard input with a saved reducer; prints the reduced context
  train      train a token-keeping policy with PPO and export its reducer (the same as python train.py ARGS)
  eval       evaluate reducers against baselines on held-out tasks (the same as python eval.py ARGS)

`tokenkeep COMMAND --help` lists a command's options, e.g.
  tokenkeep compress --reducer runs/default/reducer --question "What is the pass key?" --rate 0.3 < context.txt
  tokenkeep train --preset smoke --out runs/smoke
  tokenkeep eval --reducer runs/smoke/reducer --tasks kv:heldout --out reports/smoke"""

TRAIN_DESCRIPTION = """Train a token-keeping policy with PPO on a frozen generative model, then export its reducer.

Examples:
    {run} --preset smoke --out runs/smoke
    {run} --preset default --out runs/default
    {run} --preset default --out runs/cheap --ppo.total-timesteps 1024 --tasks.train kv:train
    {run} --resume --out runs/default        # continue an interrupted run
    {run} --preset default --out runs/served --model.spec vllm+http://127.0.0.1:8000  # docs/scaling.md
"""

EVAL_DESCRIPTION = """Evaluate trained reducers against baselines on held-out tasks, at equal kept ratios.

Examples:
    {run} --reducer runs/default/reducer --tasks passkey:heldout,kv:heldout --out reports/default
    {run} --reducer a/reducer b/reducer --tasks jsonl:data/my.jsonl --rates 0.2 0.5 --out r/
    {run} --tasks kv:heldout --baselines full random oracle --out r/   # baselines only
    {run} --reducer runs/x/reducer --tasks kv:heldout --model vllm+http://127.0.0.1:8000 --out r/

Writes report.json, report.md (printed at the end), pareto.png and examples.html into --out.
"""


@contextmanager
def _program_name(prog: str | None) -> Iterator[None]:
    """Show ``prog`` as the program in help and errors of a parser that reads it from ``sys.argv[0]``."""
    if prog is None:
        yield
        return
    saved = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = prog
    else:
        sys.argv.append(prog)
    try:
        yield
    finally:
        if saved is None:
            sys.argv.clear()
        else:
            sys.argv[0] = saved


def train(argv: Sequence[str], run: str = "python train.py", prog: str | None = None) -> int:
    """Parse a training command line, train, export, draw the learning curve; returns the exit code.

    Args:
        argv: The arguments (``--preset``, ``--out``, ``--resume`` and every config field).
        run: How the command is invoked, for the examples in ``--help``.
        prog: The program name in usage lines (None: ``sys.argv[0]``).
    """
    from agents.config import parse_train_command
    from agents.ppo import train as run_training
    from agents.report import write_learning_curve
    from agents.run_dir import RunDirectoryError
    from agents.runtime import reuse_freed_memory
    from envs.lm.backends import BackendError

    with _program_name(prog):
        cmd = parse_train_command(list(argv), description=TRAIN_DESCRIPTION.format(run=run))
    if cmd.resume:
        ignored = resume_ignores(argv)
        if ignored:
            print(
                f"error: --resume continues the run with its own config.json, so {', '.join(ignored)} would be "
                "ignored; drop them, or start a new run with another --out to change them",
                file=sys.stderr,
            )
            return 1
    reuse_freed_memory()
    try:
        final = run_training(cmd.config, cmd.out, resume=cmd.resume)
        curve = write_learning_curve(cmd.out)  # RUN/learning_curve.png from eval_history.json
    except (ValueError, RunDirectoryError, OSError, BackendError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"done: {final}")
    if curve is not None:
        print(f"learning curve: {curve}")
    return 0


def resume_ignores(argv: Sequence[str]) -> list[str]:
    """The options of a ``--resume`` command line that a resumed run does not read (all but ``--out``)."""
    return [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in ("--out", "--resume")]


def evaluate(argv: Sequence[str], run: str = "python eval.py", prog: str | None = None) -> int:
    """Parse an evaluation command line and evaluate; prints the report table; returns the exit code.

    Args:
        argv: The arguments (:class:`agents.run_eval.EvalArgs` fields).
        run: How the command is invoked, for the examples in ``--help``.
        prog: The program name in usage lines (None: ``sys.argv[0]``).
    """
    import tyro

    from agents.run_eval import EvalArgs, run_eval
    from agents.runtime import reuse_freed_memory
    from envs.lm.backends import BackendError
    from policies.reducer import ReducerError

    args = tyro.cli(EvalArgs, args=list(argv), prog=prog, description=EVAL_DESCRIPTION.format(run=run))
    reuse_freed_memory()
    try:
        table = run_eval(args)
    except (ValueError, OSError, ReducerError, BackendError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tokenkeep`` entry point; returns the exit code (2 for an unknown or missing command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "compress":
        from policies.compress import main as compress

        return compress(rest, prog="tokenkeep compress")
    if command == "train":
        return train(rest, run="tokenkeep train", prog="tokenkeep train")
    if command == "eval":
        return evaluate(rest, run="tokenkeep eval", prog="tokenkeep eval")
    print(f"tokenkeep: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
