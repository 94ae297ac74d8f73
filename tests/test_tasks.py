import json
import re

import pytest

from envs.tasks import data as task_data
from envs.tasks.examples import encode_example
from envs.tasks.families import FAMILIES, make_examples
from envs.tasks.jsonl import load_jsonl
from envs.tasks.specs import TaskSpec, load_tasks, split_specs

NAMES_TRAIN = {"Alice", "Bob", "Carol"}


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_is_deterministic_and_records_evidence(family):
    a = make_examples(family, "train", 5, seed=3)
    b = make_examples(family, "train", 5, seed=3)
    assert a == b
    assert a != make_examples(family, "train", 5, seed=4)
    for ex in a:
        assert ex.evidence, "every synthetic example records where its evidence is"
        for s, e in ex.evidence:
            assert 0 <= s < e <= len(ex.context)
        # the answer is recoverable from the evidence text
        evidence_text = " ".join(ex.context[s:e] for s, e in ex.evidence)
        assert ex.answer.strip() in evidence_text
        assert ex.question and ex.answer_prefix
        if ex.choices is not None:
            assert ex.answer in ex.choices
            assert len(set(ex.choices)) == len(ex.choices)


@pytest.mark.parametrize("family", FAMILIES)
def test_heldout_differs_beyond_seed(family):
    train = make_examples(family, "train", 60, seed=0)
    held = make_examples(family, "heldout", 60, seed=0)
    words = lambda exs: {w.strip(".,?") for ex in exs for w in ex.context.split()}  # noqa: E731
    # vocabulary beyond shared function words is disjoint-ish: held-out introduces many new words
    new = words(held) - words(train)
    assert len(new) >= 10
    # held-out contexts are longer on average (lengths never seen in training)
    mean = lambda exs: sum(len(ex.context) for ex in exs) / len(exs)  # noqa: E731
    assert mean(held) > mean(train)


def test_heldout_vocabulary_unseen():
    banks = [getattr(task_data, name) for name in dir(task_data) if name.isupper() and not name.startswith("_")]
    assert len(banks) >= 10
    for bank in banks:
        assert set(bank) == {"train", "heldout", "invented"}
        assert not set(bank["train"]) & set(bank["heldout"]), bank["heldout"]
        assert not set(bank["invented"]) & set(bank["heldout"]), bank["heldout"]


def _bank_words(split: str) -> set[str]:
    """Every word of ``split``'s banks in envs/tasks/data.py, lower-cased."""
    tables = [getattr(task_data, name) for name in dir(task_data) if name.isupper() and not name.startswith("_")]
    return {w.lower() for table in tables for w in re.findall(r"[A-Za-z]+", " ".join(table[split]))}


def _text_words(examples) -> set[str]:
    return {w.strip(".,?").lower() for ex in examples for w in (ex.context + " " + ex.question).split()}


def test_invented_words_replace_every_entity_and_never_a_heldout_word():
    real = _bank_words("train") | _bank_words("heldout")
    made_up = _bank_words("invented") - _bank_words("train")  # the invented banks reuse the training filler, verbs
    assert len(made_up) >= 2000 and not made_up & real  # not even a word of a held-out filler sentence
    for family in FAMILIES:
        plain = make_examples(family, "train", 20, seed=0)
        invented = make_examples(family, "train", 20, seed=0, invented=1)
        assert [e.family for e in invented] == [e.family for e in plain]  # the same family, for the sampler
        assert len(_text_words(invented) - real) >= 20, family  # made-up names, keys, places, objects
        # the rest is the training banks' (filler, verbs) and the templates' words: never a held-out bank word
        leaked = (_text_words(invented) & _bank_words("heldout")) - _bank_words("train") - _text_words(plain)
        assert not leaked, family
    spec = TaskSpec.parse("multihop3:train:n=3,invented=1")
    assert spec.options == {"n": 3, "invented": 1}
    assert spec.examples() == make_examples("multihop3", "train", 3, invented=1)
    with pytest.raises(ValueError, match="invented must be 0 or 1"):
        make_examples("kv", "train", 2, invented=2)
    with pytest.raises(ValueError, match="known: n, seed, distractors"):
        TaskSpec.parse("passages:train:invented=1")


def test_multihop_chains_two_or_three_facts():
    exs = make_examples("multihop", "heldout", 40, seed=5)
    hops = {len(ex.evidence) for ex in exs}
    assert hops == {2, 3}
    for ex in exs:
        asked = ex.question.removeprefix("Where is the ").removesuffix("?")
        facts = [ex.context[s:e] for s, e in ex.evidence]
        # the last link (the person's place) does not mention the asked object: overlap alone cannot find it
        place_fact = next(f for f in facts if ex.answer.strip() in f)
        assert not set(asked.split()) & set(place_fact.rstrip(".").split())
        # distractor objects share a word with the asked one
        assert sum(asked.split()[0] in s or asked.split()[1] in s for s in ex.context.split(". ")) > 1
        assert len(ex.choices) == 4 and ex.answer in ex.choices


def test_state_latest_fact_decides():
    for ex in make_examples("state", "heldout", 40, seed=5):
        person = ex.question.split()[2]
        moves = [s for s in ex.context.split(". ") if f"{person} " in s and "the" in s]
        assert len(moves) >= 3  # the held-out target moves 3 to 5 times
        (s, e) = ex.evidence[0]
        assert len(ex.evidence) == 1 and ex.answer.strip() in ex.context[s:e]
        # the evidence is the target's last move
        assert ex.context.rfind(person) < e
        # choices include earlier places of the same person
        earlier = {c for c in ex.choices if c != ex.answer and c.strip() in " ".join(moves)}
        assert earlier


