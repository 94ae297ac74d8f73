"""The scoring-backend interface behind :class:`~envs.lm.frozen_lm.FrozenLM`, and remote model specs.

Two backends implement it: :class:`envs.lm.hf_backend.TransformersBackend` (in-process, the default) and
:class:`envs.lm.vllm_backend.VLLMBackend` (a vLLM server reached over its OpenAI-compatible HTTP API). Either way
the policy's features are computed locally, by ``FrozenLM.model``.

Details: ``docs/internals.md``, section ``envs.lm.backends``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

import torch

from envs.lm.model_cache import DEFAULT_MODEL_SPEC

REMOTE_BACKENDS: dict[str, str | type] = {"vllm": "envs.lm.vllm_backend:VLLMBackend"}
"""Remote backends by the name that opens their specs (``NAME+http://...``): a class, or ``"module:class"``
imported when a spec connects (a backend's module may need packages the others do not). The class has
``connect(spec, tokenizer, *, vocab_size, eos_ids, probe)`` (:meth:`envs.lm.vllm_backend.VLLMBackend.connect`) and
implements :class:`ScoringBackend`: a new backend is its module and one line here (``docs/extending.md``)."""


@dataclass
class AnswerScores:
    """Result of :meth:`ScoringBackend.score_answers` for a batch of B (prompt, answer) pairs.

    Attributes:
        logprob: ``[B]`` summed log p(answer | prompt).
        token_logprobs: B tensors ``[n_answer_i]``, per answer token.
        greedy_match: ``[B]`` bool, True where greedy decoding from the prompt would emit the answer
            tokens first (teacher forcing: every answer token is the argmax given the ones before it).
        answer_logprobs_full: B tensors ``[n_answer_i, vocab]`` of log-distributions at the answer
            positions, only when requested (for KL scores).
    """

    logprob: torch.Tensor
    token_logprobs: list[torch.Tensor]
    greedy_match: torch.Tensor
    answer_logprobs_full: list[torch.Tensor] | None = None


@dataclass
class PromptScores:
    """Result of :meth:`ScoringBackend.score_continuations_and_spans` for one prompt.

    Attributes:
        logprob: ``[k]`` summed log-probability of each of the prompt's k continuations (k may be 0).
        greedy: ``[k]`` bool, True where greedy decoding from the prompt would emit that continuation.
        span_logprobs: ``[end - start]`` log p(prompt[j] | prompt[:j]) for j in the requested span, or None when
            no span was asked for.
    """

    logprob: torch.Tensor
    greedy: torch.Tensor
    span_logprobs: torch.Tensor | None = None


class BackendError(RuntimeError):
    """The scoring backend cannot answer: server down, wrong model or tokenizer, or a refused request."""


@runtime_checkable
class ScoringBackend(Protocol):
    """What :class:`~envs.lm.frozen_lm.FrozenLM` delegates scoring and generation to.

    Attributes:
        name: ``transformers`` or ``vllm``.
        remote: Whether the scored model lives outside this process.
    """

    name: str
    remote: bool

    def score_answers(
        self,
        prompts: Sequence[Sequence[int]],
        answers: Sequence[Sequence[int]],
        *,
        return_distributions: bool = False,
    ) -> AnswerScores:
        """Log-likelihood (and greedy match, optionally distributions) of each answer given its prompt."""
        ...

    def score_continuations(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per prompt, ``(logprob [k], greedy [k])`` of each of its k continuations (as ``score_answers``)."""
        ...

    def score_continuations_and_spans(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        spans: Sequence[slice | None],
    ) -> list[PromptScores]:
        """Per prompt, its continuations' scores and the log-probabilities of the prompt tokens in its span."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 8) -> list[list[int]]:
        """Greedy continuations of each prompt, EOS and what follows removed."""
        ...

    def describe(self) -> str:
        """One line naming the backend and the model it scores with."""
        ...


def check_pairs(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> None:
    """Validate a ``score_answers`` batch.

    Raises:
        ValueError: On mismatched lengths or an empty prompt or answer.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        if len(p) == 0 or len(a) == 0:
            raise ValueError(f"pair {i}: prompt and answer must both be non-empty")


def check_continuations(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]) -> None:
    """Validate a ``score_continuations`` batch.

    Raises:
        ValueError: On mismatched lengths or an empty prompt or continuation.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuation lists")
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for cs in continuations for c in cs):
        raise ValueError("prompts and continuations must be non-empty")


def check_spans(
    prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]], spans: Sequence[slice | None]
) -> list[tuple[int, int] | None]:
    """Validate a ``score_continuations_and_spans`` batch; returns each span as ``(start, end)`` or None.

    A prompt may have no continuations when it has a span. A span must lie inside its prompt, be non-empty and
    start at 1 or later (the first token of a sequence has no prediction); its step must be 1 or None.

    Raises:
        ValueError: On mismatched lengths, an empty prompt or continuation, a bad span, or a prompt with neither
            continuations nor a span.
    """
    if not len(prompts) == len(continuations) == len(spans):
        raise ValueError(f"got {len(prompts)} prompts, {len(continuations)} continuation lists and {len(spans)} spans")
    out: list[tuple[int, int] | None] = []
    for i, (p, cs, s) in enumerate(zip(prompts, continuations, spans, strict=True)):
        if len(p) == 0 or any(len(c) == 0 for c in cs):
            raise ValueError("prompts and continuations must be non-empty")
        if s is None:
            if not cs:
                raise ValueError(f"prompt {i} has neither continuations nor a span to score")
            out.append(None)
            continue
        start, end, step = s.indices(len(p))
        if step != 1 or not 1 <= start < end or s.stop is None or s.stop > len(p):
            raise ValueError(f"prompt {i}: span {s} must be non-empty, start >= 1 and end <= {len(p)} (the prompt)")
        out.append((start, end))
    return out


def is_remote_spec(spec: str) -> bool:
    """Whether a model spec names a served model (``vllm+http://...``, or another of :data:`REMOTE_BACKENDS`)."""
    name, plus, transport = spec.split("://", 1)[0].partition("+")
    return bool(plus) and name in REMOTE_BACKENDS and transport in ("http", "https")


def remote_backend(name: str) -> type:
    """The class of the remote backend ``name`` (:data:`REMOTE_BACKENDS`), imported now if need be."""
    entry = REMOTE_BACKENDS[name]
    if isinstance(entry, type):
        return entry
    module, _, cls = entry.partition(":")
    return getattr(importlib.import_module(module), cls)


@dataclass(frozen=True)
class RemoteSpec:
    """A parsed remote model spec (``docs/internals.md``, ``envs.lm.backends``).

    Attributes:
        url: The server's base URL, e.g. ``http://127.0.0.1:8000`` (no ``/v1``).
        backend: The backend that serves it (a key of :data:`REMOTE_BACKENDS`).
        model: Served model name to expect; None accepts the server's only model.
        features: Local model spec for the policy's features and the tokenizer.
        feature_layers: Load only the first K blocks of the feature model (None: all).
        max_in_flight: Requests in flight at once, at most.
        request_tokens: Prompt tokens per request, at most (a larger batch is split into several requests).
        timeout: Seconds to wait for one response.
        retries: Extra tries of an idempotent request after a connection error, a time-out or a 5xx/429.
    """

    url: str
    backend: str = "vllm"
    model: str | None = None
    features: str = DEFAULT_MODEL_SPEC
    feature_layers: int | None = None
    max_in_flight: int = 8
    request_tokens: int = 8192
    timeout: float = 120.0
    retries: int = 3

    @classmethod
    def parse(cls, spec: str) -> RemoteSpec:
        """Parse ``vllm+http://HOST:PORT[?key=value&...]``.

        Raises:
            ValueError: On another scheme, a missing host, an unknown option or a bad value.
        """
        if not is_remote_spec(spec):
            raise ValueError(f"not a remote model spec: {spec!r} (expected vllm+http://HOST:PORT)")
        parts = urlsplit(spec)
        if not parts.hostname:
            raise ValueError(f"remote model spec {spec!r} has no host")
        backend, _, transport = parts.scheme.partition("+")
        url = f"{transport}://{parts.netloc}{parts.path.rstrip('/').removesuffix('/v1')}"
        known = {f.name: f for f in fields(cls) if f.name not in ("url", "backend")}
        kwargs: dict[str, object] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in known:
                raise ValueError(f"remote model spec: unknown option {key!r}; choose from {sorted(known)}")
            kind = {"feature_layers": int, "max_in_flight": int, "request_tokens": int, "retries": int}.get(key)
            kind = float if key == "timeout" else kind
            try:
                kwargs[key] = kind(value) if kind else value
            except ValueError as err:
                raise ValueError(f"remote model spec: option {key}={value!r} is not a number") from err
        out = cls(url=url, backend=backend, **kwargs)  # type: ignore[arg-type]
        if out.max_in_flight < 1 or out.request_tokens < 1 or out.retries < 0 or out.timeout <= 0:
            raise ValueError("remote model spec: max_in_flight, request_tokens, timeout must be > 0, retries >= 0")
        if out.feature_layers is not None and out.feature_layers < 0:
            raise ValueError("remote model spec: feature_layers must be >= 0")
        return out
