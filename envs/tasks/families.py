"""Synthetic task families: generators of :class:`~envs.tasks.examples.Example` with recorded evidence spans.

Each family has a ``train`` and a ``heldout`` split that differ beyond the seed: held-out examples use names,
keys, places, objects, verbs and filler vocabulary never used in training (see :mod:`envs.tasks.data`), and
longer contexts.

Generators: :mod:`envs.tasks.lookup_families` (passkey, kv, qa, multihop) and :mod:`envs.tasks.move_families`
(state, multihop3, before); shared pieces in :mod:`envs.tasks.builder`.

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

from envs.tasks.examples import Example
from envs.tasks.lookup_families import kv, multihop, passkey, qa
from envs.tasks.move_families import before, multihop3, state

SPLITS = ("train", "heldout")

_SPLIT_SEED = {"train": 0, "heldout": 1_000_003}


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
    "passkey": Family(passkey, {"train": {"filler": 6, "distractors": 0}, "heldout": {"filler": 10, "distractors": 0}}),
    "kv": Family(kv, {"train": {"filler": 0, "distractors": 10}, "heldout": {"filler": 0, "distractors": 16}}),
    "qa": Family(qa, {"train": {"filler": 4, "distractors": 6}, "heldout": {"filler": 4, "distractors": 8}}),
    "multihop": Family(
        multihop, {"train": {"filler": 2, "distractors": 4}, "heldout": {"filler": 3, "distractors": 6}}
    ),
    "state": Family(state, {"train": {"filler": 2, "distractors": 3}, "heldout": {"filler": 3, "distractors": 5}}),
    "multihop3": Family(
        multihop3, {"train": {"filler": 1, "distractors": 3}, "heldout": {"filler": 1, "distractors": 4}}
    ),
    "before": Family(before, {"train": {"filler": 2, "distractors": 3}, "heldout": {"filler": 3, "distractors": 5}}),
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
