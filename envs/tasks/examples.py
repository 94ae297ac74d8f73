"""Task examples and their tokenised form.

An :class:`Example` is ``(context, question, answer)`` with optional answer choices, an optional answer prefix
that opens the model's turn, optional evidence spans (character offsets into the context) and optional
force-keep spans (context the selection must keep, inside the budget, as a deployed reducer's ``force_keep``).
Only the context is reducible; the instruction, question and answer prefix are always kept.

:func:`encode_example` tokenises the context and question with :mod:`policies.processor`, the same code the
deployed reducer uses, so a training observation and a deployed one are built from identical token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policies.processor import Encoded, ProcessorConfig, prepare_batch
from policies.semantic import SentenceEncoder
from policies.tokenization import encode_context, encode_question, encode_text


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
        force_keep: Character spans ``(start, end)`` of the context that every selection keeps (the units they
            touch, first, inside the budget; see :func:`policies.budget.select_units`), sorted, not overlapping
            (:func:`policies.force_keep.resolve_force_keep`).
    """

    context: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None
    answer_prefix: str = ""
    evidence: tuple[tuple[int, int], ...] = ()
    family: str = "custom"
    force_keep: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class EncodedExample:
    """An :class:`Example` tokenised for one tokenizer.

    Attributes:
        example: The source example.
        context: Context token ids (the reducible span).
        question: Question token ids (:func:`policies.tokenization.encode_question`).
        answer_prefix: Answer-prefix token ids.
        answer: Gold answer token ids.
        choices: Token ids of each choice, or None.
        evidence: Per context token, True where the token overlaps an evidence span.
        offsets: Character span of each context token in ``example.context``.
    """

    example: Example
    context: tuple[int, ...]
    question: tuple[int, ...]
    answer_prefix: tuple[int, ...]
    answer: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...] | None
    evidence: tuple[bool, ...]
    offsets: tuple[tuple[int, int], ...] = ()

    @property
    def answer_index(self) -> int | None:
        """Index of the gold answer among the choices, or None without choices."""
        if self.example.choices is None:
            return None
        return self.example.choices.index(self.example.answer)


def encode_example(tokenizer: Any, ex: Example) -> EncodedExample:
    """Tokenise an example without special tokens and map its evidence spans onto context tokens.

    Args:
        tokenizer: A Hugging Face fast tokenizer (offsets are needed for evidence).
        ex: The example.

    Returns:
        The encoded example.

    Raises:
        ValueError: If the context or answer encodes to no tokens.
    """
    ctx, offsets, evidence = encode_context(tokenizer, ex.context, ex.evidence)
    answer = encode_text(tokenizer, ex.answer)
    if not ctx:
        raise ValueError(f"example from {ex.family}: the context encodes to no tokens")
    if not answer:
        raise ValueError(f"example from {ex.family}: the answer encodes to no tokens")
    choices = tuple(encode_text(tokenizer, c) for c in ex.choices) if ex.choices is not None else None
    return EncodedExample(
        example=ex,
        context=ctx,
        question=encode_question(tokenizer, ex.question),
        answer_prefix=encode_text(tokenizer, ex.answer_prefix),
        answer=answer,
        choices=choices,
        evidence=evidence,
        offsets=offsets,
    )


def prepare_examples(
    config: ProcessorConfig, encs: Sequence[EncodedExample], encoder: SentenceEncoder | None = None
) -> list[Encoded]:
    """The policy's view of encoded examples (units, lexical channels), exactly as the reducer builds it.

    ``encoder``: the sentence encoder of the semantic channel (needed when ``config.semantic``).
    """
    items = [(e.example.context, e.context, e.offsets, e.example.question, e.question) for e in encs]
    return prepare_batch(config, items, encoder)
