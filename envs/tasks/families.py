"""Synthetic task families: generators of :class:`~envs.tasks.examples.Example` with recorded evidence spans.

Each family has a ``train`` and a ``heldout`` split that differ beyond the seed: held-out examples use names,
keys, places, objects, verbs and filler vocabulary never used in training (see :mod:`envs.tasks.data`), and
longer contexts.

* ``passkey``: a pass key hidden in filler text (exact match).
* ``kv``: the code of one key among distractor key/code pairs (exact match).
* ``qa``: which city one person lives in, among facts about many people and filler (4 choices).
* ``multihop``: where an object is, through 2-3 chained facts: the object may lie in a container, a person
  carries the object (or container), and that person is at a place. Distractor objects share words with the
  asked one (same colour or same noun), so overlap with the question finds the first link but not the last
  (4 choices).
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
from collections.abc import Callable
from dataclasses import dataclass

from envs.tasks import data
from envs.tasks.examples import Example

SPLITS = ("train", "heldout")

_SPLIT_SEED = {"train": 0, "heldout": 1_000_003}


class _Builder:
    """Accumulates context sentences and records the character spans of evidence sentences."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.evidence: list[tuple[int, int]] = []
        self.length = 0

    def add(self, sentence: str, evidence: bool = False) -> None:
        if self.parts:
            self.length += 1  # the joining space
        if evidence:
            self.evidence.append((self.length, self.length + len(sentence)))
        self.parts.append(sentence)
        self.length += len(sentence)

    def text(self) -> str:
        return " ".join(self.parts)


