"""Report metrics of the evaluator (:mod:`agents.evaluate`): bootstrap intervals, readability, headline metric."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from envs.tasks.specs import LOGLIK_FAMILIES

READABLE_RUN = 5
"""Kept words in runs of at least this many consecutive words of the original text count as readable."""


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def readability(text: str, offsets: Sequence[tuple[int, int]], keep: np.ndarray, run: int = READABLE_RUN) -> float:
    """Share of the kept words that sit in readable runs: ``run`` or more consecutive words, or whole sentences.

    A whole sentence is a run from a sentence's first word to a word ending in ``. ! ?`` ("Tom has a hat."
    reads as text although it has four words).

    Words are whitespace-separated; a word counts as kept when at least half of its tokens are. NaN when no
    word is kept.
    """
    found = list(re.finditer(r"\S+", text))
    if not found or not len(offsets):
        return float("nan")
    starts = [m.start() for m in found]
    word = np.searchsorted(np.asarray(starts), [max(s, e - 1) for s, e in offsets], side="right") - 1
    word = np.clip(word, 0, len(starts) - 1)
    kept_tokens = np.bincount(word, weights=np.asarray(keep, float), minlength=len(starts))
    kept = kept_tokens / np.maximum(np.bincount(word, minlength=len(starts)), 1) >= 0.5
    kept &= np.bincount(word, minlength=len(starts)) > 0
    if not kept.any():
        return float("nan")
    ends_sentence = np.asarray([bool(re.search(r"[.!?][\"')\]]*$", m.group())) for m in found])
    edges = np.diff(np.r_[0, kept.astype(np.int8), 0])
    first, last = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    lengths = last - first + 1
    whole = ends_sentence[last] & ((first == 0) | ends_sentence[np.maximum(first - 1, 0)])
    return float(lengths[(lengths >= run) | whole].sum() / lengths.sum())


def headline_metric(task: str, has_choices: bool) -> str:
    """The report's headline metric of a task: ``choice_acc``, ``loglik`` or ``em``.

    Calibrated choice accuracy where the task has choices; the answer's log-likelihood on the real-text families
    (their extractive answers are long: exact match says little); exact match otherwise.
    """
    if has_choices:
        return "choice_acc"
    family = task.partition(":")[0]
    return "loglik" if family in LOGLIK_FAMILIES else "em"


def task_metric(row: dict[str, Any]) -> float:
    """The headline score of a report row: its ``metric`` (:func:`headline_metric`)."""
    metric = row.get("metric") or ("choice_acc" if row["choice_acc"] is not None else "em")
    return row[metric]
