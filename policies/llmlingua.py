"""LLMLingua's interface over a :class:`~policies.reducer.TokenReducer`: ``compress_prompt`` and its keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from policies.force_keep import occurring_strings, resolve_force_keep
from policies.reducer_config import ReducerError

if TYPE_CHECKING:
    from policies.reducer import TokenReducer


def compress_prompt(
    reducer: TokenReducer,
    context: str | Sequence[str],
    instruction: str = "",
    question: str = "",
    rate: float = 0.5,
    target_token: int = -1,
    force_tokens: Sequence[str] = (),
) -> dict[str, Any]:
    """LLMLingua's ``compress_prompt`` over ``reducer``: arguments and keys as :meth:`TokenReducer.compress_prompt`."""
    text = context if isinstance(context, str) else "\n\n".join(context)
    if isinstance(force_tokens, str):
        raise ReducerError("force_tokens must be a list of strings, not one string")
    present = occurring_strings(force_tokens, [text])
    occurrences = sorted(span for t in present for span in resolve_force_keep(text, [t]))
    forced: list[tuple[int, int]] = []
    for s, e in occurrences:  # the union of the occurrences, as disjoint spans
        if forced and s < forced[-1][1]:
            forced[-1] = (forced[-1][0], max(forced[-1][1], e))
        else:
            forced.append((s, e))
    red = reducer.reduce(
        text,
        question or None,
        rate=None if target_token > 0 else rate,
        target_tokens=target_token if target_token > 0 else None,
        force_keep=forced or None,
    )
    parts_full = [p for p in (instruction, text, question) if p]
    parts = [p for p in (instruction, red.text, question) if p]
    origin = len(reducer.encode("\n\n".join(parts_full)))
    compressed_prompt = "\n\n".join(parts)
    compressed = len(reducer.encode(compressed_prompt))
    return {
        "compressed_prompt": compressed_prompt,
        "origin_tokens": origin,
        "compressed_tokens": compressed,
        "ratio": origin / max(compressed, 1),
        "rate": compressed / max(origin, 1),
    }