def _passkey(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    bank = data.FILLER[split]
    digits = 5 if split == "train" else 6
    key = str(rng.randrange(10 ** (digits - 1), 10**digits))
    n_fill = rng.randint(filler, 2 * filler)
    pos = rng.randint(0, n_fill)
    b = _Builder()
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


def _kv(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    keys = rng.sample(data.KV_KEYS[split], k=min(distractors + 1, len(data.KV_KEYS[split])))
    values = [str(rng.randrange(1000, 10000)) for _ in keys]
    target = rng.randrange(len(keys))
    b = _Builder()
    fill_at = set(rng.sample(range(len(keys) + 1), k=min(filler, len(keys) + 1)))
    for i in range(len(keys)):
        if i in fill_at:
            b.add(rng.choice(data.FILLER[split]))
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


def _choices(rng: random.Random, answer: str, preferred: list[str], bank: list[str], k: int = 4) -> tuple[str, ...]:
    """``k`` answer options: the answer, then wrong ones from ``preferred`` first, then from ``bank``; shuffled."""
    wrong = [c for c in dict.fromkeys(preferred) if c != answer]
    wrong = rng.sample(wrong, k=min(k - 1, len(wrong)))
    if len(wrong) < k - 1:
        rest = [c for c in bank if c != answer and c not in wrong]
        wrong += rng.sample(rest, k=k - 1 - len(wrong))
    options = [f" {c}" for c in [answer, *wrong]]
    rng.shuffle(options)
    return tuple(options)


def _qa(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    names = rng.sample(data.NAMES[split], k=min(distractors + 1, len(data.NAMES[split])))
    cities = data.CITIES[split]
    home = {n: rng.choice(cities) for n in names}
    target = names[0]
    # Distractor people never share the target's city, so the question has one right answer.
    for n in names[1:]:
        while home[n] == home[target]:
            home[n] = rng.choice(cities)
    facts: list[tuple[str, bool]] = []
    for n in names:
        facts.append((f"{n} lives in {home[n]}.", n == target))
        facts.append((f"{n} works as a {rng.choice(data.JOBS[split])}.", False))
        if rng.random() < 0.5:
            facts.append((f"{n} has {rng.choice(data.PETS[split])}.", False))
    facts += [(rng.choice(data.FILLER[split]), False) for _ in range(filler)]
    rng.shuffle(facts)
    b = _Builder()
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


def _multihop(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    n_people = min(distractors + 1, len(data.NAMES[split]), len(data.PLACES[split]), 9)
    people = rng.sample(data.NAMES[split], k=n_people)
    places = rng.sample(data.PLACES[split], k=n_people)
    # Objects are drawn from a 3 x 3 grid of colours and nouns, so the asked object's words also appear in
    # distractor objects (same colour or same noun).
    grid = [f"{c} {o}" for c in rng.sample(data.COLOURS[split], k=3) for o in rng.sample(data.OBJECTS[split], k=3)]
    asked = rng.choice(grid)
    similar = [g for g in grid if g != asked and set(g.split()) & set(asked.split())]
    rng.shuffle(similar)
    others = [g for g in grid if g != asked and g not in similar[:2]]
    objects = [asked, *similar[:2], *rng.sample(others, k=max(0, n_people - 3))][:n_people]
    three_hops = rng.random() < 0.5
    container = f"{rng.choice(data.COLOURS[split])} {rng.choice(data.CONTAINERS[split])}"
    facts: list[tuple[str, bool]] = []
    for i, (person, place, obj) in enumerate(zip(people, places, objects, strict=True)):
        target = i == 0
        held = container if (target and three_hops) else obj
        if target and three_hops:
            facts.append((f"The {obj} is in the {container}.", True))
        facts.append((f"{person} {rng.choice(data.CARRY_VERBS[split])} the {held}.", target))
        facts.append((f"{person} {rng.choice(data.MOVE_VERBS[split])} the {place}.", target))
    facts += [(rng.choice(data.FILLER[split]), False) for _ in range(filler)]
    rng.shuffle(facts)
    b = _Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    return Example(
        context=b.text(),
        question=f"Where is the {asked}?",
        answer=f" {places[0]}",
        choices=_choices(rng, places[0], places[1:], data.PLACES[split]),
        answer_prefix=f"The {asked} is in the",
        evidence=tuple(b.evidence),
        family=f"multihop:{split}",
    )


def _state(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    n_people = min(distractors + 1, len(data.NAMES[split]))
    people = rng.sample(data.NAMES[split], k=n_people)
    target = people[0]
    moves_lo, moves_hi = (2, 4) if split == "train" else (3, 5)

    def trail(n: int) -> list[str]:
        places = [rng.choice(data.PLACES[split])]
        while len(places) < n:
            nxt = rng.choice(data.PLACES[split])
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
            sentence = f"Then {person} {rng.choice(data.MOVE_VERBS[split])} the {place}."
        else:
            sentence = f"{person} is in the {place}."
            first_seen.add(person)
        facts.append((sentence, i == last))
    for _ in range(filler):
        facts.insert(rng.randrange(len(facts) + 1), (rng.choice(data.FILLER[split]), False))
    b = _Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    answer = mine[-1]
    return Example(
        context=b.text(),
        question=f"Where is {target} now?",
        answer=f" {answer}",
        choices=_choices(rng, answer, [p for p in mine[:-1] if p != answer], data.PLACES[split]),
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
    rng: random.Random, split: str, trails: list[tuple[str, list[str]]], last_anywhere: bool
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
        verb = rng.choice(data.MOVE_VERBS[split])
        events.append((person, f"{person} is in the {place}." if i == 0 else f"Then {person} {verb} the {place}.", i))
    return events


def _multihop3(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    n_people = min(distractors + 1, len(data.NAMES[split]), 9)
    people = rng.sample(data.NAMES[split], k=n_people)
    # Containers and objects are drawn from colour x noun grids, so each shares words with others of its kind.
    colours = data.COLOURS[split]
    boxes = [f"{c} {k}" for c in rng.sample(colours, k=3) for k in rng.sample(data.CONTAINERS[split], k=3)]
    grid = [f"{c} {o}" for c in rng.sample(colours, k=3) for o in rng.sample(data.OBJECTS[split], k=3)]
    asked = rng.choice(grid)
    similar = [g for g in grid if g != asked and set(g.split()) & set(asked.split())]
    rng.shuffle(similar)
    others = [g for g in grid if g != asked and g not in similar[:2]]
    objects = [asked, *similar[:2], *rng.sample(others, k=max(0, n_people - 3))][:n_people]
    containers = rng.sample(boxes, k=n_people)
    moves_lo, moves_hi = (2, 4) if split == "train" else (3, 5)
    trails = [(people[0], _trail(rng, data.PLACES[split], rng.randint(moves_lo, moves_hi)))]
    trails += [(p, _trail(rng, data.PLACES[split], rng.randint(1, 3))) for p in people[1:]]
    story = _move_story(rng, split, trails, last_anywhere=True)
    last = max(i for i, (p, _, _) in enumerate(story) if p == people[0])
    facts = [(s, i == last) for i, (_, s, _) in enumerate(story)]
    for i, (person, obj, box) in enumerate(zip(people, objects, containers, strict=True)):
        carry = f"{person} {rng.choice(data.CARRY_VERBS[split])} the {box}."
        inside = f"The {obj} is in the {box}."
        for sentence in (carry, inside):  # what a person carries goes wherever they go: any position is true
            facts.insert(rng.randrange(len(facts) + 1), (sentence, i == 0))
    for _ in range(filler):
        facts.insert(rng.randrange(len(facts) + 1), (rng.choice(data.FILLER[split]), False))
    b = _Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    mine = trails[0][1]
    return Example(
        context=b.text(),
        question=f"Where is the {asked}?",
        answer=f" {mine[-1]}",
        choices=_choices(rng, mine[-1], [p for p in mine[:-1] if p != mine[-1]], data.PLACES[split]),
        answer_prefix=f"The {asked} is in the",
        evidence=tuple(b.evidence),
        family=f"multihop3:{split}",
    )


def _before(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    n_people = min(distractors + 1, len(data.NAMES[split]))
    people = rng.sample(data.NAMES[split], k=n_people)
    moves_lo, moves_hi = (3, 4) if split == "train" else (4, 5)
    mine = _trail(rng, data.PLACES[split], rng.randint(moves_lo, moves_hi), revisit=False)
    trails = [(people[0], mine)] + [(p, _trail(rng, data.PLACES[split], rng.randint(1, 3))) for p in people[1:]]
    story = _move_story(rng, split, trails, last_anywhere=False)
    j = rng.randint(1, len(mine) - 1)  # asked: where the person was before mine[j], i.e. mine[j - 1]
    facts = [(s, p == people[0] and step in (j - 1, j)) for p, s, step in story]
    for _ in range(filler):
        facts.insert(rng.randrange(len(facts) + 1), (rng.choice(data.FILLER[split]), False))
    b = _Builder()
    for sentence, is_evidence in facts:
        b.add(sentence, evidence=is_evidence)
    target, asked, answer = people[0], mine[j], mine[j - 1]
    return Example(
        context=b.text(),
        question=f"Where was {target} before the {asked}?",
        answer=f" {answer}",
        choices=_choices(rng, answer, [asked, *(p for p in mine if p not in (asked, answer))], data.PLACES[split]),
        answer_prefix=f"Before the {asked}, {target} was in the",
        evidence=tuple(b.evidence),
        family=f"before:{split}",
    )


@dataclass(frozen=True)
class Family:
    """A synthetic family: its generator and its default sizes per split.

    Attributes:
        generate: ``generate(rng, split, filler, distractors) -> Example``, one example per call.
        defaults: Per split, the default ``filler`` and ``distractors`` (held-out lengths lie outside the
            training range).
    """

    generate: Callable[[random.Random, str, int, int], Example]
    defaults: dict[str, dict[str, int]]


REGISTRY: dict[str, Family] = {
    "passkey": Family(
        _passkey, {"train": {"filler": 6, "distractors": 0}, "heldout": {"filler": 10, "distractors": 0}}
    ),
    "kv": Family(_kv, {"train": {"filler": 0, "distractors": 10}, "heldout": {"filler": 0, "distractors": 16}}),
    "qa": Family(_qa, {"train": {"filler": 4, "distractors": 6}, "heldout": {"filler": 4, "distractors": 8}}),
    "multihop": Family(
        _multihop, {"train": {"filler": 2, "distractors": 4}, "heldout": {"filler": 3, "distractors": 6}}
    ),
    "state": Family(_state, {"train": {"filler": 2, "distractors": 3}, "heldout": {"filler": 3, "distractors": 5}}),
    "multihop3": Family(
        _multihop3, {"train": {"filler": 1, "distractors": 3}, "heldout": {"filler": 1, "distractors": 4}}
    ),
    "before": Family(_before, {"train": {"filler": 2, "distractors": 3}, "heldout": {"filler": 3, "distractors": 5}}),
}
"""The synthetic families by name; a new family is a generator (one file) and one line here (docs/extending.md)."""

FAMILIES = tuple(REGISTRY)
"""The synthetic families' names."""


def make_examples(
    family: str,
    split: str,
    n: int,
    *,
    seed: int = 0,
    filler: int | None = None,
    distractors: int | None = None,
) -> list[Example]:
    """Generate ``n`` examples of a synthetic family, deterministically from ``seed``.

    Args:
        family: One of :data:`REGISTRY`.
        split: ``train`` or ``heldout``.
        n: Number of examples.
        seed: Random seed; the split adds its own offset, so equal seeds never give equal examples across
            splits.
        filler: Filler sentences (for passkey the filler length range is ``filler`` to ``2*filler``); None
            takes the split's default.
        distractors: Distractor pairs, people or facts; None takes the split's default.

    Returns:
        The examples.

    Raises:
        ValueError: On an unknown family or split, or a negative size.
    """
    if family not in REGISTRY:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(REGISTRY)} or jsonl:PATH")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {family}; choose one of {', '.join(SPLITS)}")
    d = REGISTRY[family].defaults[split]
    filler = d["filler"] if filler is None else filler
    distractors = d["distractors"] if distractors is None else distractors
    if n < 1 or filler < 0 or distractors < 0:
        raise ValueError(f"n must be >= 1 and filler, distractors >= 0 (got n={n}, {filler}, {distractors})")
    rng = random.Random(f"{family}/{split}/{seed + _SPLIT_SEED[split]}")
    return [REGISTRY[family].generate(rng, split, filler, distractors) for _ in range(n)]
