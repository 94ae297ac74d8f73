import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.baselines import BASELINES, make_baselines
from agents.config import PRESETS, PPOConfig, RunConfig, TaskConfig
from agents.evaluate import evaluate
from agents.ppo import train
from agents.run_eval import EvalArgs, run_eval
from envs.tasks.examples import encode_example
from envs.tasks.families import make_examples
from policies.budget import Budget, keep_top
from policies.processor import ProcessorConfig
from policies.reducer import ReducerError

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "task",
    "method",
    "rate",
    "n",
    "kept_ratio",
    "tokens_in",
    "tokens_out",
    "em",
    "em_ci",
    "loglik",
    "loglik_ci",
    "choice_acc",
    "choice_acc_ci",
    "evidence_recall",
    "reducer_ms",
    "model_ms",
}


def _encs(lm, family="qa", n=6):
    return [encode_example(lm.tokenizer, ex) for ex in make_examples(family, "heldout", n, seed=2)]


def test_keep_top_meets_rate_and_breaks_ties_by_position():
    for n in (1, 2, 7, 50):
        for rate in (0.01, 0.3, 0.5, 0.99, 1.0):
            keep = keep_top(np.zeros(n), Budget(rate=rate).max_tokens(n))
            assert keep.sum() <= max(1, rate * n + 1e-9) and keep.sum() > rate * n - 1 and keep.sum() >= 1
            assert keep[: keep.sum()].all(), "ties go to earlier tokens"
    assert keep_top([0.1, 0.9, 0.5, 0.9], 2).tolist() == [False, True, False, True]


def test_every_baseline_meets_its_rate(tiny_lm):
    encs = _encs(tiny_lm)
    for method in make_baselines(BASELINES, tiny_lm):
        for rate in (0.2, 0.5, 0.8):
            masks = method.keep(encs, Budget(rate=rate))
            assert [len(m) for m in masks] == [len(e.context) for e in encs], method.name
            for e, m in zip(encs, masks, strict=True):
                if method.name in ("bm25", "semantic", "evidence"):  # whole sentences or the evidence: <= the budget
                    assert 0 < m.sum() <= Budget(rate=rate).max_tokens(len(e.context)), (method.name, rate)
                elif method.uses_rate:
                    assert m.sum() == Budget(rate=rate).max_tokens(len(e.context)), (method.name, rate)
                else:  # full context ignores the budget and keeps everything
                    assert m.all(), method.name


def test_evidence_baseline_keeps_the_evidence_alone(tiny_lm):
    encs = _encs(tiny_lm, "multihop", 6)
    (method,) = make_baselines(["evidence"], tiny_lm)
    for rate in (0.05, 0.3, 0.9):
        for e, m in zip(encs, method.keep(encs, Budget(rate=rate)), strict=True):
            evidence = np.asarray(e.evidence, dtype=bool)
            budget = Budget(rate=rate).max_tokens(len(e.context))
            assert not (m & ~evidence).any(), "nothing but evidence"
            assert m.sum() == min(int(evidence.sum()), budget), (rate, "all of it, up to the budget")
            if m.sum() < evidence.sum():  # over the budget: the earliest evidence tokens
                assert m[evidence][: m.sum()].all()


def test_report_keys_and_oracle_beats_random_on_evidence(tiny_lm):
    tasks = {"qa:heldout": _encs(tiny_lm, "qa", 8), "kv:heldout": _encs(tiny_lm, "kv", 8)}
    methods = make_baselines(["full", "random", "oracle", "head"], tiny_lm)
    report = evaluate(tiny_lm, methods, tasks, [0.3, 0.6], n_boot=200, progress=False)
    assert {"schema_version", "created", "machine", "model", "rates", "tasks", "methods", "results", "examples"} <= set(
        report
    )
    for row in report["results"]:
        assert ROW_KEYS <= set(row)
        lo, hi = row["em_ci"]
        assert lo <= row["em"] <= hi
    rows = {(r["task"], r["method"], r["rate"]): r for r in report["results"]}
    assert rows[("qa:heldout", "full", None)]["kept_ratio"] == 1.0
    assert rows[("qa:heldout", "full", None)]["choice_acc"] is not None
    assert rows[("kv:heldout", "full", None)]["choice_acc"] is None
    for task in tasks:
        for rate in (0.3, 0.6):
            oracle, rand = rows[(task, "oracle", rate)], rows[(task, "random", rate)]
            assert abs(oracle["kept_ratio"] - rand["kept_ratio"]) < 0.05
            assert oracle["evidence_recall"] > rand["evidence_recall"] + 0.3


