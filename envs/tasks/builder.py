"""What the synthetic family generators share: a context builder that records evidence spans, and answer options."""

from __future__ import annotations

import random


class Builder:
    """Accumulates context sentences and records the character spans of evidence sentences."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.evidence: list[tuple[int, int]] = []
        self.length = 0

    def add(self, sentence: str, evidence: bool = False) -> None:
        """Append ``sentence`` (after a space); record its span if it is ``evidence``."""
        if self.parts:
            self.length += 1  # the joining space
        if evidence:
            self.evidence.append((self.length, self.length + len(sentence)))
        self.parts.append(sentence)
        self.length += len(sentence)

    def text(self) -> str:
        """The context: the sentences joined by spaces."""
        return " ".join(self.parts)


def pick_choices(rng: random.Random, answer: str, preferred: list[str], bank: list[str], k: int = 4) -> tuple[str, ...]:
    """``k`` answer options: the answer, then wrong ones from ``preferred`` first, then from ``bank``; shuffled."""
    wrong = [c for c in dict.fromkeys(preferred) if c != answer]
    wrong = rng.sample(wrong, k=min(k - 1, len(wrong)))
    if len(wrong) < k - 1:
        rest = [c for c in bank if c != answer and c not in wrong]
        wrong += rng.sample(rest, k=k - 1 - len(wrong))
    options = [f" {c}" for c in [answer, *wrong]]
    rng.shuffle(options)
    return tuple(options)
