"""Task suites: examples whose context a policy may reduce, and the spec strings that select them.

An :class:`Example` is ``(context, question, answer)`` with optional answer choices, an optional answer prefix
that opens the model's turn, and optional evidence spans (character offsets into the context). Only the
context is reducible; the instruction, question and answer prefix are always kept.

Built-in synthetic families, each with a ``train`` and a ``heldout`` split that differ beyond the seed
(held-out examples use names, keys, filler vocabulary and lengths never used in training):

* ``passkey``: a pass key hidden in filler text.
* ``kv``: look up one key's code among distractor key/code pairs.
* ``qa``: multiple-choice questions about one person among facts about many (plus filler).

Spec strings (comma-separated specs form a mixture, drawn round-robin)::

    passkey:train
    kv:heldout:n=200,distractors=12
    qa:train:n=500,seed=3
    jsonl:path/to/file.jsonl

Options for synthetic families: ``n`` (number of examples), ``seed``, ``distractors`` (distractor pairs or
facts), ``filler`` (filler sentences; for passkey the filler length range is ``filler`` to ``2*filler``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("passkey", "kv", "qa")
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Example:
    """One task instance.

    Attributes:
        context: The reducible text.
        question: The question; always kept.
        answer: The gold answer, as the model should continue after ``answer_prefix`` (usually with a leading
            space, e.g. ``" 48213"``).
        choices: Optional answer options (each formatted like ``answer``); ``answer`` is one of them.
        answer_prefix: Text that opens the model's turn, always kept (e.g. ``"The pass key is"``).
        evidence: Character spans ``(start, end)`` of the context that answer the question.
        family: Name of the family or file it came from.
    """

    context: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None
    answer_prefix: str = ""
    evidence: tuple[tuple[int, int], ...] = ()
    family: str = "custom"


# ---------------------------------------------------------------- vocabulary banks (disjoint across splits)
_FILLER = {
    "train": [
        "The grass is green.",
        "The sky is blue.",
        "The sun is warm today.",
        "Birds sing in the morning.",
        "A cat sleeps on the mat.",
        "The road goes on and on.",
        "Clouds drift over the hills.",
        "The old clock ticks slowly.",
        "Bread is baked in the oven.",
        "Children play in the park.",
        "The wind moves the tall trees.",
        "A boat floats on the lake.",
        "Leaves fall in the autumn.",
        "The shop opens at nine.",
        "Rain taps on the window.",
        "The dog runs after the ball.",
    ],
    "heldout": [
        "Rivers carry silt toward distant deltas.",
        "Glaciers carve valleys over centuries.",
        "Lanterns flicker along the harbour wall.",
        "Merchants haggle beneath striped awnings.",
        "Violins echo through the marble hall.",
        "Copper kettles hang above the stove.",
        "Fishermen mend nets before dawn.",
        "Pilgrims rest beside the stone chapel.",
        "Owls hunt across frosty meadows.",
        "Printers stack fresh pamphlets by the door.",
        "Sailors chart routes by starlight.",
        "Bees gather nectar from clover blossoms.",
    ],
}
_KV_KEYS = {
    "train": [
        "falcon",
        "otter",
        "badger",
        "heron",
        "lynx",
        "walrus",
        "beaver",
        "gecko",
        "marmot",
        "bison",
        "ferret",
        "jackal",
        "koala",
        "lemur",
        "moose",
        "panda",
        "raven",
        "salmon",
        "tapir",
        "zebra",
        "camel",
        "donkey",
        "eagle",
        "hamster",
        "iguana",
        "llama",
        "parrot",
        "rabbit",
        "shark",
        "turtle",
    ],
    "heldout": [
        "apricot",
        "cabbage",
        "fennel",
        "guava",
        "lentil",
        "mango",
        "nutmeg",
        "olive",
        "papaya",
        "quince",
        "radish",
        "saffron",
        "tomato",
        "walnut",
        "yam",
        "almond",
        "basil",
        "cherry",
        "date",
        "endive",
    ],
}
_NAMES = {
    "train": [
        "Alice",
        "Bob",
        "Carol",
        "David",
        "Emma",
        "Frank",
        "Grace",
        "Henry",
        "Irene",
        "Jack",
        "Karen",
        "Liam",
        "Maria",
        "Nathan",
        "Olivia",
        "Peter",
        "Quinn",
        "Rachel",
        "Steve",
        "Tina",
    ],
    "heldout": [
        "Ingrid",
        "Mateo",
        "Yusuf",
        "Priya",
        "Sven",
        "Aiko",
        "Dmitri",
        "Fatima",
        "Kofi",
        "Lucia",
        "Ravi",
        "Zofia",
        "Tariq",
        "Elif",
    ],
}
_CITIES = {
    "train": [
        "Paris",
        "London",
        "Tokyo",
        "Rome",
        "Berlin",
        "Madrid",
        "Moscow",
        "Cairo",
        "Sydney",
        "Toronto",
        "Chicago",
        "Dublin",
    ],
    "heldout": ["Lisbon", "Vienna", "Prague", "Oslo", "Athens", "Warsaw", "Seoul", "Lima", "Nairobi", "Helsinki"],
}
_JOBS = {
    "train": ["baker", "doctor", "teacher", "pilot", "farmer", "lawyer", "painter", "nurse"],
    "heldout": ["chemist", "librarian", "carpenter", "jeweller", "surveyor", "translator"],
}
_PETS = {
    "train": ["a dog", "a cat", "a parrot", "a rabbit", "a hamster"],
    "heldout": ["a tortoise", "a ferret", "a canary", "a goldfish"],
}

# Default sizes per split; held-out lengths lie outside the training range.
_DEFAULTS = {
    "passkey": {"train": {"filler": 6, "distractors": 0}, "heldout": {"filler": 10, "distractors": 0}},
    "kv": {"train": {"filler": 0, "distractors": 10}, "heldout": {"filler": 0, "distractors": 16}},
    "qa": {"train": {"filler": 4, "distractors": 6}, "heldout": {"filler": 4, "distractors": 8}},
}
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
    bank = _FILLER[split]
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
    keys = rng.sample(_KV_KEYS[split], k=min(distractors + 1, len(_KV_KEYS[split])))
    values = [str(rng.randrange(1000, 10000)) for _ in keys]
    target = rng.randrange(len(keys))
    lines = list(range(len(keys)))
    b = _Builder()
    fill_at = set(rng.sample(range(len(keys) + 1), k=min(filler, len(keys) + 1)))
    for j, i in enumerate(lines):
        if j in fill_at:
            b.add(rng.choice(_FILLER[split]))
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


def _qa(rng: random.Random, split: str, filler: int, distractors: int) -> Example:
    names = rng.sample(_NAMES[split], k=min(distractors + 1, len(_NAMES[split])))
    cities = _CITIES[split]
    home = {n: rng.choice(cities) for n in names}
    target = names[0]
    # Distractor people never share the target's city, so the question has one right answer.
    for n in names[1:]:
        while home[n] == home[target]:
            home[n] = rng.choice(cities)
    facts: list[tuple[str, bool]] = []
    for n in names:
        facts.append((f"{n} lives in {home[n]}.", n == target))
        facts.append((f"{n} works as a {rng.choice(_JOBS[split])}.", False))
        if rng.random() < 0.5:
            facts.append((f"{n} has {rng.choice(_PETS[split])}.", False))
    facts += [(rng.choice(_FILLER[split]), False) for _ in range(filler)]
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


_GENERATORS = {"passkey": _passkey, "kv": _kv, "qa": _qa}


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
        family: ``passkey``, ``kv`` or ``qa``.
        split: ``train`` or ``heldout``.
        n: Number of examples.
        seed: Random seed; the split adds its own offset, so equal seeds never give equal examples across
            splits.
        filler: Filler sentences (see the module docstring); None takes the split's default.
        distractors: Distractor pairs/facts; None takes the split's default.

    Returns:
        The examples.

    Raises:
        ValueError: On an unknown family or split, or a negative size.
    """
    if family not in _GENERATORS:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(FAMILIES)} or jsonl:PATH")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {family}; choose one of {', '.join(SPLITS)}")
    d = _DEFAULTS[family][split]
    filler = d["filler"] if filler is None else filler
    distractors = d["distractors"] if distractors is None else distractors
    if n < 1 or filler < 0 or distractors < 0:
        raise ValueError(f"n must be >= 1 and filler, distractors >= 0 (got n={n}, {filler}, {distractors})")
    rng = random.Random(f"{family}/{split}/{seed + _SPLIT_SEED[split]}")
    return [_GENERATORS[family](rng, split, filler, distractors) for _ in range(n)]


