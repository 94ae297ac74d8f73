"""Train a token-keeping policy with PPO on a frozen generative model, then export its reducer.

Examples:
    python train.py --preset smoke --out runs/smoke
    python train.py --preset default --out runs/default
    python train.py --preset default --out runs/cheap --ppo.total-timesteps 1024 --tasks.train kv:train
    python train.py --resume --out runs/default        # continue an interrupted run
    python train.py --preset default --out runs/served --model.spec vllm+http://127.0.0.1:8000  # docs/scaling.md
"""

import sys

from agents.config import parse_train_command
from agents.ppo import train
from agents.report import write_learning_curve
from agents.run_dir import RunDirectoryError
from envs.backends import BackendError


def main() -> None:
    """Parse the command line and train."""
    cmd = parse_train_command(description=__doc__)
    try:
        final = train(cmd.config, cmd.out, resume=cmd.resume)
        curve = write_learning_curve(cmd.out)  # RUN/learning_curve.png from eval_history.json
    except (ValueError, RunDirectoryError, FileNotFoundError, BackendError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"done: {final}")
    if curve is not None:
        print(f"learning curve: {curve}")


if __name__ == "__main__":
    main()
