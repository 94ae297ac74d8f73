"""The deployable contract: units, lexical channels, the budget's fill rule and the ranking distribution."""

import itertools

import numpy as np
import pytest
import torch

from policies.budget import (
    Budget,
    BudgetConfig,
    TokenLimits,
    adaptive_count,
    adaptive_units,
    fill_units,
    keep_top,
    rank_priorities,
    select_units,
)
from policies.lexical import (
    CHANNELS,
    KEPT_CHANNELS,
    bm25_scores,
    kept_channels,
    lexical_channels,
    text_words,
    token_words,
    words,
)
from policies.processor import ProcessorConfig, condition, process, windows
from policies.ranking import NEG, RankingDistribution, SwapDistribution
from policies.units import segment, unit_lengths

MIXED = "Café 😀 naïve — 東京 は 大きい。 The code for otter is 1234. Hi!  Next line\nnew one"


def _offsets(tokenizer, text):
    b = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return b["input_ids"], b["offset_mapping"]


def _unit_texts(tokenizer, ids, index):
    """The decoded text of each unit, in order."""
    return [tokenizer.decode([t for t, i in zip(ids, index, strict=True) if i == u]) for u in range(index[-1] + 1)]


@pytest.mark.parametrize("unit", ["token", "word", "sentence"])
def test_units_never_split_a_character(tiny_tokenizer, unit):
    ids, offsets = _offsets(tiny_tokenizer, MIXED)
    idx = segment(MIXED, offsets, unit)
    assert len(idx) == len(ids) and idx[0] == 0 and (np.diff(idx) >= 0).all() and (np.diff(idx) <= 1).all()
    # every unit decodes to whole characters: no replacement character anywhere
    for u in range(idx[-1] + 1):
        text = tiny_tokenizer.decode([t for t, i in zip(ids, idx, strict=True) if i == u])
        assert "\ufffd" not in text, (unit, text)
    # and any subset of units does too
    rng = np.random.default_rng(0)
    for _ in range(20):
        keep = rng.random(idx[-1] + 1) < 0.5
        assert "\ufffd" not in tiny_tokenizer.decode([t for t, i in zip(ids, idx, strict=True) if keep[i]])


def test_units_nest_and_follow_words_and_sentences(tiny_tokenizer):
    ids, offsets = _offsets(tiny_tokenizer, MIXED)
    tok, word, sent = (segment(MIXED, offsets, u) for u in ("token", "word", "sentence"))
    assert tok[-1] > word[-1] > sent[-1]
    for fine, coarse in ((tok, word), (word, sent)):  # a coarser unit never splits a finer one
        for u in range(fine[-1] + 1):
            assert len(set(coarse[fine == u])) == 1
    sentences = _unit_texts(tiny_tokenizer, ids, sent)
    assert sentences[1].strip() == "The code for otter is 1234."
    assert sentences[2].strip() == "Hi!"
    words_ = [w.strip() for w in _unit_texts(tiny_tokenizer, ids, word)]
    assert "otter" in words_ and "1234." in words_ and "naïve" in words_
    assert unit_lengths(sent).sum() == len(ids)
    with pytest.raises(ValueError, match="unknown unit"):
        segment(MIXED, offsets, "paragraph")


def test_sentences_do_not_end_at_abbreviations_initials_or_numbering(tiny_tokenizer):
    text = (
        "It reached No. 3 in the UK Singles Chart. J. K. Rowling met Dr. Smith, e.g. the editor. "
        "The pass key is 71432. 71432 is the pass key. It rained."
    )
    ids, offsets = _offsets(tiny_tokenizer, text)
    sent = segment(text, offsets, "sentence")
    assert [g.strip() for g in _unit_texts(tiny_tokenizer, ids, sent)] == [
        "It reached No. 3 in the UK Singles Chart.",
        "J. K. Rowling met Dr. Smith, e.g. the editor.",
        "The pass key is 71432.",
        "71432 is the pass key.",
        "It rained.",
    ]


