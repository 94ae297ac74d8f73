"""Library side of eval.py: resolve reducers, tasks and baselines, evaluate, write the report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agents.baselines import BASELINES, KeepMethod, ReducerMethod, make_baselines
from agents.evaluate import evaluate, load_eval_tasks
from agents.report import markdown_table, write_report
from envs.lm.backends import is_remote_spec
from envs.lm.frozen_lm import FrozenLM
from envs.lm.model_cache import DEFAULT_MODEL_SPEC
from envs.tasks.specs import TaskSpec, split_specs
from policies.reducer import TokenReducer
from policies.reducer_config import tokenizer_fingerprint


@dataclass
class EvalArgs:
    """Evaluate trained reducers against baselines on held-out tasks, at equal kept ratios.

    Attributes:
        tasks: Task spec(s), comma-separated, e.g. passkey:heldout,kv:heldout,jsonl:my.jsonl.
        out: Report directory to write (must not exist or be empty).
        reducer: Reducer directories to evaluate (several compare side by side).
        model: Frozen model spec that answers (default: the first reducer's base model); vllm+http://HOST:PORT
            scores with a vLLM server (docs/scaling.md).
        small_lm: Small LM spec for the llmlingua baseline (default: the frozen model).
        rates: Kept ratios to compare at, each in (0, 1].
        baselines: Baselines to include: full, random, head, tail, bm25, semantic, selective_context, llmlingua,
            oracle (the marked evidence, then the rest of the rate) and evidence (the marked evidence alone); the
            last two only on tasks that mark evidence.
        n: Examples per built-in task spec without its own n=.
        n_real: Examples per real-text task spec (passages, longdoc) without its own n= (default: n); their
            contexts are 3-10 times longer than the synthetic ones'.
        seed: Seed for synthetic tasks, random keeping and the bootstrap.
        dtype: Frozen model dtype.
        token_cost: Token cost the reducers are conditioned on (default: each reducer's own).
        retokenize: Serve reducers trained for another base model: skip the base-model check and, where the
            frozen model's tokenizer differs from a reducer's, re-tokenize the reducer's kept text with it
            (its method name then ends in "(re-tokenized)").
        adaptive: Also evaluate each reducer at its own budget (the "auto" rows: what it keeps without a rate);
            --no-adaptive compares at the rates alone, in about half the reducers' time.
        progress: Show a progress bar.
    """

    tasks: str
    out: str
    reducer: tuple[str, ...] = ()
    model: str | None = None
    small_lm: str | None = None
    rates: tuple[float, ...] = (0.3, 0.5, 0.7)
    baselines: tuple[str, ...] = BASELINES
    n: int = 24
    n_real: int | None = None
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    token_cost: float | None = None
    retokenize: bool = False
    adaptive: bool = True
    progress: bool = True


def reducer_name(path: Path) -> str:
    """A reducer's method name in reports: ``tokenkeep:<run>`` for ``<run>/reducer``, else its directory's name."""
    path = Path(path)
    return f"tokenkeep:{path.parent.name if path.name == 'reducer' else path.name}"


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, primed until it is not in ``taken`` (which it is then added to)."""
    while name in taken:
        name += "'"
    taken.add(name)
    return name


def check_task_specs(tasks: str) -> None:
    """Parse every task spec and check that JSONL files exist; warn where a spec evaluates a training split.

    Raises:
        ValueError: On a malformed or unknown spec.
        FileNotFoundError: On a missing JSONL file.
    """
    specs = split_specs(tasks)
    if not specs:
        raise ValueError("give at least one task spec, e.g. --tasks kv:heldout")
    for text in specs:
        spec = TaskSpec.parse(text)
        if spec.family == "jsonl":
            if not Path(spec.split).is_file():
                raise FileNotFoundError(f"task spec {text!r}: no such file {spec.split}")
        elif spec.split == "train":
            print(
                f"warning: task spec {text!r} evaluates the family's training split; write "
                f"{spec.family}:heldout for examples no policy was trained on",
                file=sys.stderr,
            )


def run_eval(args: EvalArgs, lm: FrozenLM | None = None) -> str:
    """Evaluate and write the report; returns the markdown table.

    Args:
        args: The options.
        lm: An already loaded frozen model (else loaded from ``args.model`` or the reducer's base model).

    Raises:
        ValueError: On bad rates, task specs or baselines.
        FileExistsError: If ``args.out`` exists and is not empty.
        ReducerError: On an unreadable reducer or one trained for another model (without ``retokenize``).
        BackendError: When a served frozen model cannot be reached or is not the expected one.
    """
    if not args.rates:
        raise ValueError("give at least one rate")
    bad = [r for r in args.rates if not 0 < r <= 1]
    if bad:
        raise ValueError(f"rates must lie in (0, 1], got {bad}")
    unknown = [b for b in args.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    if args.n < 1 or (args.n_real is not None and args.n_real < 1):
        raise ValueError(f"--n and --n-real must be >= 1, got {args.n} and {args.n_real}")
    check_task_specs(args.tasks)  # before minutes of loading
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    reducers = [(Path(d), TokenReducer.from_pretrained(d)) for d in args.reducer]
    if lm is None:
        spec = args.model or (reducers[0][1].config.base_model.spec if reducers else DEFAULT_MODEL_SPEC)
        lm = FrozenLM.load(spec, dtype=args.dtype)
    tasks = load_eval_tasks(args.tasks, lm.tokenizer, args.n, seed=args.seed, n_real=args.n_real)
    methods: list[KeepMethod] = []
    names = set()
    for path, reducer in reducers:
        if not args.retokenize:
            # A served model's spec is an address, not an identity: there the tokenizer is what can be compared
            # (the server's model name and tokenizer were checked on connection).
            local = not (lm.remote or is_remote_spec(reducer.config.base_model.spec))
            reducer.check_compatible(lm.tokenizer, lm.spec if local else None, lm.file_hash if local else None)
        same = tokenizer_fingerprint(lm.tokenizer) == reducer.config.tokenizer.fingerprint
        name = unique_name(reducer_name(path) + ("" if same else " (re-tokenized)"), names)
        if not same:
            print(f"{name}: the reducer's tokenizer differs from the frozen model's; its kept text is re-tokenized")
        methods.append(ReducerMethod(reducer, name, args.token_cost, retokenize_with=None if same else lm.tokenizer))
    small = FrozenLM.load(args.small_lm, dtype=args.dtype) if args.small_lm else None
    methods += make_baselines(args.baselines, lm, small, seed=args.seed)
    if not methods:
        raise ValueError("nothing to evaluate: give --reducer or --baselines")
    report = evaluate(lm, methods, tasks, args.rates, seed=args.seed, progress=args.progress, adaptive=args.adaptive)
    write_report(report, out)
    return markdown_table(report)
