import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401  (registers the env)
from envs.cache import LRUCache
from envs.core import TokenKeepCore
from envs.credit import credit_gains
from envs.rewards import make_score
from envs.scoring import build_prompts, choice_priors, score_reduced
from envs.tasks.examples import encode_example
from envs.tasks.families import make_examples
from envs.tasks.specs import load_tasks
from envs.token_keep_env import TokenKeepEnv
from envs.vec_env import BatchedTokenKeepVecEnv
from policies.budget import Budget, BudgetConfig
from policies.lexical import CHANNELS, KEPT_CHANNELS
from policies.processor import ProcessorConfig

# adaptive episodes only, at a fixed token cost of 0.3, free to keep anything from nothing to everything:
# "keep everything" costs exactly 0.3
FIXED = BudgetConfig(
    adaptive_fraction=1.0,
    cost_low=0.3,
    cost_high=0.3,
    default_token_cost=0.3,
    adaptive_min_rate=0.0,
    adaptive_max_rate=1.0,
)
RANGE = BudgetConfig(adaptive_fraction=0.5, cost_low=0.0, cost_high=1.0)
P96 = ProcessorConfig(max_len=96)
KW = dict(tasks="kv:train:n=12,distractors=3", processor=P96, budget=FIXED)
KW_RANGE = dict(tasks="kv:train:n=12,distractors=3", processor=P96, budget=RANGE)


def _keep_all(env):
    return np.ones(env.action_space.shape, dtype=np.float32)


def test_registered_and_shares_loaded_model(tiny_lm):
    env = gym.make("tokenkeep/TokenKeep-v0", model=tiny_lm, **KW)
    assert env.unwrapped.core.lm is tiny_lm
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_gymnasium_and_sb3_checkers_pass(tiny_lm):
    import warnings

    from gymnasium.utils.env_checker import check_env as gym_check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(TokenKeepEnv(tiny_lm, **KW), skip_render_check=True)
        sb3_check_env(TokenKeepEnv(tiny_lm, **KW), warn=True)
    # Both checkers report problems as warnings (and errors as exceptions). The only expected warnings are SB3's
    # advice to flatten each 2-D observation array or "use a custom policy", which TokenKeepPolicy is.
    messages = [str(w.message) for w in caught]
    assert all("custom policy" in m for m in messages), messages
    assert sorted(m.split()[2] for m in messages) == ["features", "lexical"], messages


def test_same_seed_same_episodes(tiny_lm):
    def run(seed):
        env = TokenKeepEnv(tiny_lm, **KW_RANGE)
        env.action_space.seed(seed)
        out = []
        obs, _ = env.reset(seed=seed)
        for _ in range(5):
            a = env.action_space.sample()
            obs2, r, term, trunc, info = env.step(a)
            out.append((obs["input_ids"].tolist(), float(obs["budget"][0]), r, info["kept_ratio"]))
            obs, _ = env.reset()
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_keep_everything_costs_exactly_token_cost(tiny_lm):
    for reward in ("loglik", "choice", "em", "kl"):
        env = TokenKeepEnv(tiny_lm, reward=reward, **KW)
        env.reset(seed=1)
        _, r, term, trunc, info = env.step(_keep_all(env))
        assert term and not trunc
        assert info["kept_ratio"] == 1.0
        assert info["task_score"] == info["full_score"]
        expected = -0.3 if reward in ("loglik", "choice", "kl") else info["full_score"] - 0.3
        assert r == pytest.approx(expected, abs=1e-6)


