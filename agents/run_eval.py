"""Library side of eval.py: resolve reducers, tasks and baselines, evaluate, write the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents.baselines import BASELINES, KeepMethod, ReducerMethod, make_baselines
from agents.evaluate import evaluate, load_eval_tasks
from agents.report import markdown_table, write_report
from envs.frozen_lm import FrozenLM
from envs.model_cache import DEFAULT_MODEL_SPEC
from policies.reducer import TokenReducer


@dataclass
class EvalArgs:
    """Evaluate trained reducers against baselines on held-out tasks, at equal kept ratios.

    Attributes:
        tasks: Task spec(s), comma-separated, e.g. passkey:heldout,kv:heldout,jsonl:my.jsonl.
        out: Report directory to write (must not exist or be empty).
        reducer: Reducer directories to evaluate (several compare side by side).
        model: Frozen model spec that answers (default: the first reducer's base model).
        small_lm: Small LM spec for the llmlingua baseline (default: the frozen model).
        rates: Kept ratios to compare at, each in (0, 1].
        baselines: Baselines to include.
        n: Examples per synthetic task spec without its own n=.
        seed: Seed for synthetic tasks, random keeping and the bootstrap.
        dtype: Frozen model dtype.
        token_cost: Token cost the reducers are conditioned on (default: each reducer's own).
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
    seed: int = 0
    dtype: str = "float32"
    token_cost: float | None = None
    progress: bool = True


def run_eval(args: EvalArgs, lm: FrozenLM | None = None) -> str:
    """Evaluate and write the report; returns the markdown table.

    Args:
        args: The options.
        lm: An already loaded frozen model (else loaded from ``args.model`` or the reducer's base model).

    Raises:
        ValueError: On bad rates, task specs or baselines.
        FileExistsError: If ``args.out`` exists and is not empty.
        ReducerError: On an unreadable reducer or one trained for another model.
    """
    if not args.rates:
        raise ValueError("give at least one rate")
    bad = [r for r in args.rates if not 0 < r <= 1]
    if bad:
        raise ValueError(f"rates must lie in (0, 1], got {bad}")
    unknown = [b for b in args.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    reducers = [(Path(d), TokenReducer.from_pretrained(d)) for d in args.reducer]
    if lm is None:
        spec = args.model or (reducers[0][1].config.base_model.spec if reducers else DEFAULT_MODEL_SPEC)
        lm = FrozenLM.load(spec, dtype=args.dtype)
    tasks = load_eval_tasks(args.tasks, lm.tokenizer, args.n, seed=args.seed)
    methods: list[KeepMethod] = []
    names = set()
    for path, reducer in reducers:
        reducer.check_compatible(lm.tokenizer, lm.spec, lm.file_hash)
        name = f"tokenkeep:{path.parent.name if path.name == 'reducer' else path.name}"
        while name in names:
            name += "'"
        names.add(name)
        methods.append(ReducerMethod(reducer, name, args.token_cost))
    small = FrozenLM.load(args.small_lm, dtype=args.dtype) if args.small_lm else None
    methods += make_baselines(args.baselines, lm, small, seed=args.seed)
    if not methods:
        raise ValueError("nothing to evaluate: give --reducer or --baselines")
    report = evaluate(lm, methods, tasks, args.rates, seed=args.seed, progress=args.progress)
    write_report(report, out)
    return markdown_table(report)
