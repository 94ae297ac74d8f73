"""Task examples from a JSONL file, read as a stream; every bad line is reported with its line number.

One JSON object per line:

* ``context``, ``question``, ``answer`` (strings; the context must hold some non-whitespace text);
* ``choices`` (optional): a non-empty list of strings that contains ``answer``;
* ``answer_prefix`` (optional string): text that opens the model's turn;
* ``evidence`` (optional): a list whose items are ``[start, end]`` character spans of the context, or text
  snippets, each located at its first occurrence in the context;
* ``force_keep`` (optional): context every selection must keep (inside the budget, whole units), as a list of
  ``[start, end]`` spans or text snippets; unlike evidence, a snippet stands for *every* occurrence of it, as
  in ``TokenReducer.reduce(..., force_keep=...)``.

What is accepted and what is refused (each refusal names the file, the line and the cause):

* a UTF-8 byte-order mark at the start of the file is skipped; any other bytes that are not UTF-8 are refused;
* blank lines are skipped;
* a line longer than :data:`MAX_LINE_BYTES` is refused without being read into memory whole;
* a missing or wrongly typed field, an answer not among the choices, an evidence span outside the context or a
  snippet that does not occur in it are refused, and so are overlapping ``force_keep`` spans.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from envs.tasks.examples import Example
from policies.force_keep import resolve_force_keep

MAX_LINE_BYTES = 8 * 2**20
"""Longest JSONL line accepted (8 MiB: about two million tokens of context)."""

_BOM = b"\xef\xbb\xbf"


class JsonlError(ValueError):
    """A JSONL task file cannot be used; the message names the file, the line and the cause."""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line, decoded as UTF-8, at most MAX_LINE_BYTES each."""
    with path.open("rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line without keeping it
                    raw = f.readline(MAX_LINE_BYTES)
                    size += len(raw)
                raise JsonlError(
                    f"{path}:{lineno}: the line is {size / 2**20:.1f} MiB, above the limit of "
                    f"{MAX_LINE_BYTES / 2**20:.0f} MiB for one example"
                )
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise JsonlError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[err.start]:02x} at position {err.start})"
                ) from err
            if text.strip():
                yield lineno, text


def _evidence(value: object, context: str, where: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise JsonlError(f"{where}: 'evidence' must be a list of [start, end] spans or text snippets")
    spans = []
    for item in value:
        if isinstance(item, str):
            start = context.find(item) if item else -1
            if start < 0:
                raise JsonlError(f"{where}: evidence snippet {item[:60]!r} does not occur in the context")
            spans.append((start, start + len(item)))
        elif (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            s, e = item
            if not 0 <= s < e <= len(context):
                raise JsonlError(f"{where}: evidence span {item} lies outside the context (0..{len(context)})")
            spans.append((s, e))
        else:
            raise JsonlError(f"{where}: evidence item {item!r} is neither a [start, end] span nor a text snippet")
    return tuple(spans)


def _force_keep(value: object, context: str, where: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise JsonlError(f"{where}: 'force_keep' must be a list of [start, end] spans or text snippets")
    try:
        return resolve_force_keep(context, value)
    except ValueError as err:
        raise JsonlError(f"{where}: {err}") from err


def parse_line(text: str, where: str, family: str) -> Example:
    """One JSONL line as an :class:`Example`.

    Raises:
        JsonlError: Naming ``where`` (``file:line``) and the cause.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise JsonlError(f"{where}: invalid JSON ({err.msg})") from err
    if not isinstance(obj, dict):
        raise JsonlError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("context", "question", "answer"):
        if not isinstance(obj.get(key), str):
            raise JsonlError(f"{where}: missing or non-string field {key!r}")
    if not obj["context"].strip():
        raise JsonlError(f"{where}: empty context (no text other than whitespace)")
    if not obj["answer"].strip():
        raise JsonlError(f"{where}: empty answer")
    choices = obj.get("choices")
    if choices is not None:
        if not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
            raise JsonlError(f"{where}: 'choices' must be a non-empty list of strings")
        if obj["answer"] not in choices:
            raise JsonlError(f"{where}: 'answer' {obj['answer']!r} is not one of 'choices'")
        choices = tuple(choices)
    prefix = obj.get("answer_prefix", "")
    if not isinstance(prefix, str):
        raise JsonlError(f"{where}: 'answer_prefix' must be a string")
    return Example(
        context=obj["context"],
        question=obj["question"],
        answer=obj["answer"],
        choices=choices,
        answer_prefix=prefix,
        evidence=_evidence(obj.get("evidence"), obj["context"], where),
        family=family,
        force_keep=_force_keep(obj.get("force_keep"), obj["context"], where),
    )


def iter_jsonl(path: str | Path) -> Iterator[Example]:
    """Stream the examples of a JSONL file (constant memory in the file's length).

    Raises:
        FileNotFoundError: If the file does not exist.
        JsonlError: On a bad line (naming the file and line) or a file with no example.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL task file not found: {path}")
    family = f"jsonl:{path.name}"
    n = 0
    for lineno, text in _lines(path):
        yield parse_line(text, f"{path}:{lineno}", family)
        n += 1
    if not n:
        raise JsonlError(f"{path}: no examples")


def validate_jsonl(path: str | Path) -> int:
    """Read a JSONL file once, checking every line; returns the number of examples.

    Raises:
        FileNotFoundError: If the file does not exist.
        JsonlError: On the first bad line.
    """
    return sum(1 for _ in iter_jsonl(path))


def load_jsonl(path: str | Path) -> list[Example]:
    """All examples of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def example_record(ex: Example, evidence: bool = True) -> dict[str, object]:
    """The JSONL object of an example (the format :func:`parse_line` reads); without ``evidence`` marks if asked."""
    record: dict[str, object] = {"context": ex.context, "question": ex.question, "answer": ex.answer}
    if ex.choices is not None:
        record["choices"] = list(ex.choices)
    if ex.answer_prefix:
        record["answer_prefix"] = ex.answer_prefix
    if evidence and ex.evidence:
        record["evidence"] = [[s, e] for s, e in ex.evidence]
    if ex.force_keep:
        record["force_keep"] = [[s, e] for s, e in ex.force_keep]
    return record


def write_jsonl(examples: Iterable[Example], path: str | Path, evidence: bool = True) -> int:
    """Write examples as a JSONL task file, atomically (a temporary file, then renamed); returns how many.

    Raises:
        FileExistsError: If ``path`` exists.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another path")
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(example_record(ex, evidence), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