def load_jsonl(path: str | Path) -> list[Example]:
    """Load examples from a JSONL file.

    Each non-blank line is an object with string fields ``context``, ``question``, ``answer`` and optional
    ``choices`` (list of strings containing ``answer``), ``answer_prefix`` and ``evidence`` (list of
    ``[start, end]`` character spans into the context).

    Args:
        path: The file.

    Returns:
        The examples.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: On a malformed line, naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL task file not found: {path}")
    out: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in ("context", "question", "answer"):
                if not isinstance(obj.get(key), str):
                    raise ValueError(f"{where}: missing or non-string field {key!r}")
            if not obj["context"].strip():
                raise ValueError(f"{where}: empty context")
            if not obj["answer"].strip():
                raise ValueError(f"{where}: empty answer")
            choices = obj.get("choices")
            if choices is not None:
                if not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
                    raise ValueError(f"{where}: 'choices' must be a non-empty list of strings")
                if obj["answer"] not in choices:
                    raise ValueError(f"{where}: 'answer' {obj['answer']!r} is not one of 'choices'")
                choices = tuple(choices)
            prefix = obj.get("answer_prefix", "")
            if not isinstance(prefix, str):
                raise ValueError(f"{where}: 'answer_prefix' must be a string")
            evidence = obj.get("evidence", [])
            try:
                spans = tuple((int(s), int(e)) for s, e in evidence)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: 'evidence' must be a list of [start, end] pairs") from err
            if any(not 0 <= s < e <= len(obj["context"]) for s, e in spans):
                raise ValueError(f"{where}: an evidence span lies outside the context")
            out.append(
                Example(
                    context=obj["context"],
                    question=obj["question"],
                    answer=obj["answer"],
                    choices=choices,
                    answer_prefix=prefix,
                    evidence=spans,
                    family=f"jsonl:{path.name}",
                )
            )
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


@dataclass
class TaskSpec:
    """A parsed task spec (see the module docstring).

    Attributes:
        family: ``passkey``, ``kv``, ``qa`` or ``jsonl``.
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
        if family not in _GENERATORS:
            raise ValueError(f"unknown task spec {spec!r}: family must be one of {', '.join(FAMILIES)} or jsonl:PATH")
        split, _, opts = rest.partition(":")
        split = split or "train"
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in task spec {spec!r}; choose train or heldout")
        options: dict[str, int] = {}
        for item in filter(None, opts.split(",")) if opts else []:
            key, eq, value = item.partition("=")
            if not eq or key not in ("n", "seed", "filler", "distractors"):
                raise ValueError(f"bad option {item!r} in task spec {spec!r} (known: n, seed, filler, distractors)")
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