def test_eval_errors(tiny_lm, tmp_path):
    base = dict(out=str(tmp_path / "r"), baselines=("full",))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        run_eval(EvalArgs(tasks="kv:heldout", rates=(0.5, 1.5), **base), lm=tiny_lm)
    with pytest.raises(ValueError, match="unknown task spec"):
        run_eval(EvalArgs(tasks="nope:heldout", **base), lm=tiny_lm)
    with pytest.raises(ReducerError, match="not found"):
        run_eval(EvalArgs(tasks="kv:heldout", reducer=(str(tmp_path / "missing"),), **base), lm=tiny_lm)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "question": "q", "answer": "a"}\n{"context": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        run_eval(EvalArgs(tasks=f"jsonl:{bad}", **base), lm=tiny_lm)
    with pytest.raises(ValueError, match="unknown baseline"):
        run_eval(EvalArgs(tasks="kv:heldout", out=str(tmp_path / "r"), baselines=("magic",)), lm=tiny_lm)


def test_end_to_end_smoke_train_export_eval(tiny_lm, tmp_path):
    cfg = replace(
        PRESETS["smoke"],
        tasks=TaskConfig(train="kv:train:n=16,distractors=2"),
        processor=ProcessorConfig(max_len=128),
        ppo=PPOConfig(total_timesteps=64, n_envs=4, n_steps=8, batch_size=16),
        run=RunConfig(eval_freq=0, progress_bar=False),
    )
    train(cfg, tmp_path / "run", lm=tiny_lm)
    reducer_dir = tmp_path / "run" / "reducer"
    assert (reducer_dir / "model.safetensors").exists()
    data = tmp_path / "t.jsonl"
    rows = [
        {
            "context": f"The code for otter is {1000 + i}. The sky is blue.",
            "question": "What is the code for otter?",
            "answer": f" {1000 + i}",
            "answer_prefix": "The code for otter is",
        }
        for i in range(4)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = run_eval(
        EvalArgs(
            tasks=f"kv:heldout:n=4,distractors=2,jsonl:{data}",
            out=str(tmp_path / "report"),
            reducer=(str(reducer_dir),),
            baselines=("full", "random", "oracle"),
            rates=(0.5,),
            progress=False,
        ),
        lm=tiny_lm,
    )
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "pareto.png", "examples.html"}
    report = json.loads((out / "report.json").read_text())
    methods = {r["method"] for r in report["results"]}
    assert methods == {"tokenkeep:run", "full", "random", "oracle"}  # oracle only where evidence exists
    assert not [r for r in report["results"] if r["method"] == "oracle" and r["task"].startswith("jsonl")]
    assert "tokenkeep:run" in table and "<span class='k'>" in (out / "examples.html").read_text()
    with pytest.raises(FileExistsError):
        run_eval(EvalArgs(tasks="kv:heldout:n=2", out=str(out), baselines=("full",)), lm=tiny_lm)


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_cli_help(script):
    env = dict(os.environ, COLUMNS="200")
    out = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, check=True, env=env
    )
    assert "--out" in out.stdout
    if script == "train.py":
        for opt in ("--preset", "--resume", "--ppo.total-timesteps", "--budget.cost-low", "--run.seed"):
            assert opt in out.stdout


def test_train_help_shows_the_chosen_presets_values():
    def total_timesteps_default(preset):
        out = subprocess.run(
            [sys.executable, "train.py", "--preset", preset, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, COLUMNS="80"),  # one column: an option's default follows it
        ).stdout
        after = out[out.index("--ppo.total-timesteps INT") :]
        return after[: after.index(")") + 1]

    assert f"(default: {PRESETS['default'].ppo.total_timesteps})" in total_timesteps_default("default")
    assert f"(default: {PRESETS['smoke'].ppo.total_timesteps})" in total_timesteps_default("smoke")


