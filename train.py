"""Train a token-keeping policy with PPO on a frozen generative model, then export its reducer.

Thin: the code is :func:`agents.cli.train`, also run by ``tokenkeep train``; ``python train.py --help`` lists
every option and examples.
"""

import sys

from agents.cli import train

if __name__ == "__main__":
    sys.exit(train(sys.argv[1:]))