@dataclass(frozen=True)
class EncodedExample:
    """An :class:`Example` tokenised for one tokenizer.

    Attributes:
        example: The source example.
        context: Context token ids (the reducible span).
        question: Question token ids (encoded with a leading space, as it follows ``Question:``).
        answer_prefix: Answer-prefix token ids.
        answer: Gold answer token ids.
        choices: Token ids of each choice, or None.
        evidence: Per context token, True where the token overlaps an evidence span.
    """

    example: Example
    context: tuple[int, ...]
    question: tuple[int, ...]
    answer_prefix: tuple[int, ...]
    answer: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...] | None
    evidence: tuple[bool, ...]

    @property
    def answer_index(self) -> int | None:
        """Index of the gold answer among the choices, or None without choices."""
        if self.example.choices is None:
            return None
        return self.example.choices.index(self.example.answer)


def encode_example(tokenizer, ex: Example) -> EncodedExample:
    """Tokenise an example without special tokens and map its evidence spans onto context tokens.

    Args:
        tokenizer: A Hugging Face fast tokenizer (offsets are needed for evidence).
        ex: The example.

    Returns:
        The encoded example.

    Raises:
        ValueError: If the context or answer encodes to no tokens.
    """

    def enc(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

    if ex.evidence:
        batch = tokenizer(ex.context, add_special_tokens=False, return_offsets_mapping=True)
        ctx = tuple(batch["input_ids"])
        evidence = tuple(
            any(s < span_end and e > span_start for span_start, span_end in ex.evidence)
            for s, e in batch["offset_mapping"]
        )
    else:
        ctx = enc(ex.context)
        evidence = (False,) * len(ctx)
    answer = enc(ex.answer)
    if not ctx:
        raise ValueError(f"example from {ex.family}: the context encodes to no tokens")
    if not answer:
        raise ValueError(f"example from {ex.family}: the answer encodes to no tokens")
    choices = tuple(enc(c) for c in ex.choices) if ex.choices is not None else None
    return EncodedExample(
        example=ex,
        context=ctx,
        question=enc(" " + ex.question.strip()),
        answer_prefix=enc(ex.answer_prefix),
        answer=answer,
        choices=choices,
        evidence=evidence,
    )