def test_lexical_channels_mark_question_and_bridge(tiny_tokenizer):
    text = "Bob grabbed the red cup. Alice took the red key. Alice went to the garden. Bob went to the kitchen."
    ids, offsets = _offsets(tiny_tokenizer, text)
    sent = segment(text, offsets, "sentence")
    ch = lexical_channels(text, offsets, sent, "Where is the red key?")
    assert ch.shape == (len(ids), len(CHANNELS)) and (ch >= 0).all() and (ch <= 1).all()
    per_sentence = np.stack([ch[sent == u].max(0) for u in range(4)])
    bm25, hop2 = per_sentence[:, CHANNELS.index("sent_bm25")], per_sentence[:, CHANNELS.index("sent_hop2")]
    assert bm25.argmax() == 1  # "Alice took the red key."
    assert hop2[2] > hop2[3] and hop2[2] > hop2[0]  # the bridge (Alice) leads to "Alice went to the garden."
    assert per_sentence[:, CHANNELS.index("position")].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    # a question word's last occurrence is marked: the current state
    text2 = "Ann is in the hall. Bob is in the den. Then Ann went to the yard. Then Bob went to the loft."
    ids2, off2 = _offsets(tiny_tokenizer, text2)
    sent2 = segment(text2, off2, "sentence")
    ch2 = lexical_channels(text2, off2, sent2, "Where is Ann now?")
    words2 = token_words(text2, off2)
    first_ann = [t for t, w in enumerate(words2) if w == ["ann"] and sent2[t] == 0]
    last_ann = [t for t, w in enumerate(words2) if w == ["ann"] and sent2[t] == 2]
    last = ch2[:, CHANNELS.index("last_mention")]
    assert (last[first_ann] == 0).all() and (last[last_ann] > 0).all()
    assert (ch2[first_ann, CHANNELS.index("q_match")] > 0).all()
    tw = token_words(text, offsets)
    assert all(set(w) <= set(words(text)) for w in tw)


def test_bm25_prefers_rare_matching_words():
    docs = [["the", "code", "for", "otter"], ["the", "code", "for", "heron"], ["the", "sky"]]
    s = bm25_scores(docs, ["code", "otter"])
    assert s.argmax() == 0 and s[1] > s[2] == 0


def test_fill_units_never_exceeds_and_skips_what_does_not_fit():
    lengths = np.array([5, 2, 4, 1, 0])
    prio = np.array([0.9, 0.8, 0.7, 0.6, 1.0])  # the padding unit (length 0) is never kept
    assert fill_units(prio, lengths, 6).tolist() == [True, False, False, True, False]
    assert fill_units(prio, lengths, 7).tolist() == [True, True, False, False, False]
    assert fill_units(prio, lengths, None).tolist() == [True, True, True, True, False]
    assert fill_units(-prio, lengths, None).sum() == 0  # only positive priorities are candidates
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        lengths = rng.integers(1, 6, n)
        cap = int(rng.integers(1, lengths.sum() + 1))
        keep = fill_units(rng.random(n) + 0.01, lengths, cap)
        assert lengths[keep].sum() <= cap
        # as close as the units allow: no dropped unit would still fit
        assert (lengths[~keep] > cap - lengths[keep].sum()).all()


def test_adaptive_mode_keeps_within_its_range():
    lengths = np.array([2, 2, 2, 2, 2, 0])
    prio = np.array([0.5, -0.1, -0.2, 0.9, -0.3, 1.0])  # two units above STOP; the padding unit never counts
    assert adaptive_units(prio, lengths, 0, 10).tolist() == [True, False, False, True, False, False]
    # too little: the next-ranked units are added until the minimum is reached
    assert adaptive_units(prio, lengths, 6, 10).tolist() == [True, True, False, True, False, False]
    # too much: capped at the maximum (ranked order)
    assert adaptive_units(np.ones(6), lengths, 0, 4).tolist() == [True, True, False, False, False, False]
    # at least one unit, even when it alone is above the maximum
    assert adaptive_units(np.array([-1.0, -2.0]), np.array([9, 1]), 0, 5).sum() == 1
    cfg = BudgetConfig()
    assert cfg.limits(Budget(), 100) == TokenLimits(True, 10, 90)
    assert cfg.limits(Budget(rate=0.3), 100) == TokenLimits(False, 0, 30)