def test_distractors_and_filler_parameters():
    short = make_examples("kv", "train", 10, distractors=2)
    long = make_examples("kv", "train", 10, distractors=12)
    assert all(ex.context.count("The code for") == 3 for ex in short)
    assert all(ex.context.count("The code for") == 13 for ex in long)
    p1 = make_examples("passkey", "train", 10, filler=1)
    p9 = make_examples("passkey", "train", 10, filler=9)
    assert max(len(e.context) for e in p1) < min(len(e.context) for e in p9)


def test_spec_parsing():
    s = TaskSpec.parse("kv:heldout:n=7,distractors=3")
    assert (s.family, s.split, s.options) == ("kv", "heldout", {"n": 7, "distractors": 3})
    assert len(s.examples()) == 7
    assert TaskSpec.parse("passkey").split == "train"
    assert split_specs("kv:train:n=5,seed=2,qa:heldout") == ["kv:train:n=5,seed=2", "qa:heldout"]
    mix = load_tasks("kv:train:n=3,qa:heldout:n=3")
    assert [e.family for e in mix] == ["kv:train", "qa:heldout"] * 3
    for bad, msg in [
        ("nope:train", "unknown task spec"),
        ("kv:test", "unknown split"),
        ("kv:train:n=x", "integer"),
        ("kv:train:size=3", "bad option"),
        ("jsonl:", "needs a path"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TaskSpec.parse(bad)


def test_jsonl_loader(tmp_path):
    p = tmp_path / "t.jsonl"
    rows = [
        {"context": "Sky is blue.", "question": "Color?", "answer": " blue", "choices": [" blue", " red"]},
        {"context": "x y z", "question": "q", "answer": "z", "evidence": [[4, 5]]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    exs = load_jsonl(p)
    assert len(exs) == 2 and exs[0].choices == (" blue", " red") and exs[1].evidence == ((4, 5),)
    assert load_tasks(f"jsonl:{p}") == exs


@pytest.mark.parametrize(
    "line,msg",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"context": "a", "question": "b"}', "'answer'"),
        ('{"context": "", "question": "b", "answer": "c"}', "empty context"),
        ('{"context": "a", "question": "b", "answer": "c", "choices": ["d"]}', "not one of"),
        ('{"context": "a", "question": "b", "answer": "c", "evidence": [[0, 9]]}', "outside"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, msg):
    p = tmp_path / "bad.jsonl"
    good = json.dumps({"context": "a b", "question": "q", "answer": "b"})
    p.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=msg) as err:
        load_jsonl(p)
    assert f"{p}:2" in str(err.value)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_encode_example_maps_evidence_to_tokens(tiny_tokenizer):
    ex = make_examples("kv", "train", 1, seed=1)[0]
    enc = encode_example(tiny_tokenizer, ex)
    assert len(enc.evidence) == len(enc.context)
    kept = [t for t, k in zip(enc.context, enc.evidence, strict=True) if k]
    text = tiny_tokenizer.decode(kept)
    assert ex.answer.strip() in text
    assert 0 < sum(enc.evidence) < len(enc.context)


def test_multihop3_chains_container_carrier_and_latest_move():
    for ex in make_examples("multihop3", "heldout", 40, seed=5):
        asked = ex.question.removeprefix("Where is the ").removesuffix("?")
        facts = [ex.context[s:e] for s, e in ex.evidence]
        assert len(facts) == 3
        inside = next(f for f in facts if f.startswith(f"The {asked} is in the "))
        box = inside.removeprefix(f"The {asked} is in the ").rstrip(".")
        carry = next(f for f in facts if f.endswith(f" the {box}.") and f is not inside)
        person = carry.split()[0]
        move = next(f for f in facts if f not in (inside, carry))
        assert person in move and ex.answer.strip() in move
        # the answer is the carrier's *latest* place: no later sentence moves that person
        later = ex.context[ex.context.index(move) + len(move) :]
        assert f"Then {person} " not in later
        # the carrier moved before: earlier places are in the story and may be among the choices
        assert ex.context.count(f"{person} is in the ") == 1 and ex.context.count(f"Then {person} ") >= 2
        # the asked words alone do not reach the carrier or the place
        assert not set(asked.split()) & set(move.rstrip(".").split())
        assert len(ex.choices) == 4 and ex.answer in ex.choices


def test_before_asks_the_place_preceding_the_named_one():
    for ex in make_examples("before", "heldout", 40, seed=5):
        person = ex.question.split()[2]
        asked = ex.question.rstrip("?").split()[-1]
        sentences = [s.rstrip(".") for s in ex.context.split(". ")]
        trail = [s.split()[-1] for s in sentences if s.split()[:2] in ([person, "is"], ["Then", person])]
        assert len(trail) == len(set(trail)) >= 4  # 4-5 places, never the same twice
        assert trail[trail.index(asked) - 1] == ex.answer.strip() and trail.index(asked) >= 1
        facts = [ex.context[s:e] for s, e in ex.evidence]
        assert len(facts) == 2 and asked in facts[1] and ex.answer.strip() in facts[0]