def test_choice_score_is_the_calibrated_log_softmax_at_the_gold_choice(tiny_lm):
    """The ``choice`` reward's quantity is the one calibrated choice accuracy takes the argmax of."""
    encs = [encode_example(tiny_lm.tokenizer, ex) for ex in load_tasks("state:train:n=4,kv:train:n=2")]
    encs.sort(key=lambda e: e.choices is None)  # the four with choices first
    assert [e.choices is not None for e in encs] == [True] * 4 + [False] * 2
    contexts = [e.context[: len(e.context) // 2] for e in encs]
    got = make_score("choice")(tiny_lm, encs, contexts).scores
    res = score_reduced(tiny_lm, encs[:4], contexts[:4])
    priors = choice_priors(tiny_lm, encs[:4])
    prompts = build_prompts(tiny_lm, encs[:4], contexts[:4])
    for r, (e, prior) in enumerate(zip(encs[:4], priors, strict=True)):
        lp, _ = tiny_lm.score_continuations([prompts[r]], [list(e.choices)])[0]
        want = torch.log_softmax((lp - prior).double(), 0)[e.answer_index]
        assert float(got[r]) == pytest.approx(float(want), abs=1e-4)
        best = float(torch.log_softmax((lp - prior).double(), 0).max())
        assert (abs(float(got[r]) - best) < 1e-4) == bool(res.choice_calibrated[r])  # the gold choice wins
    # examples without choices (kv) score as loglik
    assert torch.allclose(got[4:], make_score("loglik")(tiny_lm, encs[4:], contexts[4:]).scores, atol=1e-4)


def test_kept_units_and_ignored_positions(tiny_lm):
    env = TokenKeepEnv(tiny_lm, **KW)
    obs, _ = env.reset(seed=2)
    lengths = obs["unit_lengths"]
    n_units = int((lengths > 0).sum())
    a = np.full(env.action_space.shape, -1.0, np.float32)
    a[n_units:] = 1.0  # priorities past the last unit are ignored
    a[: n_units // 2] = 0.5  # adaptive mode keeps every unit with a positive priority
    _, r, _, _, info = env.step(a)
    assert info["kept_tokens"] == int(lengths[: n_units // 2].sum())
    assert info["kept_ratio"] == pytest.approx(info["kept_tokens"] / int(obs["reducible_mask"].sum()))
    gain = info["task_score"] - info["full_score"]
    assert r == pytest.approx(gain - 0.3 * info["kept_ratio"], abs=1e-5)
    assert isinstance(info["reduced_text"], str) and info["adaptive"]


def test_rate_budget_is_never_exceeded(tiny_lm):
    core = TokenKeepCore(tiny_lm, **KW_RANGE)
    rng = np.random.default_rng(0)
    for i in range(len(core.pool)):
        for rate in (0.1, 0.3, 0.5):
            budget = Budget(rate=rate)
            res = core.step_batch([i], [budget], [rng.uniform(-1, 1, 96)])
            n = res.infos[0]["context_tokens"]
            assert res.infos[0]["kept_tokens"] <= budget.max_tokens(n)
            assert res.infos[0]["token_cost"] == 0.0  # a rate is enforced by the fill, not charged
        # all units positive, ranked by priority: the fill comes as close to the budget as the units allow
        lengths = core.inputs[i].unit_lengths
        res = core.step_batch([i], [Budget(rate=0.5)], [np.linspace(1, 0.01, 96)])
        room = Budget(rate=0.5).max_tokens(len(core.pool[i].context)) - res.infos[0]["kept_tokens"]
        assert room < lengths.max()


def test_observation_layout(tiny_lm):
    core = TokenKeepCore(tiny_lm, **KW)
    obs = core.observe([0], [Budget(token_cost=0.15)])
    assert obs["budget"][0].tolist() == pytest.approx([1.0, 0.0, 0.15 / 0.3])
    n = len(core.pool[0].context)
    assert obs["limits"][0].tolist() == [1, 0, n, 0]  # adaptive, anywhere from nothing to everything; no ceiling
    rated = core.observe([0], [Budget(rate=0.5)])
    assert rated["budget"][0].tolist() == pytest.approx([0.0, 0.5, 0.0])
    assert rated["limits"][0].tolist() == [0, 0, n // 2, 0]
    e = core.pool[0]
    q, c = len(e.question), len(e.context)
    assert obs["input_ids"][0, :q].tolist() == list(e.question)
    assert obs["input_ids"][0, q : q + c].tolist() == list(e.context)
    assert obs["reducible_mask"][0].sum() == c and obs["attention_mask"][0].sum() == q + c
    units = obs["unit_index"][0]
    assert (units[:q] == -1).all() and (units[q + c :] == -1).all() and units[q] == 0
    n_units = units.max() + 1
    assert obs["unit_lengths"][0, :n_units].sum() == c and (obs["unit_lengths"][0, n_units:] == 0).all()
    assert (obs["lexical"][0, :q] == 0).all() and obs["lexical"][0, q : q + c, 2].max() == 1.0
    emb = tiny_lm.model.get_input_embeddings().weight
    assert np.allclose(obs["features"][0, q], emb[e.context[0]].half().float().numpy())


@pytest.mark.parametrize(
    "action,msg",
    [
        (np.ones(5, np.float32), "shape"),
        (np.full(96, np.nan, np.float32), "finite"),
        (np.full(96, np.inf, np.float64), "finite"),
        (np.array(["1"] * 96), "dtype"),
    ],
)
def test_bad_actions(tiny_lm, action, msg):
    env = TokenKeepEnv(tiny_lm, **KW)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=msg):
        env.step(action)


def test_step_before_reset(tiny_lm):
    with pytest.raises(RuntimeError, match="reset"):
        TokenKeepEnv(tiny_lm, **KW).step(np.ones(96, np.float32))


def test_long_contexts_error_or_skip(tiny_lm):
    with pytest.raises(ValueError, match="max_len=40"):
        TokenKeepCore(tiny_lm, "passkey:train:n=4,filler=6", processor=ProcessorConfig(max_len=40))
    short = make_examples("passkey", "train", 3, filler=0)
    long = make_examples("passkey", "train", 3, filler=12)
    with pytest.warns(UserWarning, match="skipped 3 of 6"):
        core = TokenKeepCore(tiny_lm, short + long, processor=ProcessorConfig(max_len=60), too_long="skip")
    assert len(core.pool) == 3
    with pytest.raises(ValueError, match="every example"):
        TokenKeepCore(tiny_lm, long, processor=ProcessorConfig(max_len=30), too_long="skip")


def test_batched_vec_env_equals_single_envs(tiny_lm):
    core = TokenKeepCore(tiny_lm, **KW_RANGE)
    venv = BatchedTokenKeepVecEnv(core, n_envs=4, seed=11)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(4, 96))
    episodes = list(venv._episodes)
    _, rewards, dones, infos = venv.step(actions)
    assert dones.all()
    for r in range(4):
        env = TokenKeepEnv(core=TokenKeepCore(tiny_lm, **KW_RANGE))
        o, _ = env.reset(options={"index": episodes[r][0], "budget": episodes[r][1]})
        assert np.array_equal(o["input_ids"], obs["input_ids"][r])
        _, rew, _, _, info = env.step(actions[r])
        assert rew == pytest.approx(float(rewards[r]), abs=1e-4)
        assert info["kept_ratio"] == infos[r]["kept_ratio"]
        assert np.array_equal(infos[r]["terminal_observation"]["input_ids"], obs["input_ids"][r])


def test_vec_env_uses_one_forward_per_step(tiny_lm, monkeypatch):
    core = TokenKeepCore(tiny_lm, **KW)
    venv = BatchedTokenKeepVecEnv(core, n_envs=6, seed=0)
    venv.reset()
    venv.step(np.ones((6, 96), np.float32))  # warms the full-score cache for those examples
    calls = []
    orig = tiny_lm.score_answers
    monkeypatch.setattr(tiny_lm, "score_answers", lambda *a, **k: calls.append(len(a[0])) or orig(*a, **k))
    core.full_scores(range(len(core.pool)))  # warm every example
    calls.clear()
    venv.step(np.random.default_rng(1).uniform(-1, 1, (6, 96)))
    assert calls == [6], calls


def test_dummy_vec_env_still_works(tiny_lm):
    venv = DummyVecEnv([lambda: TokenKeepEnv(tiny_lm, **KW) for _ in range(2)])
    venv.seed(0)
    venv.reset()
    _, rewards, dones, _ = venv.step(np.ones((2, 96), np.float32))
    assert rewards.shape == (2,) and dones.all()
    assert rewards == pytest.approx([-0.3, -0.3], abs=1e-6)


def test_caches_are_bounded(tiny_lm):
    cache = LRUCache(capacity=3)
    for i in range(5):
        cache.put(i, i)
    assert list(cache.data) == [2, 3, 4]
    core = TokenKeepCore(tiny_lm, **KW)
    core.observe(list(range(len(core.pool))), [Budget()] * len(core.pool))
    sizes = [core.cache.cost(v) for v in core.cache.data.values()]
    assert len(sizes) == len(core.pool)  # unbounded enough: everything fits
    bound = 3.5 * max(sizes)  # room for three entries, not for all twelve
    small = TokenKeepCore(tiny_lm, cache_bytes=bound, **KW)
    small.observe(list(range(len(small.pool))), [Budget()] * len(small.pool))
    assert small.cache.used <= bound
    assert 1 < len(small.cache.data) < len(small.pool)
    # the most recently used examples are the ones kept
    assert list(small.cache.data)[-1] == ("feat", len(small.pool) - 1)


def test_custom_score_function(tiny_lm):
    def evidence_recall(lm, encs, contexts):
        if contexts is None:
            return [1.0] * len(encs)
        return [
            float(all(t in c for t, k in zip(e.context, e.evidence, strict=True) if k))
            for e, c in zip(encs, contexts, strict=True)
        ]

    env = TokenKeepEnv(tiny_lm, reward=evidence_recall, **KW)
    obs, _ = env.reset(seed=0)
    _, r, _, _, info = env.step(np.full(96, -1.0, np.float32))  # keep as little as allowed: one unit
    assert info["task_score"] == 0.0 and info["kept_ratio"] < 0.1
    assert r == pytest.approx(-0.3 * info["kept_ratio"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reward_stops_with_the_example(tiny_lm, bad):
    env = TokenKeepEnv(tiny_lm, reward=lambda lm, encs, contexts: [bad] * len(encs), **KW)
    env.reset(seed=0, options={"index": 3})
    with pytest.raises(ValueError, match=r"example 3 \(kv:train"):
        env.step(np.full(96, -1.0, np.float32))


def test_reward_function_that_raises_names_the_example(tiny_lm):
    def broken(lm, encs, contexts):
        raise KeyError("no such field")

    env = TokenKeepEnv(tiny_lm, reward=broken, **KW)
    env.reset(seed=0, options={"index": 5})
    with pytest.raises(RuntimeError, match=r"examples 5 \(kv:train.*no such field"):
        env.step(np.full(96, -1.0, np.float32))


def test_group_baseline_centres_rewards_within_groups(tiny_lm):
    core = TokenKeepCore(tiny_lm, **KW_RANGE)
    venv = BatchedTokenKeepVecEnv(core, n_envs=8, seed=3, group_size=4)
    venv.reset()
    episodes = list(venv._episodes)
    assert episodes[0] == episodes[3] and episodes[4] == episodes[7]  # a group shares example and budget
    _, rewards, _, infos = venv.step(np.random.default_rng(0).uniform(-1, 1, (8, 96)))
    raw = np.array([i["raw_reward"] for i in infos]).reshape(2, 4)
    loo = raw - (raw.sum(1, keepdims=True) - raw) / 3
    assert rewards.reshape(2, 4) == pytest.approx(loo, abs=1e-5)
    assert [i["episode"]["r"] for i in infos] == pytest.approx(raw.reshape(-1).tolist())
    with pytest.raises(ValueError, match="divide"):
        BatchedTokenKeepVecEnv(core, n_envs=6, group_size=4)


def test_full_scores_are_cached(tiny_lm, monkeypatch):
    core = TokenKeepCore(tiny_lm, **KW)
    core.full_scores([0, 1])
    calls = []
    orig = tiny_lm.score_answers
    monkeypatch.setattr(tiny_lm, "score_answers", lambda *a, **k: calls.append(1) or orig(*a, **k))
    core.full_scores([0, 1])
    assert not calls
    core.observe([0], [Budget()])
    assert torch.is_tensor(core.cache.get(("feat", 0)))


@pytest.mark.slow
def test_default_model_keep_nothing_scores_lower():
    from envs.lm.frozen_lm import FrozenLM

    lm = FrozenLM.load()
    free = BudgetConfig(
        adaptive_fraction=1.0, cost_high=1.0, default_token_cost=0.0, adaptive_min_rate=0.0, adaptive_max_rate=1.0
    )
    env = TokenKeepEnv(lm, tasks="passkey:train:n=4,filler=2", processor=ProcessorConfig(max_len=128), budget=free)
    gaps = []
    for i in range(4):
        env.reset(options={"index": i, "budget": Budget(token_cost=0.0)})
        _, r_all, _, _, info_all = env.step(np.ones(128, np.float32))
        env.reset(options={"index": i, "budget": Budget(token_cost=0.0)})
        _, r_none, _, _, info_none = env.step(np.full(128, -1.0, np.float32))
        gaps.append(info_all["task_score"] - info_none["task_score"])
        assert r_all == 0.0
    assert min(gaps) > 1.0, gaps


ROUNDS = dict(tasks="kv:train:n=12,distractors=3", processor=ProcessorConfig(max_len=96, rounds=2), budget=RANGE)


def test_rounds_episode_conditions_on_what_the_first_round_kept(tiny_lm):
    env = TokenKeepEnv(tiny_lm, **ROUNDS)
    obs, _ = env.reset(seed=0, options={"budget": Budget(rate=0.5)})
    later = len(CHANNELS) + KEPT_CHANNELS.index("later_round")
    kept_col = len(CHANNELS) + KEPT_CHANNELS.index("kept")
    assert not obs["lexical"][:, later].any()
    n = int(obs["reducible_mask"].sum())
    assert obs["limits"][2] == env.core.processor.probe_tokens(n, int(0.5 * n))  # round 1 keeps a probe
    action = np.random.default_rng(0).uniform(-1, 1, env.action_space.shape).astype(np.float32)
    obs2, reward, terminated, truncated, info = env.step(action)
    assert reward == 0.0 and not terminated and not truncated and info == {"round": 1}
    assert env.observation_space.contains(obs2)
    reducible = obs2["reducible_mask"].astype(bool)
    assert obs2["lexical"][reducible, later].all() and obs2["limits"][2] == int(0.5 * n)
    # what the probe kept is marked, and it is what the action's best units fit in the probe
    kept = env.core.start([env._current[0]], [Budget(rate=0.5)]).advance([action.astype(np.float64)])[0]
    assert np.array_equal(obs2["lexical"][reducible, kept_col] > 0, kept) and 0 < kept.sum() <= obs["limits"][2]
    _, reward, terminated, _, info = env.step(action)
    assert terminated and np.isfinite(reward) and info["kept_ratio"] <= 0.5


def test_rounds_env_passes_the_checkers_and_the_vec_env_steps_rounds(tiny_lm):
    from gymnasium.utils.env_checker import check_env as gym_check_env

    gym_check_env(TokenKeepEnv(tiny_lm, **ROUNDS), skip_render_check=True)
    sb3_check_env(TokenKeepEnv(tiny_lm, **ROUNDS), warn=False)
    venv = BatchedTokenKeepVecEnv(TokenKeepCore(tiny_lm, **ROUNDS), n_envs=4, seed=0, group_size=2)
    first = venv.reset()
    actions = np.random.default_rng(1).uniform(-1, 1, (4, 96))
    mid, rewards, dones, infos = venv.step(actions)
    assert not dones.any() and (rewards == 0).all() and all(i["round"] == 1 for i in infos)
    assert not np.array_equal(mid["lexical"], first["lexical"])
    nxt, rewards, dones, infos = venv.step(actions)
    assert dones.all() and all("raw_reward" in i for i in infos)
    assert np.array_equal(infos[0]["terminal_observation"]["lexical"], mid["lexical"][0])
    assert not nxt["lexical"][..., len(CHANNELS) + KEPT_CHANNELS.index("later_round")].any()  # new episodes


def test_group_baseline_skips_the_full_context_and_scores_duplicates_once(tiny_lm, monkeypatch):
    core = TokenKeepCore(tiny_lm, **KW_RANGE)
    venv = BatchedTokenKeepVecEnv(core, n_envs=4, seed=3, group_size=2)
    venv.reset()
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, 96), rng.uniform(-1, 1, 96)
    actions = np.stack([a, a, b, b])  # each group plays one action twice: two distinct prompts at most

    calls = []
    real = core._score

    def counting(indices, contexts=None, refs=None):
        calls.append(None if contexts is None else len(contexts))
        return real(indices, contexts, refs)

    monkeypatch.setattr(core, "_score", counting)
    _, rewards, _, infos = venv.step(actions)
    assert calls == [2], "no full-context call, and one row per distinct reduced prompt"
    assert all(np.isnan(i["full_score"]) for i in infos)
    assert rewards == pytest.approx(np.zeros(4), abs=1e-6)  # equal prompts, equal rewards: centred to 0
    # the centred rewards do not depend on the full context's score
    core2 = TokenKeepCore(tiny_lm, **KW_RANGE)
    idx, budgets = [i for i, _ in venv._episodes], [bb for _, bb in venv._episodes]
    acts = list(np.stack([a, b, b, a]))
    with_full = core2.step_batch(idx, budgets, acts, full_context=True).rewards
    without = core2.step_batch(idx, budgets, acts, full_context=False).rewards
    centre = lambda r: (r.reshape(2, 2) - r.reshape(2, 2).mean(1, keepdims=True)).ravel()  # noqa: E731
    assert centre(with_full) == pytest.approx(centre(without), abs=1e-5)


def test_counterfactual_credit_scores_each_disputed_unit_once_against_the_majority(tiny_lm, monkeypatch):
    core = TokenKeepCore(tiny_lm, **KW_RANGE)
    i = 0
    unit = core.inputs[i].unit_index
    assert unit.min() >= 0
    n = len(core.inputs[i].unit_lengths)
    assert n >= 3
    ctx = np.asarray(core.pool[i].context)
    base = np.zeros(n, bool)
    base[: n // 2] = True
    u = n - 1
    with_u = base.copy()
    with_u[u] = True
    s_with, s_without = core.score_contexts([i, i], [ctx[with_u[unit]], ctx[base[unit]]])
    assert s_with != pytest.approx(s_without)

    calls = []
    real = core.score_contexts

    def counting(indices, contexts):
        calls.append([len(c) for c in contexts])
        return real(indices, contexts)

    monkeypatch.setattr(core, "score_contexts", counting)
    # two of three keep u: the reference holds it, and u is scored taken out of it (1 + 1 prompts)
    gains = credit_gains(core, [i] * 3, [with_u[unit], with_u[unit], base[unit]], 3)
    assert calls == [[int(with_u[unit].sum()), int(base[unit].sum())]]
    assert gains == pytest.approx([s_with - s_without] * 2 + [0.0], abs=1e-5)
    # one of two keeps u: the reference lacks it, and u is scored added to it; the group's centred credit is then
    # exactly the centred difference of the two episodes' own scores
    calls.clear()
    gains = credit_gains(core, [i] * 2, [base[unit], with_u[unit]], 2)
    assert calls == [[int(base[unit].sum()), int(with_u[unit].sum())]]
    assert gains - gains.mean() == pytest.approx(np.array([s_without, s_with]) - (s_with + s_without) / 2, abs=1e-5)
    # a group that agrees costs no forward and gets no credit
    calls.clear()
    assert credit_gains(core, [i] * 2, [base[unit], base[unit]], 2) == pytest.approx([0.0, 0.0])
    assert calls == []
    with pytest.raises(ValueError, match="different examples"):
        credit_gains(core, [0, 1], [base[unit], base[unit]], 2)


def test_vec_env_with_counterfactual_credit_centres_the_credit(tiny_lm):
    core = TokenKeepCore(tiny_lm, **KW_RANGE)
    venv = BatchedTokenKeepVecEnv(core, n_envs=8, seed=3, group_size=4, credit="counterfactual")
    venv.reset()
    _, rewards, _, infos = venv.step(np.random.default_rng(0).uniform(-1, 1, (8, 96)))
    raw = np.array([i["raw_reward"] for i in infos]).reshape(2, 4)
    assert rewards.reshape(2, 4) == pytest.approx(raw - (raw.sum(1, keepdims=True) - raw) / 3, abs=1e-5)
    assert all(np.isnan(i["task_score"]) for i in infos)  # no episode's own prompt was scored
    assert core.credit_stats["prompts"] > 0
    with pytest.raises(ValueError, match="group_size >= 2"):
        BatchedTokenKeepVecEnv(core, n_envs=4, group_size=1, credit="counterfactual")