def test_budget_tokens_are_never_above_the_rate():
    for n in range(1, 60):
        for rate in (0.1, 0.3, 0.5, 0.7, 1.0):
            m = Budget(rate=rate).max_tokens(n)
            assert m <= max(1, rate * n + 1e-6) and m >= 1
    assert Budget(target_tokens=500).max_tokens(40) == 40
    assert Budget().max_tokens(40) is None and Budget().adaptive
    cfg = BudgetConfig()
    assert cfg.observe(Budget(rate=0.3), 100).tolist() == pytest.approx([0, 0.3, 0])
    assert cfg.observe(Budget(target_tokens=25), 100).tolist() == pytest.approx([0, 0.25, 0])
    assert cfg.observe(Budget(token_cost=0.5), 100).tolist() == pytest.approx([1, 0, 0.5])
    assert keep_top([0.2, 0.9, 0.9, 0.1], 2).tolist() == [False, True, True, False]
    assert rank_priorities([3.0, 1.0, 2.0]).tolist() == pytest.approx([1.0, 1 / 3, 2 / 3])


def _events(n_units, lengths, limits):
    """Every distinct deciding event of a ranking: (units picked in order, STOP position or None, units kept)."""
    adaptive, lo, hi = limits[:3]
    ceiling = len(limits) > 3 and limits[3]
    seen = set()
    for perm in itertools.permutations(range(n_units)):
        if ceiling:  # the prefix before STOP filled; if nothing of it fits, the first unit after STOP that fits
            for m in range(n_units + 1):
                kept, used = [], 0
                for u in perm[:m]:
                    if used + lengths[u] <= hi:
                        kept.append(u)
                        used += lengths[u]
                k = m
                if not kept:
                    after = [j for j in range(m, n_units) if lengths[perm[j]] <= hi]
                    if after:
                        kept, k = [perm[after[0]]], after[0] + 1
                seen.add((perm[:k], m, frozenset(kept)))
        elif adaptive:
            for m in range(n_units + 1):
                k = adaptive_count(np.array([lengths[u] for u in perm]), m, lo, hi)
                seen.add((perm[: max(m, k)], m, frozenset(perm[:k])))
        else:
            kept, used, last = [], 0, 0
            for j, u in enumerate(perm):
                if used + lengths[u] <= hi:
                    kept.append(u)
                    used += lengths[u]
                    last = j + 1
            seen.add((perm[:last], None, frozenset(kept)))
    return seen


@pytest.mark.parametrize("limits", [(0, 0, 4), (1, 0, 8), (1, 4, 8), (1, 3, 5), (1, 0, 4, 1), (1, 0, 2, 1)])
def test_ranking_probabilities_sum_to_one(limits):
    torch.manual_seed(0)
    lengths = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])  # four units and one padding unit
    scores = torch.randn(1, 5)
    stop = torch.randn(1)
    dist = RankingDistribution(scores, stop, lengths, torch.tensor([limits], dtype=torch.float32))
    total = 0.0
    events = _events(4, lengths[0].int().tolist(), limits)
    ceiling = len(limits) > 3 and bool(limits[3])
    for picks, m, kept in events:
        action = torch.full((1, 5), -1.0)
        rest = [u for u in range(4) if u not in picks]
        for j, u in enumerate([*picks, *rest]):
            before_stop = j < (m if m is not None else len(picks))
            action[0, u] = (5 - j) / 5 if before_stop else -(j + 1) / 5
        total += float(dist.log_prob(action).exp())
        # the environment's rule keeps exactly what the event decides
        lim = TokenLimits(bool(limits[0]), limits[1], limits[2], ceiling=ceiling)
        keep = select_units(action[0].numpy(), lengths[0].numpy(), lim)
        assert set(np.flatnonzero(keep).tolist()) == set(kept)
        assert lengths[0].numpy()[keep].sum() <= limits[2]  # never above the budget
    assert total == pytest.approx(1.0, abs=1e-5), len(events)


