"""The vLLM scoring backend: a vLLM server reached over its OpenAI-compatible HTTP API.

Every request carries token ids, never text, so the server scores exactly the prompts the environment built.

Details: ``docs/internals.md``, section ``envs.lm.vllm_backend``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from envs.lm.backends import (
    AnswerScores,
    BackendError,
    PromptScores,
    RemoteSpec,
    check_continuations,
    check_pairs,
    check_spans,
)
from envs.lm.http_client import JsonHttpClient, request_chunks

PROBE_TEXT = "tokenkeep probe: The pass key is 48213.\n\tÜber 東京 café – naïve 🙂 x = [1, 2]; <b>ok</b>"
"""Text tokenised by the server and locally to compare tokenizers (the prompt layout's text is appended)."""


class VLLMBackend(JsonHttpClient):
    """Scoring and greedy generation by a vLLM server, over HTTP.

    Args:
        url: Base URL of the server, e.g. ``http://127.0.0.1:8000``.
        tokenizer: The local tokenizer (the feature model's); the server's must tokenise the same way.
        model: Served model name to expect (None: the server's only model).
        vocab_size: Width of returned distributions (the local model's vocabulary).
        eos_ids: Token ids that end a generation.
        max_in_flight: Requests in flight at once, at most.
        request_tokens: Tokens per request, at most.
        timeout: Seconds to wait for one response.
        retries: Extra tries of an idempotent request.
        dist_top_k: Log-probabilities per answer position for distributions (-1: the whole vocabulary).
        backoff: First retry delay in seconds (doubles every try).
    """

    name = "vllm"
    remote = True
    server_kind = "vLLM server"
    start_hint = (
        "start one with `python -m vllm.entrypoints.launchers.api_server.entry --model DIR --port PORT` "
        "(docs/scaling.md), or check the URL"
    )

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        *,
        model: str | None = None,
        vocab_size: int | None = None,
        eos_ids: Sequence[int] = (),
        max_in_flight: int = 8,
        request_tokens: int = 8192,
        timeout: float = 120.0,
        retries: int = 3,
        dist_top_k: int = -1,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(url, max_in_flight=max_in_flight, timeout=timeout, retries=retries, backoff=backoff)
        self.tokenizer = tokenizer
        self.model = model
        self.vocab_size = int(vocab_size or len(tokenizer))
        eos = {tokenizer.eos_token_id, *eos_ids} - {None}
        self.eos_ids = frozenset(int(t) for t in eos)
        self.request_tokens = request_tokens
        self.dist_top_k = dist_top_k
        self.max_model_len: int | None = None

    @classmethod
    def connect(
        cls, spec: RemoteSpec, tokenizer: Any, *, vocab_size: int, eos_ids: Sequence[int] = (), probe: Any = None
    ) -> VLLMBackend:
        """A backend for a parsed remote spec, after checking the server (see :meth:`check`).

        Args:
            spec: The remote spec.
            tokenizer: The local tokenizer.
            vocab_size: The local model's vocabulary size.
            eos_ids: Token ids that end a generation (besides the tokenizer's EOS).
            probe: A :class:`~envs.lm.frozen_lm.PromptLayout` whose text joins the tokenizer probe.

        Raises:
            BackendError: If the server is down, serves another model or uses another tokenizer.
        """
        backend = cls(
            spec.url,
            tokenizer,
            model=spec.model,
            vocab_size=vocab_size,
            eos_ids=eos_ids,
            max_in_flight=spec.max_in_flight,
            request_tokens=spec.request_tokens,
            timeout=spec.timeout,
            retries=spec.retries,
        )
        extra = "" if probe is None else tokenizer.decode([*probe.prefix, *probe.middle, *probe.suffix])
        backend.check(PROBE_TEXT + extra)
        return backend

    def describe(self) -> str:  # noqa: D102
        return f"vLLM server {self.url} serving {self.model!r}"

    # ------------------------------------------------------------------ checks
    def check(self, probe_text: str = PROBE_TEXT) -> None:
        """Check that the server is up, serves the expected model, and tokenises like the local tokenizer.

        Raises:
            BackendError: Naming the server and what differs.
        """
        listed = self._request("GET", "/v1/models")
        cards = {c["id"]: c for c in listed.get("data", [])}
        if self.model is None:
            if len(cards) != 1:
                raise BackendError(
                    f"the vLLM server at {self.url} serves {sorted(cards)}; name one with ?model=NAME in the spec"
                )
            self.model = next(iter(cards))
        elif self.model not in cards:
            raise BackendError(
                f"the vLLM server at {self.url} serves {sorted(cards)}, not {self.model!r}: wrong server or model"
            )
        self.max_model_len = cards[self.model].get("max_model_len")
        local, served = self._fingerprints(probe_text)
        if local != served:
            raise BackendError(
                f"the vLLM server at {self.url} serves {self.model!r} with another tokenizer than the local feature "
                f"model's (tokenizer fingerprint {served[:12]}… vs {local[:12]}…): serve the model the reducer is "
                "trained for, or pick a features= model that shares its tokenizer"
            )

    def _fingerprints(self, probe_text: str) -> tuple[str, str]:
        """``(local, served)`` fingerprints: ids of the probe text and the text of a spread of ids, hashed."""
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        step = max(1, len(tok) // 256)
        ids = [i for i in range(0, len(tok), step) if i not in special]
        local_ids = list(tok(probe_text, add_special_tokens=False)["input_ids"])
        served_ids = self._request(
            "POST", "/tokenize", {"model": self.model, "prompt": probe_text, "add_special_tokens": False}
        )["tokens"]
        served_text = self._request("POST", "/detokenize", {"model": self.model, "tokens": ids})["prompt"]
        return _digest(local_ids, tok.decode(ids)), _digest(served_ids, served_text)

    # ------------------------------------------------------------------ scoring
    def _chunks(self, lengths: Sequence[int]) -> list[list[int]]:
        return request_chunks(lengths, self.max_in_flight, self.request_tokens)

    def score_answers(
        self,
        prompts: Sequence[Sequence[int]],
        answers: Sequence[Sequence[int]],
        *,
        return_distributions: bool = False,
    ) -> AnswerScores:
        """Log-likelihood of each answer given its prompt, from the server's prompt log-probabilities.

        Raises:
            ValueError: On mismatched lengths or an empty prompt or answer.
            BackendError: When the server cannot answer.
        """
        check_pairs(prompts, answers)
        if not prompts:
            empty = [] if return_distributions else None
            return AnswerScores(torch.zeros(0), [], torch.zeros(0, dtype=torch.bool), empty)
        seqs = [[int(t) for t in p] + [int(t) for t in a] for p, a in zip(prompts, answers, strict=True)]
        found = self._prompt_logprobs(seqs, [(len(p), len(s)) for p, s in zip(prompts, seqs, strict=True)])
        per_token = [lp for lp, _ in found]
        match = torch.tensor([bool(hit.all()) for _, hit in found], dtype=torch.bool)
        total = torch.stack([t.sum() for t in per_token])
        dists = self._distributions(prompts, answers) if return_distributions else None
        return AnswerScores(total, per_token, match, dists)

    def score_continuations(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Log-likelihood of several continuations of each prompt: every (prompt, continuation) pair in one call.

        The in-process backend runs a prompt once and scores its continuations from its KV cache. vLLM cannot share
        a KV cache between requests that ask for prompt log-probabilities (it skips its prefix cache for them, vLLM
        PR #17251), so here each pair ``prompt + continuation`` is a sequence of its own: the prompt is recomputed
        once per continuation. All pairs go out in one :meth:`score_answers` call (batched, concurrent requests),
        and the numbers are the same as scoring the pairs one by one.

        Returns:
            Per prompt, ``(logprob [k], greedy [k])``: each continuation's summed log-probability, and whether
            greedy decoding from the prompt would emit it.

        Raises:
            ValueError: On mismatched lengths or an empty prompt or continuation.
            BackendError: When the server cannot answer.
        """
        check_continuations(prompts, continuations)
        pair_p = [p for p, cs in zip(prompts, continuations, strict=True) for _ in cs]
        pair_c = [c for cs in continuations for c in cs]
        res = self.score_answers(pair_p, pair_c)
        out, k = [], 0
        for cs in continuations:
            out.append((res.logprob[k : k + len(cs)], res.greedy_match[k : k + len(cs)]))
            k += len(cs)
        return out

    def score_continuations_and_spans(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        spans: Sequence[slice | None],
    ) -> list[PromptScores]:
        """Continuations of each prompt plus the log-probabilities of a span of it, from prompt log-probabilities.

        As :meth:`score_continuations`, every (prompt, continuation) pair is a sequence of its own; a span's tokens
        are read off the prompt log-probabilities of the prompt's first pair (they cover every prompt position),
        or, for a prompt without continuations, of the prompt cut after its span. Everything goes out in one
        batched call; the numbers equal the in-process backend's.

        Raises:
            ValueError: On mismatched lengths, an empty prompt or continuation, or a bad span.
            BackendError: When the server cannot answer.
        """
        bounds = check_spans(prompts, continuations, spans)
        seqs: list[list[int]] = []
        wanted: list[list[tuple[int, int]]] = []  # per sequence: (start, end) position ranges to read
        owner: list[tuple[int, int | None, bool]] = []  # per sequence: (prompt, continuation or None, has span)
        for i, (p, cs, b) in enumerate(zip(prompts, continuations, bounds, strict=True)):
            ids = [int(t) for t in p]
            if not cs:
                seqs.append(ids[: b[1]])
                wanted.append([b])
                owner.append((i, None, True))
            for k, c in enumerate(cs):
                seqs.append(ids + [int(t) for t in c])
                ranges = [(len(ids), len(ids) + len(c))]
                if k == 0 and b is not None:
                    ranges.append(b)
                wanted.append(ranges)
                owner.append((i, k, k == 0 and b is not None))
        flat = [(seq, [j for a, e in rs for j in range(a, e)]) for seq, rs in zip(seqs, wanted, strict=True)]
        found = self._prompt_logprobs([f[0] for f in flat], [f[1] for f in flat])
        lps: list[list[float]] = [[0.0] * len(cs) for cs in continuations]
        hits: list[list[bool]] = [[False] * len(cs) for cs in continuations]
        span_lp: list[torch.Tensor | None] = [None] * len(prompts)
        for (i, k, has_span), (lp, hit) in zip(owner, found, strict=True):
            if k is not None:
                n = len(continuations[i][k])
                lps[i][k] = float(lp[:n].sum())
                hits[i][k] = bool(hit[:n].all())
                lp = lp[n:]
            if has_span:
                span_lp[i] = lp
        return [
            PromptScores(torch.tensor(lp, dtype=torch.float32), torch.tensor(h, dtype=torch.bool), sp)
            for lp, h, sp in zip(lps, hits, span_lp, strict=True)
        ]

    def _prompt_logprobs(
        self, seqs: Sequence[Sequence[int]], positions: Sequence[tuple[int, int] | Sequence[int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Log-probability of each sequence's tokens at the given positions, and whether each is the argmax.

        Args:
            seqs: Token-id sequences, sent as prompts (``max_tokens: 1``, ``prompt_logprobs: 0``).
            positions: Per sequence, a ``(start, end)`` range or a list of positions (each >= 1).

        Returns:
            Per sequence, ``(logprob [n], rank_is_1 [n])`` float32 and bool, in the order of its positions.

        Raises:
            BackendError: When the server cannot answer or returns no ranks.
        """
        chunks = self._chunks([len(s) for s in seqs])
        base = {"model": self.model, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        responses = self._post_all("/v1/completions", [base | {"prompt": [list(seqs[i]) for i in c]} for c in chunks])
        out: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.empty(0), torch.empty(0))] * len(seqs)
        for chunk, resp in zip(chunks, responses, strict=True):
            for choice in resp["choices"]:
                i = chunk[choice["index"]]
                plp = choice["prompt_logprobs"]
                pos = positions[i]
                where = range(*pos) if isinstance(pos, tuple) else pos
                lps, hit = [], []
                for j in where:
                    mine = plp[j][str(int(seqs[i][j]))]
                    if mine.get("rank") is None:
                        raise BackendError(
                            f"the vLLM server at {self.url} returned prompt log-probabilities without ranks"
                        )
                    lps.append(float(mine["logprob"]))
                    hit.append(mine["rank"] == 1)
                out[i] = (torch.tensor(lps, dtype=torch.float32), torch.tensor(hit, dtype=torch.bool))
        return out

    def _distributions(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """``[n_answer, vocab]`` log-distributions at each pair's answer positions (one request per position)."""
        rows = [
            (i, [int(t) for t in prompts[i]] + [int(t) for t in answers[i][:j]])
            for i in range(len(prompts))
            for j in range(len(answers[i]))
        ]
        chunks = self._chunks([len(r) for _, r in rows])
        base = {
            "model": self.model,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.dist_top_k,
            "return_tokens_as_token_ids": True,
        }
        responses = self._post_all("/v1/completions", [base | {"prompt": [rows[r][1] for r in c]} for c in chunks])
        found: list[dict[int, float]] = [{} for _ in rows]
        for chunk, resp in zip(chunks, responses, strict=True):
            for choice in resp["choices"]:
                top = choice["logprobs"]["top_logprobs"][0]
                found[chunk[choice["index"]]] = {int(k.rsplit(":", 1)[1]): float(v) for k, v in top.items()}
        width = max([self.vocab_size] + [max(f) + 1 for f in found if f])
        out: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(prompts))}
        for (i, _), f in zip(rows, found, strict=True):
            ids = torch.tensor(list(f), dtype=torch.long)
            lps = torch.tensor(list(f.values()), dtype=torch.float32)
            rest = max(1.0 - float(lps.exp().sum()), 1e-12)
            fill = math.log(rest / (width - len(f))) if width > len(f) else -math.inf
            row = torch.full((width,), fill, dtype=torch.float32)
            row[ids] = lps
            out[i].append(row)
        return [torch.stack(out[i]) for i in range(len(prompts))]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 8) -> list[list[int]]:
        """Greedy continuations (sent once: generation is not retried).

        Raises:
            BackendError: When the server cannot answer.
        """
        if not prompts:
            return []
        seqs = [[int(t) for t in p] for p in prompts]
        chunks = self._chunks([len(s) for s in seqs])
        base = {"model": self.model, "max_tokens": max_new_tokens, "temperature": 0.0, "return_token_ids": True}
        payloads = [base | {"prompt": [seqs[i] for i in c]} for c in chunks]
        responses = self._post_all("/v1/completions", payloads, idempotent=False)
        out: list[list[int]] = [[] for _ in prompts]
        for chunk, resp in zip(chunks, responses, strict=True):
            for choice in resp["choices"]:
                toks: list[int] = []
                for t in choice.get("token_ids") or []:
                    if t in self.eos_ids:
                        break
                    toks.append(int(t))
                out[chunk[choice["index"]]] = toks
        return out


def _digest(ids: Sequence[int], text: str) -> str:
    return hashlib.sha256(json.dumps([list(map(int, ids)), text], ensure_ascii=False).encode()).hexdigest()
