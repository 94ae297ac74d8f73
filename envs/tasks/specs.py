"""Task spec strings: which examples a run trains or evaluates on.

Spec strings (comma-separated specs form a mixture, drawn round-robin)::

    passkey:train
    kv:heldout:n=200,distractors=12
    qa:train:n=500,seed=3
    multihop:heldout
    passages:heldout:n=200
    jsonl:path/to/file.jsonl

Options for synthetic families (:mod:`envs.tasks.families`): ``n`` (number of examples), ``seed``,
``distractors`` (distractor pairs, people or facts), ``filler`` (filler sentences), ``invented`` (1: made-up
names, places and objects instead of the split's word banks; for training). Real-text families
(:mod:`envs.tasks.real_text`: ``passages``, ``longdoc``) take ``n``, ``seed`` and, for ``passages``, ``distractors``
(distractor passages).

Run as a module, it writes a spec's examples as a JSONL task file (the format of :mod:`envs.tasks.jsonl`),
e.g. to see the format, or to train on the synthetic families as data without evidence marks::

    python -m envs.tasks.specs multihop:train:n=64 --out multihop.jsonl --no-evidence
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from envs.tasks import families
from envs.tasks.examples import Example
from envs.tasks.families import SPLITS, make_examples
from envs.tasks.jsonl import load_jsonl, write_jsonl
from envs.tasks.real_text import REAL_FAMILIES, make_real_examples


def all_families() -> tuple[str, ...]:
    """Every family a spec may name: the synthetic ones (``families.REGISTRY``), then the real-text ones."""
    return (*families.REGISTRY, *REAL_FAMILIES)


SYNTHETIC_OPTIONS = ("n", "seed", "filler", "distractors", "invented")
"""Options of a synthetic family's spec (:func:`envs.tasks.families.make_examples`)."""

LOGLIK_FAMILIES = REAL_FAMILIES
"""Families whose headline metric is the answer's log-likelihood (long extractive answers; EM says little)."""


@dataclass
class TaskSpec:
    """A parsed task spec (see the module docstring).

    Attributes:
        family: A synthetic or real-text family (:func:`all_families`) or ``jsonl``.
        split: ``train``/``heldout`` for synthetic families; the file path for ``jsonl``.
        options: Integer options (``n``, ``seed``, ``filler``, ``distractors``).
    """

    family: str
    split: str
    options: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> TaskSpec:
        """Parse one spec such as ``kv:heldout:n=100,distractors=8`` or ``jsonl:data/x.jsonl``.

        Raises:
            ValueError: On a malformed or unknown spec.
        """
        spec = spec.strip()
        family, _, rest = spec.partition(":")
        if family == "jsonl":
            if not rest:
                raise ValueError("task spec 'jsonl:' needs a path, e.g. jsonl:data/tasks.jsonl")
            return cls("jsonl", rest)
        if family not in all_families():
            raise ValueError(
                f"unknown task spec {spec!r}: family must be one of {', '.join(all_families())} or jsonl:PATH"
            )
        split, _, opts = rest.partition(":")
        split = split or "train"
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in task spec {spec!r}; choose train or heldout")
        options: dict[str, int] = {}
        for item in filter(None, opts.split(",")) if opts else []:
            key, eq, value = item.partition("=")
            known = ("n", "seed", "distractors") if family in REAL_FAMILIES else SYNTHETIC_OPTIONS
            if not eq or key not in known or (family == "longdoc" and key == "distractors"):
                known_here = [k for k in known if not (family == "longdoc" and k == "distractors")]
                raise ValueError(f"bad option {item!r} in task spec {spec!r} (known: {', '.join(known_here)})")
            try:
                options[key] = int(value)
            except ValueError as err:
                raise ValueError(f"option {key} in task spec {spec!r} must be an integer") from err
        return cls(family, split, options)

    def examples(self, default_n: int = 256, seed: int = 0) -> list[Example]:
        """Materialise the spec's examples (``n``/``seed`` options override the defaults)."""
        if self.family == "jsonl":
            return load_jsonl(self.split)
        opts = dict(self.options)
        if self.family in REAL_FAMILIES:
            return make_real_examples(
                self.family, self.split, opts.pop("n", default_n), seed=opts.pop("seed", seed), **opts
            )
        return make_examples(
            self.family,
            self.split,
            opts.pop("n", default_n),
            seed=opts.pop("seed", seed),
            **opts,
        )


def load_tasks(spec: str | Sequence[str], default_n: int = 256, seed: int = 0) -> list[Example]:
    """Examples for a spec string, a comma-joined mixture of specs, or a list of specs.

    In a mixture, examples are interleaved round-robin so any prefix of the list is balanced.

    Args:
        spec: E.g. ``"passkey:train"``, ``"kv:train,qa:train"`` or ``["jsonl:a.jsonl", "kv:heldout"]``.
        default_n: Examples per synthetic spec when the spec gives no ``n``.
        seed: Seed for synthetic specs that give none.

    Returns:
        The examples.
    """
    specs = split_specs(spec) if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("empty task spec")
    groups = [TaskSpec.parse(s).examples(default_n, seed) for s in specs]
    out: list[Example] = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def split_specs(spec: str) -> list[str]:
    """Split a comma-joined mixture, keeping option lists (``kv:train:n=5,seed=2``) intact."""
    parts: list[str] = []
    for piece in spec.split(","):
        if parts and "=" in piece and ":" not in piece:
            parts[-1] += "," + piece
        elif piece.strip():
            parts.append(piece.strip())
    return parts


def main(argv: Sequence[str] | None = None) -> None:
    """Write a task spec's examples to a JSONL file (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m envs.tasks.specs", description="Write the examples of a task spec as a JSONL task file."
    )
    parser.add_argument("spec", help="task spec, e.g. kv:train:n=64 or a comma-joined mixture")
    parser.add_argument("--out", required=True, help="JSONL file to write (must not exist)")
    parser.add_argument("--n", type=int, default=256, help="examples per synthetic spec that gives no n=")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic specs that give none")
    parser.add_argument("--no-evidence", action="store_true", help="leave out the evidence marks, as most data has")
    args = parser.parse_args(argv)
    try:
        n = write_jsonl(load_tasks(args.spec, args.n, args.seed), args.out, evidence=not args.no_evidence)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {n} examples to {args.out}")


if __name__ == "__main__":
    main()