def test_cli_errors_are_clear():
    out = subprocess.run(
        [sys.executable, "eval.py", "--tasks", "kv:heldout", "--rates", "0", "2", "--out", "/tmp/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "(0, 1]" in out.stderr
    out = subprocess.run(  # the spec is checked before the (missing) model is looked for
        [sys.executable, "eval.py", "--tasks", "kvv:heldout", "--model", "/nonexistent/m.gguf", "--out", "/tmp/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "unknown task spec 'kvv:heldout'" in out.stderr
    out = subprocess.run(
        [sys.executable, "train.py", "--preset", "nope", "--out", "/tmp/x"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode != 0 and "invalid choice" in out.stderr


def _assert_same_per_example(got, ref, keys=None):
    for key in keys or ref:
        assert key in got, key
        for metric in ("em", "choice_acc", "kept"):
            if metric in ref[key]:
                assert got[key][metric] == ref[key][metric], (key, metric)
        assert np.allclose(got[key]["loglik"], ref[key]["loglik"], atol=1e-4), key


@pytest.fixture(scope="module")
def all_methods(tiny_lm):
    from agents.baselines import ReducerMethod
    from policies.reducer import TokenReducer

    reducer = TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec, processor=ProcessorConfig(max_len=512)
    )
    return [ReducerMethod(reducer, "untrained"), *make_baselines(BASELINES, tiny_lm)]


def test_batched_evaluation_matches_one_at_a_time_and_score_reduced(tiny_lm, all_methods):
    from agents.eval_batch import EvalTrace
    from envs.scoring import choice_priors, score_reduced

    tasks = {"qa:heldout": _encs(tiny_lm, "qa", 5), "kv:heldout": _encs(tiny_lm, "kv", 5)}
    one, big = EvalTrace(), EvalTrace()
    for trace, size in ((one, 1), (big, 64)):
        evaluate(tiny_lm, all_methods, tasks, [0.3], n_boot=10, progress=False, chunk_size=size, trace=trace)
    assert len(big.per_example) == 2 * (len(all_methods) + 1)  # + the reducer's adaptive budget
    # random draws per position in the chunk (its own, documented seeding), so it differs with the chunk size
    _assert_same_per_example(big.per_example, one.per_example, [k for k in one.per_example if k[1] != "random"])
    assert big.calls == 2 * 2 and one.calls == 2 * 10  # two batched scoring calls per chunk
    # the same numbers as scoring each method's reduced contexts on their own
    for task, encs in tasks.items():
        priors = choice_priors(tiny_lm, encs) if encs[0].choices is not None else None
        for m in all_methods:
            budgets = [Budget(rate=0.3)] if m.uses_rate else [Budget()]
            for budget in budgets + ([Budget()] if m.adaptive else []):
                masks, contexts = m.reduce(encs, budget)
                res = score_reduced(tiny_lm, encs, contexts, priors)
                kind = "full" if not m.uses_rate else ("adaptive" if budget.adaptive else "rate")
                got = big.per_example[(task, m.name, kind, budget.rate)]
                assert got["kept"] == [len(c) / len(e.context) for e, c in zip(encs, contexts, strict=True)], m.name
                assert got["em"] == res.exact_match.double().tolist(), m.name
                assert np.allclose(got["loglik"], res.loglik.numpy(), atol=1e-4), m.name
                if res.choice_calibrated is not None:
                    assert got["choice_acc"] == res.choice_calibrated.double().tolist(), m.name


def test_no_adaptive_scores_the_reducer_at_the_rates_alone(tiny_lm, all_methods):
    from agents.eval_batch import EvalTrace

    trace = EvalTrace()
    tasks = {"kv:heldout": _encs(tiny_lm, "kv", 2)}
    evaluate(tiny_lm, all_methods[:1], tasks, [0.3, 0.5], n_boot=10, progress=False, trace=trace, adaptive=False)
    assert {k[2:] for k in trace.per_example} == {("rate", 0.3), ("rate", 0.5)}


def test_deduplication_does_not_change_results(tiny_lm):
    from agents.baselines import HeadKeep, TailKeep
    from agents.eval_batch import EvalTrace

    class Head2(HeadKeep):
        name = "head2"  # keeps exactly what head keeps: every prompt of it is a duplicate

    encs = _encs(tiny_lm, "qa", 6)
    methods = [*make_baselines(["full", "selective_context"], tiny_lm), HeadKeep(), Head2(), TailKeep()]
    rates = [0.4, 1.0]  # at 1.0 head and tail keep the full context: the full prompt again
    shared = EvalTrace()
    evaluate(tiny_lm, methods, {"qa": encs}, rates, n_boot=10, progress=False, trace=shared)
    alone: dict = {}
    for m in methods:
        trace = EvalTrace()
        evaluate(tiny_lm, [m], {"qa": encs}, rates, n_boot=10, progress=False, trace=trace)
        alone.update(trace.per_example)
    _assert_same_per_example(shared.per_example, alone)
    n = len(encs)
    # distinct: priors, full prompts (full, selective_context's surprisal, every 1.0 row), head / selective / tail
    # at 0.4 (head2 shares head's)
    assert shared.prompts == n * (1 + 1 + 3) < shared.requested
    assert shared.tokens_by_method["head"] == shared.tokens_by_method["head2"]


def test_selective_context_from_the_full_forward_equals_a_separate_forward(tiny_lm):
    from agents.baselines import SelectiveContext
    from agents.eval_batch import EvalTrace

    encs = _encs(tiny_lm, "kv", 4)
    prefix = list(tiny_lm.layout.prefix)
    separate = tiny_lm.score_answers([prefix] * len(encs), [e.context for e in encs]).token_logprobs
    method = SelectiveContext(tiny_lm)
    prompts = [method.surprisal_prompt(e) for e in encs]
    shared = tiny_lm.score_continuations_and_spans(
        [p for p, _ in prompts], [[e.answer] for e in encs], [s for _, s in prompts]
    )
    for e, r, sep in zip(encs, shared, separate, strict=True):
        assert r.span_logprobs.shape == (len(e.context),)
        assert torch.allclose(r.span_logprobs, sep, atol=1e-4)
    for got, sep in zip(method.scores(encs), separate, strict=True):
        assert np.allclose(got, -sep.numpy(), atol=1e-4)
    # in the evaluator the full prompt runs once, for the full scores and the surprisal together
    trace = EvalTrace()
    evaluate(tiny_lm, make_baselines(["full", "selective_context"], tiny_lm), {"kv": encs}, [0.3], progress=False,
             n_boot=10, trace=trace)  # fmt: skip
    assert trace.prompts == 2 * len(encs)  # full prompts, then the selective reduced prompts
    assert trace.tokens_by_method["selective_context"] > trace.tokens_by_method["full"]  # its forward + its prompts


def test_learning_curve_png_from_eval_history(tmp_path):
    from agents.report import write_learning_curve

    assert write_learning_curve(tmp_path) is None  # no periodic evaluation: nothing to draw
    history = [
        {"timesteps": t, "kv:heldout/policy_rate0.5": s, "kv:heldout/full": 0.5, "kv:heldout/random_rate0.5": 0.1}
        for t, s in ((64, 0.2), (128, 0.6))
    ]
    (tmp_path / "eval_history.json").write_text(json.dumps(history))
    path = write_learning_curve(tmp_path)
    assert path == tmp_path / "learning_curve.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed
    with pytest.raises(ValueError, match="no evaluation at rate 0.3"):
        write_learning_curve(tmp_path, rate=0.3)


def test_reducer_method_names_follow_the_run_or_the_directory():
    from pathlib import Path

    from agents.run_eval import reducer_name, unique_name

    assert reducer_name(Path("runs/d7/reducer")) == "tokenkeep:d7"
    assert reducer_name(Path("runs/d7_step0")) == "tokenkeep:d7_step0"  # not "runs"
    taken: set[str] = set()
    assert [unique_name("tokenkeep:a", taken) for _ in range(3)] == ["tokenkeep:a", "tokenkeep:a'", "tokenkeep:a''"]
