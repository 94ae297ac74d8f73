"""Library side of eval.py: resolve reducers, tasks and baselines, evaluate, write the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agents.baselines import KeepMethod, ReducerMethod, make_baselines
from agents.evaluate import evaluate, markdown_table, write_report
from envs.frozen_lm import DEFAULT_MODEL_SPEC, FrozenLM
from envs.tasks import TaskSpec, encode_example, split_specs
from policies.reducer import TokenReducer


@dataclass
class EvalArgs:
    """Options of one evaluation (see ``python eval.py --help``)."""

    tasks: str
    out: str
    reducers: list[str] = field(default_factory=list)
    model: str | None = None
    small_lm: str | None = None
    rates: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    baselines: list[str] = field(default_factory=list)
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
        ReducerError: On an unreadable reducer or one trained for another model.
    """
    if not args.rates:
        raise ValueError("give at least one rate")
    bad = [r for r in args.rates if not 0 < r <= 1]
    if bad:
        raise ValueError(f"rates must lie in (0, 1], got {bad}")
    specs = [TaskSpec.parse(s) for s in split_specs(args.tasks)]  # fails early on unknown specs
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    reducers = [(Path(d), TokenReducer.from_pretrained(d)) for d in args.reducers]
    if lm is None:
        spec = args.model or (reducers[0][1].config["base_model"]["spec"] if reducers else DEFAULT_MODEL_SPEC)
        lm = FrozenLM.load(spec, dtype=args.dtype)
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
    tasks = {}
    for spec, text in zip(specs, split_specs(args.tasks), strict=True):
        examples = spec.examples(default_n=args.n, seed=args.seed)
        tasks[text] = [encode_example(lm.tokenizer, ex) for ex in examples]
    report = evaluate(lm, methods, tasks, args.rates, seed=args.seed, progress=args.progress)
    write_report(report, out)
    return markdown_table(report)
