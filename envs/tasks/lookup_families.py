"""Synthetic families answered by looking one fact up (through a chain of facts for ``multihop``).

* ``passkey``: a pass key hidden in filler text (exact match).
* ``kv``: the code of one key among distractor key/code pairs (exact match).
* ``qa``: which city one person lives in, among facts about many people and filler (4 choices).
* ``multihop``: where an object is, through 2-3 chained facts: the object may lie in a container, a person
  carries the object (or container), and that person is at a place. Distractor objects share words with the
  asked one (same colour or same noun), so overlap with the question finds the first link but not the last
  (4 choices).
"""

from __future__ import annotations

import random

from envs.tasks import data
from envs.tasks.builder import Builder, pick_choices
from envs.tasks.examples import Example


def passkey(rng: random.Random, split: str, filler: int, distractors: int, vocab: str | None = None) -> Example:
    """A pass key hidden in filler sentences."""
    words = vocab or split  # whose word banks (data.py): the split's own, or "invented"
    bank = data.FILLER[words]
    digits = 5 if split == "train" else 6
    key = str(rng.randrange(10 ** (digits - 1), 10**digits))
    n_fill = rng.randint(filler, 2 * filler)
    pos = rng.randint(0, n_fill)
    b = Builder()
    for i in range(n_fill + 1):
        if i == pos:
            b.add(f"The pass key is {key}. Remember it. {key} is the pass key.", evidence=True)
        if i < n_fill:
            b.add(rng.choice(bank))
    return Example(
        context=b.text(),
        question="What is the pass key? Reply with the number.",
        answer=f" {key}",
        answer_prefix="The pass key is",
        evidence=tuple(b.evidence),
        family=f"passkey:{split}",
    )


def kv(rng: random.Random, split: str, filler: int, distractors: int, vocab: str | None = None) -> Example:
    """The code of one key among distractor key/code pairs."""
    words = vocab or split  # whose word banks (data.py): the split's own, or "invented"
    keys = rng.sample(data.KV_KEYS[words], k=min(distractors + 1, len(data.KV_KEYS[words])))
    values = [str(rng.randrange(1000, 10000)) for _ in keys]
    target = rng.randrange(len(keys))
    b = Builder()
    fill_at = set(rng.sample(range(len(keys) + 1), k=min(filler, len(keys) + 1)))
    for i in range(len(keys)):
        if i in fill_at:
            b.add(rng.choice(data.FILLER[words]))
        b.add(f"The code for {keys[i]} is {values[i]}.", evidence=(i == target))
    key = keys[target]
    return Example(
        context=b.text(),
        question=f"What is the code for {key}? Reply with the number.",
        answer=f" {values[target]}",
        answer_prefix=f"The code for {key} is",
        evidence=tuple(b.evidence),
        family=f"kv:{split}",
    )


def qa(rng: random.Random, split: str, filler: int, distractors: int, vocab: str | None = None) -> Example:
    """Which city one person lives in, among facts about many people."""
    words = vocab or split  # whose word banks (data.py): the split's own, or "invented"
    names = rng.sample(data.NAMES[words], k=min(distractors + 1, len(data.NAMES[words])))
    cities = data.CITIES[words]
    home = {n: rng.choice(cities) for n in names}
    target = names[0]
    # Distractor people never share the target's city, so the question has one right answer.
    for n in names[1:]:
        while home[n] == home[target]:
            home[n] = rng.choice(cities)
    facts: list[tuple[str, bool]] = []
    for n in names:
        facts.append((f"{n} lives in {home[n]}.", n == target))
        facts.append((f"{n} works as a {rng.choice(data.JOBS[words])}.", False))
        if rng.random() < 0.5:
            facts.append((f"{n} has {rng.choice(data.PETS[words])}.", False))
    facts += [(rng.choice(data.FILLER[words]), False) for _ in range(filler)]
    rng.shuffle(facts)
    b = Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    others = sorted({home[n] for n in names[1:]} - {home[target]})
    wrong = rng.sample(others, k=min(3, len(others)))
    if len(wrong) < 3:
        pool = [c for c in cities if c != home[target] and c not in wrong]
        wrong += rng.sample(pool, k=3 - len(wrong))
    choices = [f" {c}" for c in [home[target], *wrong]]
    rng.shuffle(choices)
    return Example(
        context=b.text(),
        question=f"Which city does {target} live in?",
        answer=f" {home[target]}",
        choices=tuple(choices),
        answer_prefix=f"{target} lives in",
        evidence=tuple(b.evidence),
        family=f"qa:{split}",
    )


def multihop(rng: random.Random, split: str, filler: int, distractors: int, vocab: str | None = None) -> Example:
    """Where an object is, through 2-3 chained facts (container, carrier, place)."""
    words = vocab or split  # whose word banks (data.py): the split's own, or "invented"
    n_people = min(distractors + 1, len(data.NAMES[words]), len(data.PLACES[words]), 9)
    people = rng.sample(data.NAMES[words], k=n_people)
    places = rng.sample(data.PLACES[words], k=n_people)
    # Objects are drawn from a 3 x 3 grid of colours and nouns, so the asked object's words also appear in
    # distractor objects (same colour or same noun).
    grid = [f"{c} {o}" for c in rng.sample(data.COLOURS[words], k=3) for o in rng.sample(data.OBJECTS[words], k=3)]
    asked = rng.choice(grid)
    similar = [g for g in grid if g != asked and set(g.split()) & set(asked.split())]
    rng.shuffle(similar)
    others = [g for g in grid if g != asked and g not in similar[:2]]
    objects = [asked, *similar[:2], *rng.sample(others, k=max(0, n_people - 3))][:n_people]
    three_hops = rng.random() < 0.5
    container = f"{rng.choice(data.COLOURS[words])} {rng.choice(data.CONTAINERS[words])}"
    facts: list[tuple[str, bool]] = []
    for i, (person, place, obj) in enumerate(zip(people, places, objects, strict=True)):
        target = i == 0
        held = container if (target and three_hops) else obj
        if target and three_hops:
            facts.append((f"The {obj} is in the {container}.", True))
        facts.append((f"{person} {rng.choice(data.CARRY_VERBS[words])} the {held}.", target))
        facts.append((f"{person} {rng.choice(data.MOVE_VERBS[words])} the {place}.", target))
    facts += [(rng.choice(data.FILLER[words]), False) for _ in range(filler)]
    rng.shuffle(facts)
    b = Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    return Example(
        context=b.text(),
        question=f"Where is the {asked}?",
        answer=f" {places[0]}",
        choices=pick_choices(rng, places[0], places[1:], data.PLACES[words]),
        answer_prefix=f"The {asked} is in the",
        evidence=tuple(b.evidence),
        family=f"multihop:{split}",
    )
