"""Evaluate trained reducers against baselines on held-out tasks, at equal kept ratios.

Thin: the code is :func:`agents.cli.evaluate`, also run by ``tokenkeep eval``; ``python eval.py --help`` lists
every option and examples.
"""

import sys

from agents.cli import evaluate

if __name__ == "__main__":
    sys.exit(evaluate(sys.argv[1:]))
