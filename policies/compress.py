"""The ``tokenkeep compress`` command: reduce the context on standard input with a saved reducer.

Deployable like the rest of :mod:`policies` (torch, safetensors, tokenizers; no trainer, no gymnasium)::

    tokenkeep compress --reducer runs/default/reducer --question "What is the pass key?" --rate 0.3 < context.txt
    tokenkeep compress --reducer DIR --target-tokens 200 --force-keep "Q3 revenue" --json < context.txt

Prints the reduced context (stripped, then one line break), or with ``--json`` one JSON object: ``text`` (the
kept text, unstripped), ``kept_ratio``, ``original_tokens``, ``kept_tokens``, ``max_tokens``,
``forced_tokens``, ``kept_spans`` (``[start, end]`` character spans of the input that were kept) and
``budget``. Standard input is read as UTF-8 (a byte-order mark is skipped).

Exit codes: 0 done; 1 the reduction failed (reducer directory missing or unreadable, nothing on standard
input, input not UTF-8, a ``--force-keep`` text that does not occur or that alone exceeds the budget); 2 a bad
command line (unknown option, a rate outside (0, 1], rate and target together).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from policies.budget import Budget, BudgetError
from policies.reducer import TokenReducer
from policies.reducer_config import ReducerError

EPILOG = """examples:
  {prog} --reducer runs/default/reducer --question "What is the pass key?" --rate 0.3 < context.txt
  {prog} --reducer DIR --target-tokens 200 --force-keep "Q3 revenue" --json < context.txt

Without --rate or --target-tokens the reducer's adaptive mode decides how much to keep.

exit codes: 0 done; 1 the reduction failed (reducer directory missing or unreadable, nothing on standard input,
input not UTF-8, a --force-keep text that does not occur or alone exceeds the budget); 2 bad command line."""


class CompressError(Exception):
    """The context cannot be reduced; the message says why (exit code 1)."""


def build_parser(prog: str = "tokenkeep compress") -> argparse.ArgumentParser:
    """The command line of ``tokenkeep compress``."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Reduce the context read from standard input with a saved tokenkeep reducer and print it.",
        epilog=EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--reducer", required=True, metavar="DIR", help="reducer directory (save_pretrained / export)")
    ap.add_argument("--question", default=None, help="the question the context should answer (conditions the policy)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--rate", type=float, default=None, help="keep at most this fraction of the tokens, in (0, 1]")
    budget.add_argument("--target-tokens", type=int, default=None, metavar="N", help="keep at most N tokens")
    ap.add_argument(
        "--token-cost", type=float, default=None, help="adaptive mode only: the token cost the policy is conditioned on"
    )
    ap.add_argument(
        "--force-keep",
        action="append",
        default=[],
        metavar="TEXT",
        help="always keep every occurrence of TEXT (whole units, inside the budget); repeatable",
    )
    ap.add_argument("--json", action="store_true", help="print a JSON object (text, ratio, token counts, kept spans)")
    return ap


def read_context(stream: BinaryIO) -> str:
    """The UTF-8 text of ``stream`` (a byte-order mark skipped).

    Raises:
        CompressError: If the stream is a terminal, holds no text but whitespace, or is not UTF-8.
    """
    if stream.isatty():
        raise CompressError("no context: pipe the text to reduce into standard input (... < context.txt)")
    data = stream.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CompressError(
            f"standard input is not UTF-8 (byte 0x{data[err.start]:02x} at position {err.start})"
        ) from err
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise CompressError("no context: standard input is empty or whitespace only")
    return text


def main(
    argv: Sequence[str] | None = None,
    prog: str = "tokenkeep compress",
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run ``tokenkeep compress``; returns the exit code (argparse exits with 2 on a bad command line).

    Args:
        argv: The arguments after ``compress`` (default: ``sys.argv[1:]``).
        prog: The program name shown in help and errors.
        stdin: Where the context is read from (default: standard input's bytes).
        stdout: Where the result is written (default: standard output).
    """
    ap = build_parser(prog)
    args = ap.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        budget = Budget(rate=args.rate, target_tokens=args.target_tokens, token_cost=args.token_cost)
    except BudgetError as err:
        ap.error(str(err))
    out = sys.stdout if stdout is None else stdout
    try:
        context = read_context(sys.stdin.buffer if stdin is None else stdin)
        reducer = TokenReducer.from_pretrained(args.reducer)
        red = reducer.reduce(
            context,
            args.question,
            rate=budget.rate,
            target_tokens=budget.target_tokens,
            token_cost=budget.token_cost,
            force_keep=args.force_keep or None,
        )
    except (CompressError, ReducerError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        record = {
            "text": red.text,
            "kept_ratio": red.kept_ratio,
            "original_tokens": red.original_tokens,
            "kept_tokens": red.kept_tokens,
            "max_tokens": red.max_tokens,
            "forced_tokens": red.forced_tokens,
            "kept_spans": [[s, e] for s, e in red.kept_spans],
            "budget": {"rate": budget.rate, "target_tokens": budget.target_tokens, "token_cost": budget.token_cost},
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        out.write(red.text.strip() + "\n")
    return 0
