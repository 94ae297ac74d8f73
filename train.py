"""Train a token-keeping policy with PPO on a frozen generative model.

Examples:
    python train.py --preset smoke --out runs/smoke
    python train.py --preset default --out runs/default
    python train.py --preset default --out runs/cheap --total-timesteps 1024 --tasks kv:train
    python train.py --resume --out runs/default        # continue an interrupted run
"""

import argparse
import sys

from agents.config import PRESETS, add_config_arguments, resolve_config
from agents.ppo import RunDirectoryError, train


def main() -> None:
    """Parse the command line and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS), help="base config to start from")
    parser.add_argument("--out", required=True, help="run directory (config, logs, checkpoints, reducer/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_arguments(parser)
    args = vars(parser.parse_args())
    preset, out, resume = args.pop("preset"), args.pop("out"), args.pop("resume")
    try:
        config = resolve_config(preset, args)
        final = train(config, out, resume=resume)
    except (ValueError, RunDirectoryError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"done: {final}")


if __name__ == "__main__":
    main()