def test_ranking_sampling_matches_log_prob_and_mode_sorts():
    torch.manual_seed(0)
    scores = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    lengths = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    n = 4000
    rate_limits = torch.tensor([[0.0, 0.0, 1.0]])
    dist = RankingDistribution(scores.expand(n, 4), torch.zeros(n), lengths.expand(n, 4), rate_limits.expand(n, 3))
    acts = dist.sample()
    first = (acts > 0).float().argmax(1)  # with room for one unit the prefix is one unit
    freq = torch.bincount(first, minlength=4).float() / n
    want = torch.softmax(scores[0, :3], 0)
    assert torch.allclose(freq[:3], want, atol=0.03)
    assert (acts[:, 3] <= 0).all()  # padding is never picked
    lp = dist.log_prob(acts)
    assert torch.allclose(lp, want[first].log(), atol=1e-5)
    mode = RankingDistribution(scores, torch.zeros(1), lengths, torch.tensor([[0.0, 0.0, 2.0]])).mode()
    assert (mode[0, :2] > 0).all() and (mode[0, 2:] <= 0).all()
    free = torch.tensor([[1.0, 0.0, 3.0]])
    adaptive = RankingDistribution(scores, torch.tensor([0.25]), lengths, free).mode()
    assert (adaptive[0] > 0).tolist() == [True, True, False, False]  # the units scored above STOP


@pytest.mark.parametrize("limits", [(0, 0, 4), (0, 0, 5, 1), (1, 0, 8)])
def test_swap_exploration_is_one_exchange_at_the_mode_and_its_probabilities_sum_to_one(limits):
    torch.manual_seed(0)
    lengths = torch.tensor([[3.0, 1.0, 2.0, 2.0, 1.0, 0.0]])  # five units and one padding unit
    scores, stop = torch.randn(1, 6), torch.randn(1)
    limits_t = torch.tensor([limits], dtype=torch.float32)
    dist = SwapDistribution(scores, stop, lengths, limits_t)
    mode = dist.mode()
    kept = [u for u in range(5) if mode[0, u] > 0]
    dropped = [u for u in range(5) if mode[0, u] <= 0]
    assert kept and dropped
    total = 0.0
    for add in dropped:
        for out in kept:
            action = dist._swap_action(mode, torch.tensor([add]), torch.tensor([out]))
            assert set(np.flatnonzero(action[0].numpy() > 0).tolist()) == (set(kept) - {out}) | {add}
            total += float(dist.log_prob(action).exp())
    assert total == pytest.approx(1.0, abs=1e-5)
    # samples are swaps of the mode, drawn as log_prob says; the mode's own order is kept for the rest
    n = 4000
    many = SwapDistribution(scores.expand(n, 6), stop.expand(n), lengths.expand(n, 6), limits_t.expand(n, -1))
    acts = many.sample()
    assert ((acts == 1.0).sum(1) == 1).all() and ((acts == -1.0).sum(1) == 1).all()
    added = acts.argmax(1)
    freq = torch.bincount(added, minlength=6).float()[dropped] / n
    want = torch.softmax(scores[0, dropped], 0)
    assert torch.allclose(freq, want, atol=0.03)
    out = acts[0].argmin().item()
    p_out = torch.softmax(-scores[0, kept], 0)[kept.index(out)]
    first = SwapDistribution(scores, stop, lengths, limits_t).log_prob(acts[:1]).item()
    assert first == pytest.approx((want[dropped.index(added[0].item())] * p_out).log().item(), abs=1e-5)
    assert (acts[:, 5] > -1.0).all() and (acts[:, 5] < 1.0).all()  # padding is never swapped


