"""Task examples from a JSONL file: one object per line, every malformed line reported with its line number."""

from __future__ import annotations

import json
from pathlib import Path

from envs.examples import Example


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
