"""Force-keep: one rule (policies/budget.py) for the env and the reducer; spans and strings; passages."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.config import PRESETS, RunConfig
from agents.ppo import build_ppo
from envs.core import TokenKeepCore
from envs.tasks.families import make_examples
from envs.tasks.jsonl import JsonlError, load_jsonl, write_jsonl
from envs.token_keep_env import TokenKeepEnv
from envs.vec_env import BatchedTokenKeepVecEnv
from policies import Budget, BudgetConfig, ProcessorConfig, ReducerError, TokenReducer
from policies.budget import BudgetError, TokenLimits, probe_units, select_units
from policies.force_keep import resolve_force_keep
from policies.network import NetworkConfig
from policies.ranking import RankingDistribution

UNITS = ("token", "word", "sentence")
CTX = (
    "The code for otter is 1234. The sky is blue over the hills. The code for heron is 9876. "
    "Birds sing at dawn in the north. The code for lynx is 5555."
)
Q = "What is the code for heron?"


# ---------------------------------------------------------------------------------------------- the one rule
def test_select_units_keeps_forced_first_inside_the_budget():
    lengths = np.array([3, 2, 4, 1, 5, 0])  # the last unit is padding
    priority = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    forced = np.array([False, False, False, False, True, False])
    keep = select_units(priority, lengths, TokenLimits(False, 0, 9), forced)
    # forced unit 4 (5 tokens) first, then the best that fit in the 4 left: unit 0 (3), then unit 3 (1)
    assert keep.tolist() == [True, False, False, True, True, False]
    assert lengths[keep].sum() <= 9
    with pytest.raises(BudgetError, match=r"5 tokens .* budget of 4 tokens"):
        select_units(priority, lengths, TokenLimits(False, 0, 4), forced)
    # adaptive: kept whatever the limits, and the policy's choice among the others (at least one of them)
    keep = select_units(priority - 0.85, lengths, TokenLimits(True, 0, 2), forced)
    assert keep[4] and keep.sum() == 2
    # the probe never refuses: forced above its size is a probe of the forced units alone
    assert probe_units(priority, lengths, 2, forced).tolist() == [False] * 4 + [True, False]
    assert probe_units(priority, lengths, 8, forced).tolist() == [True, False, False, False, True, False]
    # no forced units: unchanged
    assert select_units(priority, lengths, TokenLimits(False, 0, 5)).tolist() == [True, True] + [False] * 4


def test_resolve_force_keep_spans_strings_and_errors():
    text = "ab ab cd ab"
    assert resolve_force_keep(text, ["ab"]) == ((0, 2), (3, 5), (9, 11))  # every occurrence
    assert resolve_force_keep(text, [(6, 8), [0, 1]]) == ((0, 1), (6, 8))
    for bad, msg in [
        ([(0, 12)], "out of range"),
        ([(3, 3)], "out of range"),
        ([(-1, 2)], "out of range"),
        ([(0, 1, 2)], "neither"),
        ([(0.0, 1)], "neither"),
        ([(True, 2)], "neither"),
        (["zz"], "does not occur"),
        ([""], "empty string"),
        ([(0, 4), "ab"], "overlap"),
        ("ab", "must be a list"),
    ]:
        with pytest.raises(ValueError, match=msg):
            resolve_force_keep(text, bad)


# ---------------------------------------------------------------------------------------------- the reducer
@pytest.fixture(scope="module", params=UNITS)
def reducer(request, tiny_lm):
    proc = ProcessorConfig(max_len=64, unit=request.param)
    net = NetworkConfig(d_model=32, n_layers=1, n_unit_layers=1, n_heads=2)
    torch.manual_seed(0)
    return TokenReducer.from_base_model(
        tiny_lm.model, tiny_lm.tokenizer, spec=tiny_lm.spec, processor=proc, network=net
    )


def _covered(spans, s, e):
    """True when [s, e) lies inside the union of ``spans``."""
    chars = set()
    for a, b in spans:
        chars.update(range(a, b))
    return set(range(s, e)) <= chars


def test_forced_spans_are_in_every_output_and_the_budget_holds(reducer):
    long = " ".join([CTX] * 3)  # longer than one window: forced units across windows
    forced = [(4, 6), "heron", "5555."]  # (4, 6) is part of the word "code"
    spans = resolve_force_keep(long, forced)
    for rate in (0.45, 0.6, 0.9):  # the forced sentences are 41% of the context
        red = reducer.reduce(long, Q, rate=rate, force_keep=forced)
        assert red.original_tokens > 64 and red.kept_tokens <= red.max_tokens <= rate * red.original_tokens
        assert red.forced_tokens > 0 and red.kept_tokens >= red.forced_tokens
        for s, e in spans:
            assert _covered(red.kept_spans, s, e), (reducer.config.processor.unit, long[s:e])
        assert "".join(long[s:e] for s, e in red.kept_spans) == red.text
        # whole units: with word units the whole word "code" is kept, not "de"
        if reducer.config.processor.unit != "token":
            assert _covered(red.kept_spans, 4, 8)
    target = red.forced_tokens + 5
    red = reducer.reduce(long, Q, target_tokens=target, force_keep=forced)
    assert red.kept_tokens <= target and all(_covered(red.kept_spans, s, e) for s, e in spans)
    adaptive = reducer.reduce(long, Q, force_keep=forced)
    assert all(_covered(adaptive.kept_spans, s, e) for s, e in spans)


def test_force_keep_in_batches_and_rounds(tiny_lm):
    proc = ProcessorConfig(max_len=64, unit="word", rounds=2)
    net = NetworkConfig(d_model=32, n_layers=1, n_unit_layers=1, n_heads=2)
    reducer = TokenReducer.from_base_model(tiny_lm.model, tiny_lm.tokenizer, spec="tiny", processor=proc, network=net)
    reds = reducer.reduce_batch([CTX, CTX + " Fish swim."], [Q, Q], rate=0.4, force_keep=[["lynx"], None])
    assert "lynx" in reds[0].text and reds[0].forced_tokens > 0 and reds[1].forced_tokens == 0
    assert all(r.kept_tokens <= r.max_tokens for r in reds)
    assert reds[1].kept_ids == reducer.reduce(CTX + " Fish swim.", Q, rate=0.4).kept_ids


def test_bad_force_keep_is_refused_with_the_cause(reducer):
    unit = reducer.config.processor.unit
    with pytest.raises(ReducerError, match=r"context 0: force_keep span \(0, 999\) is out of range"):
        reducer.reduce(CTX, Q, rate=0.5, force_keep=[(0, 999)])
    with pytest.raises(ReducerError, match="neither"):
        reducer.reduce(CTX, Q, rate=0.5, force_keep=[(0, "3")])
    with pytest.raises(ReducerError, match="overlap"):
        reducer.reduce(CTX, Q, rate=0.5, force_keep=[(0, 10), (5, 12)])
    with pytest.raises(ReducerError, match="'walrus' does not occur"):
        reducer.reduce(CTX, Q, rate=0.5, force_keep=["walrus"])
    with pytest.raises(ReducerError, match=rf"alone is \d+ tokens \(whole {unit} units\), more than the budget of 3"):
        reducer.reduce(CTX, Q, target_tokens=3, force_keep=["The code for heron is 9876."])
    with pytest.raises(ReducerError, match="one list"):
        reducer.reduce_batch([CTX, CTX], [Q, Q], rate=0.5, force_keep=[["otter"]])
    with pytest.raises(ReducerError, match="one list"):
        reducer.reduce_batch([CTX], [Q], rate=0.5, force_keep="otter")


# ---------------------------------------------------------------------------------------------- passages
def test_reduce_documents_keeps_order_and_reports_per_document(reducer):
    docs = [
        "The code for otter is 1234. The grass is green.",
        "   ",
        "Rain falls in the valley. The code for heron is 9876.",
        "Birds sing at dawn. Fish swim in the lake. Snow melts in spring.",
    ]
    res = reducer.reduce_documents(Q, docs, rate=0.4, force_keep=["9876", (0, 0, 3)])
    assert [d.index for d in res.documents] == [0, 1, 2, 3] and 1 in res.dropped
    assert res.dropped == [d.index for d in res.documents if d.dropped]
    assert res.reduction.kept_tokens <= res.reduction.max_tokens
    for d in res.documents:
        assert d.text == "".join(docs[d.index][s:e] for s, e in d.spans)
        assert all(0 <= s < e <= len(docs[d.index]) for s, e in d.spans)
        assert list(d.spans) == sorted(d.spans)
    assert "9876" in res.documents[2].text and res.documents[0].text.startswith("The")
    # order: kept pieces appear in the joined text in document order
    assert res.text == "\n\n".join(d.text.strip() for d in res.kept)
    positions = [res.text.index(d.text.strip()) for d in res.kept]
    assert positions == sorted(positions)
    # a target of just the forced sentence drops every other document entirely
    fact = ["The code for heron is 9876."]
    n_forced = reducer.reduce_documents(Q, docs, target_tokens=10_000, force_keep=fact).reduction.forced_tokens
    tight = reducer.reduce_documents(Q, docs, target_tokens=n_forced, force_keep=fact)
    assert tight.dropped == [0, 1, 3] and tight.documents[2].text.endswith(fact[0])


def test_reduce_documents_errors(reducer):
    for docs, kw, msg in [
        ([], {}, "no documents"),
        ("a text", {}, "list of strings"),
        (["ok", 3], {}, "document 1 is int"),
        ([" ", "\n"], {}, "whitespace only"),
        (["a b c"], {"force_keep": ["zz"]}, "does not occur in any document"),
        (["a b c", " "], {"force_keep": [(1, 0, 1)]}, "whitespace only"),
        (["a b c"], {"force_keep": [(0, 0, 9)]}, "out of range"),
        (["a b c"], {"force_keep": [(2, 0, 1)]}, "names document 2"),
        (["a b c"], {"rate": 2.0}, "rate"),
    ]:
        with pytest.raises(ReducerError, match=msg):
            reducer.reduce_documents(Q, docs, **kw)


# ---------------------------------------------------------------------------------------------- the env
def _forced_examples(n=6):
    out = []
    for ex in make_examples("kv", "train", n, seed=3, distractors=3):
        s, e = ex.evidence[0]
        out.append(replace(ex, force_keep=((s, e),)))
    return out


def test_env_keeps_forced_units_and_lifts_drawn_rates(tiny_lm):
    budget = BudgetConfig(rate_low=0.05, rate_high=0.1, adaptive_fraction=0.5)
    core = TokenKeepCore(tiny_lm, _forced_examples(), processor=ProcessorConfig(max_len=96), budget=budget)
    rng = np.random.default_rng(0)
    for _ in range(20):
        i, b = core.sample(rng)
        f = core.forced_tokens(i)
        assert f > 0 and (b.adaptive or b.max_tokens(len(core.pool[i].context)) >= f)
        obs = core.observe([i], [b])
        enc = core.inputs[i]
        forced = core.forced_units[i]
        assert (obs["unit_lengths"][0, : enc.n_units][forced] == 0).all()
        assert obs["limits"][0, 2] == max(0, core.limits(i, b).max_tokens - f)
        keep = core.keep_mask(i, b, np.full(96, -1.0))  # the policy wants nothing: the forced units stay
        assert keep.sum() >= f and keep[np.isin(enc.unit_index, np.flatnonzero(forced))].all()
        if not b.adaptive:
            assert keep.sum() <= b.max_tokens(len(enc.context))
    env = TokenKeepEnv(core=core)
    with pytest.raises(ValueError, match=r"example 0 .*force-kept text alone is \d+ tokens"):
        env.reset(options={"index": 0, "budget": Budget(target_tokens=1)})


@pytest.mark.parametrize("rounds", [1, 2])
def test_env_ranking_cut_is_exactly_what_the_env_keeps_and_the_reducer_agrees(tiny_lm, tmp_path, rounds):
    """Sampled actions: the env keeps the forced units plus what the distribution's cut keeps, nothing else; the
    SB3 deterministic actions' keep mask (after a probe round, with two rounds) equals the exported reducer's."""
    from agents.export import export_reducer

    cfg = replace(
        PRESETS["smoke"],
        processor=ProcessorConfig(max_len=96, unit="word", rounds=rounds),
        budget=BudgetConfig(cost_low=0.2, cost_high=1.0, default_token_cost=0.4),
        network=NetworkConfig(d_model=32, n_layers=1, n_unit_layers=1, n_heads=2),
        run=RunConfig(progress_bar=False),
    )
    core = TokenKeepCore(tiny_lm, _forced_examples(), processor=cfg.processor, budget=cfg.budget)
    model = build_ppo(cfg, BatchedTokenKeepVecEnv(core, n_envs=4, seed=0), None)
    with torch.no_grad():
        for p in model.policy.net.score_head.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 2.0)
    idx = list(range(len(core.pool)))
    export_reducer(model, tiny_lm, cfg, tmp_path / "r")
    reducer = TokenReducer.from_pretrained(tmp_path / "r")
    for budget in (Budget(rate=0.4), Budget(rate=0.7), Budget(token_cost=0.4)):
        budgets = [budget] * len(idx)
        obs = core.observe(idx, budgets)
        tensors = {k: torch.as_tensor(v) for k, v in obs.items()}
        scores, stop, _ = model.policy.net(tensors)
        dist = RankingDistribution(scores, stop, tensors["unit_lengths"], tensors["limits"])
        sampled = dist.sample().numpy()
        for r, i in enumerate(idx):
            enc, forced = core.inputs[i], core.forced_units[i]
            episode = core.start([i], [budget])  # with two rounds, the first keeps a probe
            rule = episode.keep if episode.final else episode.advance
            keep = rule([np.pad(sampled[r], (0, 96 - sampled.shape[1]))])[0]
            kept_units = np.bincount(enc.unit_index[keep], minlength=enc.n_units) > 0
            # what the distribution's cut keeps, from the observation alone (forced units are not its to rank)
            lim = TokenLimits(bool(obs["limits"][r, 0]), int(obs["limits"][r, 1]), int(obs["limits"][r, 2]))
            cut = select_units(sampled[r, : enc.n_units], obs["unit_lengths"][r, : enc.n_units], lim)
            assert np.array_equal(kept_units, cut | forced) and not (cut & forced).any(), budget
            if not lim.adaptive:  # every unit kept by the ranking is one of the picks its log-prob covers
                assert (sampled[r, : enc.n_units][cut] > 0).all()
        actions, _ = model.predict(obs, deterministic=True)
        if rounds == 2:
            episode = core.start(idx, budgets)
            episode.advance(list(actions))
            actions, _ = model.predict(core.observe(idx, budgets, episode), deterministic=True)
        kw = {"rate": budget.rate} if budget.rate else {"token_cost": budget.token_cost}
        reds = reducer.reduce_batch(
            [core.pool[i].example.context for i in idx],
            [core.pool[i].example.question for i in idx],
            force_keep=[list(core.pool[i].example.force_keep) for i in idx],
            **kw,
        )
        for r, i in enumerate(idx):
            assert np.array_equal(core.keep_mask(i, budget, actions[r]), reds[r].keep_mask), budget


def test_jsonl_force_keep_field(tmp_path):
    ctx = "Alpha beta. The key is 42. Gamma beta."
    rows = [
        {"context": ctx, "question": "Key?", "answer": " 42", "force_keep": ["beta", [12, 15]]},
        {"context": ctx, "question": "Key?", "answer": " 42"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = load_jsonl(path)
    assert a.force_keep == ((6, 10), (12, 15), (33, 37)) and b.force_keep == ()
    for bad, msg in [
        (["beta x"], "does not occur"),
        ([0, 99], "neither"),
        ([[0, 99]], "out of range"),
        ({}, "must be a list"),
    ]:
        path.write_text(json.dumps({"context": ctx, "question": "q", "answer": "a", "force_keep": bad}) + "\n")
        with pytest.raises(JsonlError, match=rf"t.jsonl:1: .*{msg}"):
            load_jsonl(path)
    write_jsonl([a], tmp_path / "out.jsonl")  # tasks written back keep their force_keep, as spans
    assert load_jsonl(tmp_path / "out.jsonl")[0].force_keep == a.force_keep