def test_ranking_gradients_are_finite_with_padding():
    scores = torch.randn(3, 6, requires_grad=True)
    stop = torch.randn(3, requires_grad=True)
    lengths = torch.tensor([[1.0, 2, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [2, 0, 0, 0, 0, 0]])
    dist = RankingDistribution(scores, stop, lengths, torch.tensor([[0, 0, 2.0], [1, 2, 5], [0, 0, 2]]))
    acts = dist.sample()
    (dist.log_prob(acts).sum() + dist.entropy().sum()).backward()
    assert torch.isfinite(scores.grad).all() and torch.isfinite(stop.grad).all()
    assert (scores.grad[0, 3:] == 0).all()


def test_windows_cut_at_unit_boundaries(tiny_tokenizer):
    text = " ".join(f"The code for key{i} is {1000 + i}." for i in range(30))
    enc = process(ProcessorConfig(unit="sentence"), tiny_tokenizer, text, "What is the code?")
    parts = windows(enc, 64)
    assert len(parts) > 1 and sum(len(p.context) for p in parts) == len(enc.context)
    assert all(len(p.question) + len(p.context) <= 64 for p in parts)
    assert sum(p.n_units for p in parts) == enc.n_units  # no sentence was cut
    assert np.concatenate([p.lexical for p in parts]).shape == enc.lexical.shape


def test_unit_scores_pad_with_neg():
    assert NEG < -1e6


def test_kept_channels_follow_what_was_kept(tiny_tokenizer):
    text = (
        "The red ball is in the blue box. Ann is in the hall. Ann took the blue box. Bob took the red cup. "
        "Then Ann went to the yard. Bob is in the yard."
    )
    ids, offsets = _offsets(tiny_tokenizer, text)
    sent = segment(text, offsets, "sentence")
    q = "Where is the red ball?"
    assert not kept_channels(text, offsets, sent, q, None).any()  # the first round: nothing kept yet
    col = {c: KEPT_CHANNELS.index(c) for c in KEPT_CHANNELS}
    per_sentence = lambda ch, name: np.array([ch[sent == s_, col[name]].max() for s_ in range(6)])  # noqa: E731
    # round 1 kept the first fact: its bridge words (blue, box) lead to "Ann took the blue box."
    ch = kept_channels(text, offsets, sent, q, sent == 0)
    assert ch.shape == (len(ids), len(KEPT_CHANNELS)) and (ch >= 0).all() and (ch <= 1).all()
    assert (ch[:, col["kept"]] == (sent == 0)).all() and (ch[:, col["later_round"]] == 1).all()
    assert per_sentence(ch, "kept_bm25").argmax() == 2
    assert per_sentence(ch, "kept_match")[2] > 0 and per_sentence(ch, "kept_match")[3] == 0  # red is a q word
    # with the carrier kept too, Ann's latest other sentence (the move to the yard) is her current place ...
    ch2 = kept_channels(text, offsets, sent, q, np.isin(sent, [0, 2]))
    last = per_sentence(ch2, "kept_last")
    assert last[4] > 0 and last[1] == 0
    # ... and the nearest earlier sentence sharing a kept sentence's word is what held before it
    prev = per_sentence(ch2, "kept_prev")
    assert prev[1] > 0 and prev[4] == 0 and prev[5] == 0
    with pytest.raises(ValueError, match="one bool per context token"):
        kept_channels(text, offsets, sent, q, np.ones(3, bool))


def test_kept_match_is_the_best_weight_from_another_kept_sentence(tiny_tokenizer):
    """kept_match against its definition, brute force, with a word kept in several sentences."""
    text = (
        "Ann took the blue box. The box is in the hall. Bob took the box. Ann went to the yard. "
        "The blue cup is in the box. Bob went to the hall."
    )
    ids, offsets = _offsets(tiny_tokenizer, text)
    sent = segment(text, offsets, "sentence")
    q = "Where is the cup?"
    tx = text_words(text, offsets, sent)
    rng = np.random.default_rng(0)
    for _ in range(5):
        kept = rng.random(len(ids)) < 0.4
        ch = kept_channels(text, offsets, sent, q, kept, tx)
        assert np.array_equal(ch, kept_channels(text, offsets, sent, q, kept))  # the shared index changes nothing
        frac = np.bincount(sent, weights=kept) / np.bincount(sent)
        qw = set(words(q))
        for t, ws in enumerate(tx.tokens):
            want = max(
                (
                    frac[s] * tx.inv[w] / tx.top_idf
                    for w in ws
                    if w not in qw
                    for s in range(len(frac))
                    if s != sent[t] and frac[s] > 0 and w in tx.sentence_sets[s]
                ),
                default=0.0,
            )
            assert ch[t, KEPT_CHANNELS.index("kept_match")] == pytest.approx(want, abs=1e-6)


def test_condition_changes_only_the_kept_channels(tiny_tokenizer):
    text = "The red ball is in the blue box. Ann took the blue box. Then Ann went to the yard."
    config = ProcessorConfig(max_len=64, rounds=2)
    assert config.lexical_size == len(CHANNELS) + len(KEPT_CHANNELS)
    enc = process(config, tiny_tokenizer, text, "Where is the red ball?")
    kept = enc.sentence_index == 0
    nxt = condition(enc, kept)
    base = len(CHANNELS)
    assert np.array_equal(nxt.lexical[:, :base], enc.lexical[:, :base]) and not enc.lexical[:, base:].any()
    assert (nxt.lexical[:, base + KEPT_CHANNELS.index("kept")] == kept).all()
    assert nxt.context == enc.context and np.array_equal(nxt.unit_index, enc.unit_index)
    fresh = kept_channels(text, enc.offsets, enc.sentence_index, enc.question_text, kept)  # without the cached index
    assert enc.context_words is not None and np.array_equal(nxt.lexical[:, base:], fresh)
    with pytest.raises(ValueError, match="rounds > 1"):
        condition(process(ProcessorConfig(max_len=64), tiny_tokenizer, text, "q?"), kept)
    with pytest.raises(ValueError, match="need lexical"):
        ProcessorConfig(rounds=2, lexical=False)
    # windows carry each window's sentences, numbered from 0
    parts = windows(enc, 24)
    assert len(parts) > 1 and all(w.sentence_index[0] == 0 and w.context_words is None for w in parts)
    assert sum(len(w.sentence_index) for w in parts) == len(enc.context)
    assert config.probe_tokens(100, 40) == 15 and config.probe_tokens(100, 5) == 5 and config.probe_tokens(3, 9) == 1


def test_one_selection_engine():
    """A selection episode's rounds are played in policies/selection.py only: the env, the warm start and the
    reducer call it, so a second copy of the probe / condition / final-keep loop fails here."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    call = re.compile(r"(?<![\w.])(probe_units|select_units|condition|probe_tokens)\(|\.probe_tokens\(")
    found = []
    for py in sorted(p for d in ("agents", "envs", "policies") for p in (root / d).rglob("*.py")):
        for n, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
            if call.search(line) and not line.lstrip().startswith("def "):
                found.append(f"{py.relative_to(root)}:{n}")
    # budget.py: select_units applies itself to the units left beside the forced ones
    assert all(f.startswith(("policies/selection.py:", "policies/budget.py:")) for f in found), found
    assert any(f.startswith("policies/selection.py:") for f in found)
