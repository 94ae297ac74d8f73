"""Synthetic families about people who move: the order of the facts decides the answer.

* ``state``: where a person is *now*, after several moves; later facts override earlier ones, and the
  choices include the person's earlier places (4 choices). The deciding (last) move is placed uniformly in the
  story, which goes on with other people's moves, so keeping the end of the text does not find it.
* ``multihop3``: where an object is, through exactly three links: the object lies in a container, a person
  carries that container, and the person's *latest* move says where they are now. Every person carries a
  container that holds an object, containers and objects share colours and nouns, and people move several
  times, so the question's words find only the first link, the container's words the second, and only the
  carrier's last move (placed anywhere in the story) answers (4 choices, the carrier's earlier places among
  them).
* ``before``: where a person was before a given place ("Where was Ingrid before the cellar?"): the move into
  that place and the one before it decide; the person moves 3-5 times without returning anywhere, others move
  too (4 choices: the asked place and the person's other places among them).
"""

from __future__ import annotations

import random

from envs.tasks import data
from envs.tasks.builder import Builder, pick_choices
from envs.tasks.examples import Example


def state(rng: random.Random, split: str, filler: int, distractors: int, vocab: str | None = None) -> Example:
    """Where a person is now, after several moves."""
    words = vocab or split  # whose word banks (data.py): the split's own, or "invented"
    n_people = min(distractors + 1, len(data.NAMES[words]))
    people = rng.sample(data.NAMES[words], k=n_people)
    target = people[0]
    moves_lo, moves_hi = (2, 4) if split == "train" else (3, 5)

    def trail(n: int) -> list[str]:
        places = [rng.choice(data.PLACES[words])]
        while len(places) < n:
            nxt = rng.choice(data.PLACES[words])
            if nxt != places[-1]:
                places.append(nxt)
        return places

    mine = trail(rng.randint(moves_lo, moves_hi))
    others = [(p, trail(rng.randint(1, 3))) for p in people[1:]]
    total = len(mine) + sum(len(t) for _, t in others)
    # The target's final move lands uniformly anywhere it can in the story, and the story goes on after it, so
    # the deciding fact is not where a positional heuristic ("keep the end") would find it.
    last = rng.randint(len(mine) - 1, total - 1)
    slots = sorted(rng.sample(range(last), k=len(mine) - 1)) + [last]
    queue = [(p, place) for p, t in others for place in t]
    rng.shuffle(queue)
    # each other person's moves keep their own order: re-sort every person's places into its original sequence
    order = {p: iter(t) for p, t in others}
    queue = [(p, next(order[p])) for p, _ in queue]
    events: list[tuple[str, str]] = []
    it_mine, it_other = iter(mine), iter(queue)
    for pos in range(total):
        events.append((target, next(it_mine)) if pos in slots else next(it_other))
    first_seen: set[str] = set()
    facts: list[tuple[str, bool]] = []
    for i, (person, place) in enumerate(events):
        if person in first_seen:
            sentence = f"Then {person} {rng.choice(data.MOVE_VERBS[words])} the {place}."
        else:
            sentence = f"{person} is in the {place}."
            first_seen.add(person)
        facts.append((sentence, i == last))
    for _ in range(filler):
        facts.insert(rng.randrange(len(facts) + 1), (rng.choice(data.FILLER[words]), False))
    b = Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    answer = mine[-1]
    return Example(
        context=b.text(),
        question=f"Where is {target} now?",
        answer=f" {answer}",
        choices=pick_choices(rng, answer, [p for p in mine[:-1] if p != answer], data.PLACES[words]),
        answer_prefix=f"{target} is now in the",
        evidence=tuple(b.evidence),
        family=f"state:{split}",
    )


def _trail(rng: random.Random, places: list[str], n: int, *, revisit: bool = True) -> list[str]:
    """``n`` places a person visits in order: never the same place twice in a row (never twice, without revisit)."""
    trail = [rng.choice(places)]
    while len(trail) < n:
        nxt = rng.choice(places)
        if nxt != trail[-1] and (revisit or nxt not in trail):
            trail.append(nxt)
    return trail


def _move_story(
    rng: random.Random, words: str, trails: list[tuple[str, list[str]]], last_anywhere: bool
) -> list[tuple[str, str, int]]:
    """The move sentences of several people, each person's in order, interleaved at random.

    Returns ``(person, sentence, step)`` per sentence: a person's first sentence says where they are, later ones
    that they moved. With ``last_anywhere``, the first person's last move lands uniformly among the positions
    it can take, and other people's moves go on after it (so the end of the text does not find it).
    """
    target, mine = trails[0]
    queue = [p for p, t in trails[1:] for _ in t]
    rng.shuffle(queue)
    step: dict[str, int] = {}
    others = []
    for p in queue:  # the n-th time a person comes up, their n-th place: each person's moves stay in order
        step[p] = step.get(p, -1) + 1
        others.append((p, step[p]))
    total = len(mine) + len(others)
    if last_anywhere:
        last = rng.randint(len(mine) - 1, total - 1)
        slots = {*rng.sample(range(last), k=len(mine) - 1), last}
    else:
        slots = set(rng.sample(range(total), k=len(mine)))
    places = dict(trails)
    events, it_other, k = [], iter(others), 0
    for pos in range(total):
        if pos in slots:
            person, i = target, k
            k += 1
        else:
            person, i = next(it_other)
        place = places[person][i]
        verb = rng.choice(data.MOVE_VERBS[words])
        events.append((person, f"{person} is in the {place}." if i == 0 else f"Then {person} {verb} the {place}.", i))
    return events


