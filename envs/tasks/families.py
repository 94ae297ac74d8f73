"""The synthetic task families' registry: a generator and default sizes per family, and :func:`make_examples`.

Each family has a ``train`` and a ``heldout`` split that differ beyond the seed: held-out examples use names,
keys, places, objects, verbs and filler vocabulary never used in training (see :mod:`envs.tasks.data`), and
longer contexts. The generators, and what each family asks, are in :mod:`envs.tasks.lookup_families` (passkey,
kv, qa, multihop: one fact, or a chain of facts, to look up) and :mod:`envs.tasks.move_families` (state,
multihop3, before: people who move, where the order of the facts decides); their shared builder is
:mod:`envs.tasks.builder`.
"""

from __future__ import annotations

import inspect
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
        generate: ``generate(rng, split, filler, distractors, vocab=None) -> Example``, one example per call;
            ``vocab`` names the word banks of :mod:`envs.tasks.data` to draw from (None: the split's own).
        defaults: Per split, the default ``filler`` and ``distractors`` (held-out lengths lie outside the
            training range).
    """

    generate: Callable[..., Example]
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
    invented: int = 0,
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
        invented: 1: every name, key, place, object, colour and container is a made-up word (``data.py``'s
            ``invented`` banks; lengths, verbs and filler stay the split's), for training a ranking that does not
            lean on which words it has seen. 0: the split's own words.

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
    if invented not in (0, 1):
        raise ValueError(f"invented must be 0 or 1, got {invented}")
    generate, words = REGISTRY[family].generate, {}
    if invented:
        if "vocab" not in inspect.signature(generate).parameters:
            raise ValueError(f"family {family} cannot draw invented words: its generator takes no vocab argument")
        words = {"vocab": "invented"}
    rng = random.Random(f"{family}/{split}/{'invented/' if invented else ''}{seed + _SPLIT_SEED[split]}")
    return [generate(rng, split, filler, distractors, **words) for _ in range(n)]
