"""Tokenisation for the policy and the frozen model: text is always plain text, never control tokens.

Every text that reaches the policy or the frozen model's prompt is encoded here: no special tokens are added, and
special-token strings inside a text are split into ordinary tokens. The question is encoded as it follows
``Question:`` in the prompt (stripped, one leading space); a context with its character offsets and the tokens
that overlap its evidence spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id: its pad token, else EOS, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def encode_text(tokenizer: Any, text: str) -> tuple[int, ...]:
    """Token ids of ``text`` as plain text (empty text gives no tokens).

    No special tokens are added, and special-token strings inside the text (``<|im_end|>``, say) are split into
    ordinary tokens: a context can never inject control tokens into the frozen model's prompt.
    """
    return tuple(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]) if text else ()


def encode_question(tokenizer: Any, question: str | None) -> tuple[int, ...]:
    """Token ids of a question as it appears in the prompt (after ``Question:``): stripped, one leading space."""
    if question is None or not question.strip():
        return ()
    return encode_text(tokenizer, " " + question.strip())


def encode_context(
    tokenizer: Any, context: str, evidence: Sequence[tuple[int, int]] = ()
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...], tuple[bool, ...]]:
    """Context token ids, their character offsets, and whether each overlaps one of the ``evidence`` spans."""
    if not context:
        return (), (), ()
    batch = tokenizer(context, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    offsets = tuple((int(s), int(e)) for s, e in batch["offset_mapping"])
    flags = tuple(any(s < end and e > start for start, end in evidence) for s, e in offsets)
    return tuple(batch["input_ids"]), offsets, flags