def multihop3(rng: random.Random, split: str, filler: int, distractors: int, vocab: str | None = None) -> Example:
    """Where an object is, through exactly three links; the last is the carrier's latest move."""
    words = vocab or split  # whose word banks (data.py): the split's own, or "invented"
    n_people = min(distractors + 1, len(data.NAMES[words]), 9)
    people = rng.sample(data.NAMES[words], k=n_people)
    # Containers and objects are drawn from colour x noun grids, so each shares words with others of its kind.
    colours = data.COLOURS[words]
    boxes = [f"{c} {k}" for c in rng.sample(colours, k=3) for k in rng.sample(data.CONTAINERS[words], k=3)]
    grid = [f"{c} {o}" for c in rng.sample(colours, k=3) for o in rng.sample(data.OBJECTS[words], k=3)]
    asked = rng.choice(grid)
    similar = [g for g in grid if g != asked and set(g.split()) & set(asked.split())]
    rng.shuffle(similar)
    others = [g for g in grid if g != asked and g not in similar[:2]]
    objects = [asked, *similar[:2], *rng.sample(others, k=max(0, n_people - 3))][:n_people]
    containers = rng.sample(boxes, k=n_people)
    moves_lo, moves_hi = (2, 4) if split == "train" else (3, 5)
    trails = [(people[0], _trail(rng, data.PLACES[words], rng.randint(moves_lo, moves_hi)))]
    trails += [(p, _trail(rng, data.PLACES[words], rng.randint(1, 3))) for p in people[1:]]
    story = _move_story(rng, words, trails, last_anywhere=True)
    last = max(i for i, (p, _, _) in enumerate(story) if p == people[0])
    facts = [(s, i == last) for i, (_, s, _) in enumerate(story)]
    for i, (person, obj, box) in enumerate(zip(people, objects, containers, strict=True)):
        carry = f"{person} {rng.choice(data.CARRY_VERBS[words])} the {box}."
        inside = f"The {obj} is in the {box}."
        for sentence in (carry, inside):  # what a person carries goes wherever they go: any position is true
            facts.insert(rng.randrange(len(facts) + 1), (sentence, i == 0))
    for _ in range(filler):
        facts.insert(rng.randrange(len(facts) + 1), (rng.choice(data.FILLER[words]), False))
    b = Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    mine = trails[0][1]
    return Example(
        context=b.text(),
        question=f"Where is the {asked}?",
        answer=f" {mine[-1]}",
        choices=pick_choices(rng, mine[-1], [p for p in mine[:-1] if p != mine[-1]], data.PLACES[words]),
        answer_prefix=f"The {asked} is in the",
        evidence=tuple(b.evidence),
        family=f"multihop3:{split}",
    )


def before(rng: random.Random, split: str, filler: int, distractors: int, vocab: str | None = None) -> Example:
    """Where a person was before a given place."""
    words = vocab or split  # whose word banks (data.py): the split's own, or "invented"
    n_people = min(distractors + 1, len(data.NAMES[words]))
    people = rng.sample(data.NAMES[words], k=n_people)
    moves_lo, moves_hi = (3, 4) if split == "train" else (4, 5)
    mine = _trail(rng, data.PLACES[words], rng.randint(moves_lo, moves_hi), revisit=False)
    trails = [(people[0], mine)] + [(p, _trail(rng, data.PLACES[words], rng.randint(1, 3))) for p in people[1:]]
    story = _move_story(rng, words, trails, last_anywhere=False)
    j = rng.randint(1, len(mine) - 1)  # asked: where the person was before mine[j], i.e. mine[j - 1]
    facts = [(s, p == people[0] and step in (j - 1, j)) for p, s, step in story]
    for _ in range(filler):
        facts.insert(rng.randrange(len(facts) + 1), (rng.choice(data.FILLER[words]), False))
    b = Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    target, asked, answer = people[0], mine[j], mine[j - 1]
    return Example(
        context=b.text(),
        question=f"Where was {target} before the {asked}?",
        answer=f" {answer}",
        choices=pick_choices(rng, answer, [asked, *(p for p in mine if p not in (asked, answer))], data.PLACES[words]),
        answer_prefix=f"Before the {asked}, {target} was in the",
        evidence=tuple(b.evidence),
        family=f"before:{split}",
    )
