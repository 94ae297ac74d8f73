"""The in-process scoring backend: the frozen Hugging Face model's own forward passes (the default).

Every batched operation takes a list of variable-length token-id sequences and runs a single forward pass per
micro-batch (sorted by length to limit padding waste; one micro-batch holds up to the owner's
``max_batch_tokens`` padded tokens). Padding never changes a result: scores match one-by-one scoring to within
float rounding. Prompts that start with the owner's layout prefix (the chat header) reuse its keys and values,
computed once; several continuations of one prompt (:meth:`TransformersBackend.score_continuations`) reuse the
prompt's, and the log-probabilities of a span of the prompt (the context's surprisal) come from that same forward
(:meth:`TransformersBackend.score_continuations_and_spans`). The LM head runs on ``HEAD_CHUNK`` positions at a
time. Everything runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from envs.lm.backends import AnswerScores, PromptScores, check_continuations, check_pairs, check_spans
from envs.lm.prefix_cache import PrefixCache
from policies.features import micro_batches, pad_right

HEAD_CHUNK = 256
"""Answer positions that go through the LM head together (bounds the ``[positions, vocab]`` logits)."""


class TransformersBackend:
    """Scoring and greedy generation with the owner's in-process model.

    Args:
        owner: The :class:`~envs.lm.frozen_lm.FrozenLM` whose ``model``, ``pad_id``, ``max_batch_tokens``,
            ``layout`` and ``cache_prefix`` are read at every call (so changing them on the owner takes effect).
    """

    name = "transformers"
    remote = False

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.prefix = PrefixCache(owner)

    def describe(self) -> str:  # noqa: D102
        return f"in-process transformers ({type(self.owner.model).__name__}, spec {self.owner.spec})"

    @torch.inference_mode()
    def score_answers(
        self,
        prompts: Sequence[Sequence[int]],
        answers: Sequence[Sequence[int]],
        *,
        return_distributions: bool = False,
    ) -> AnswerScores:
        """Log-likelihood of each answer given its prompt, one forward pass per micro-batch.

        Sequences are right-padded: with causal attention a real position never attends to padding after it,
        so results match unpadded scoring. Only answer positions go through the LM head.

        Raises:
            ValueError: On mismatched lengths or an empty prompt or answer.
        """
        check_pairs(prompts, answers)
        lm = self.owner
        n = len(prompts)
        seqs = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
        total = torch.zeros(n, dtype=torch.float32)
        per_token: list[torch.Tensor] = [torch.empty(0)] * n
        match = torch.zeros(n, dtype=torch.bool)
        dists: list[torch.Tensor] | None = [torch.empty(0)] * n if return_distributions else None
        head = lm.model.get_output_embeddings()
        prefix = list(lm.layout.prefix) if lm.cache_prefix else []
        for batch in micro_batches([len(s) for s in seqs], lm.max_batch_tokens):
            # Prompts built by build_prompt share the layout's prefix: its keys and values are computed once
            # and reused, so only the rest runs through the model.
            shared = prefix and all(seqs[i][: len(prefix)] == prefix and len(prompts[i]) > len(prefix) for i in batch)
            p = len(prefix) if shared else 0
            ids, mask = self._pad([seqs[i][p:] for i in batch])
            hidden = self.prefix.forward(ids, mask, p)
            # Positions predicting answer token j sit at len(prompt) - 1 + j (minus the cached prefix).
            rows, cols, targets = [], [], []
            for r, i in enumerate(batch):
                lp, la = len(prompts[i]) - p, len(answers[i])
                rows += [r] * la
                cols += range(lp - 1, lp - 1 + la)
                targets += list(answers[i])
            h = hidden[torch.tensor(rows, device=ids.device), torch.tensor(cols, device=ids.device)]
            tgt = torch.tensor(targets, device=ids.device)
            # The LM head over the vocabulary is the largest tensor here: take it a slice of positions at a time.
            tok_lp, hit, full = [], [], []
            for s in range(0, len(targets), HEAD_CHUNK):
                logp = torch.log_softmax(head(h[s : s + HEAD_CHUNK]).float(), dim=-1)
                tok_lp.append(logp.gather(1, tgt[s : s + HEAD_CHUNK, None])[:, 0].cpu())
                hit.append((logp.argmax(-1) == tgt[s : s + HEAD_CHUNK]).cpu())
                if dists is not None:
                    full.append(logp.cpu())
            tok_lp_all, hit_all = torch.cat(tok_lp), torch.cat(hit)
            full_all = torch.cat(full) if dists is not None else None
            start = 0
            for i in batch:
                la = len(answers[i])
                per_token[i] = tok_lp_all[start : start + la]
                total[i] = per_token[i].sum()
                match[i] = bool(hit_all[start : start + la].all())
                if dists is not None:
                    dists[i] = full_all[start : start + la]
                start += la
        return AnswerScores(total, per_token, match, dists)

    def score_continuations(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Log-likelihood of several continuations of each prompt, running each prompt through the model once.

        Each prompt's keys and values are computed once and reused for all its continuations (choices, say),
        instead of one full forward per (prompt, continuation) pair; prompts that start with the layout prefix
        continue its cached keys and values. Results match :meth:`score_answers`.

        Args:
            prompts: B non-empty prompt token-id sequences.
            continuations: For each prompt, its non-empty continuations.

        Returns:
            Per prompt, ``(logprob [k], greedy [k])``: each continuation's summed log-probability, and whether
            greedy decoding from the prompt would emit it.

        Raises:
            ValueError: On mismatched lengths or an empty prompt or continuation.
        """
        check_continuations(prompts, continuations)
        res = self._score(prompts, continuations, [None] * len(prompts))
        return [(r.logprob, r.greedy) for r in res]

    def score_continuations_and_spans(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        spans: Sequence[slice | None],
    ) -> list[PromptScores]:
        """Continuations of each prompt, plus the log-probability of each prompt token in a span, in one pass.

        The span's log-probabilities come from the same forward as the prompt's keys and values: the hidden state
        at position ``j - 1`` goes through the LM head for each span token ``j``. With the context's span of a
        full prompt this is the context's surprisal given the layout prefix and the context before each token.

        Args:
            prompts: B non-empty prompt token-id sequences.
            continuations: For each prompt, its non-empty continuations (none is fine when it has a span).
            spans: For each prompt, the slice of it whose tokens to score (start >= 1), or None.

        Returns:
            Per prompt, its :class:`~envs.lm.backends.PromptScores`.

        Raises:
            ValueError: On mismatched lengths, an empty prompt or continuation, or a bad span.
        """
        return self._score(prompts, continuations, check_spans(prompts, continuations, spans))

    def reused_prefix(self, prompt: Sequence[int], span: tuple[int, int] | None = None) -> int:
        """How many leading tokens of ``prompt`` come from the cached layout prefix (:meth:`PrefixCache.reused`)."""
        return self.prefix.reused(prompt, span)

    @torch.inference_mode()
    def _score(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        bounds: Sequence[tuple[int, int] | None],
    ) -> list[PromptScores]:
        """The work of :meth:`score_continuations_and_spans` on checked input (spans as ``(start, end)``).

        Prompts that reuse the layout prefix and those that do not are micro-batched apart (a micro-batch either
        continues the cached prefix or starts from scratch), each group sorted by the length it computes. A prompt
        with exactly one continuation (the gold answer of a task without choices) is scored by teacher forcing:
        the continuation, but its last token, is fed in the prompt's own forward, as :meth:`score_answers` does.
        Several continuations of one prompt are fed after copies of its keys and values instead.
        """
        lm = self.owner
        out: list[PromptScores | None] = [None] * len(prompts)
        reused = [self.reused_prefix(p, b) for p, b in zip(prompts, bounds, strict=True)]
        fed = [len(p) + (len(cs[0]) - 1 if len(cs) == 1 else 0) for p, cs in zip(prompts, continuations, strict=True)]
        for p in sorted(set(reused), reverse=True):
            group = [i for i, r in enumerate(reused) if r == p]
            for mb in micro_batches([fed[i] - p for i in group], lm.max_batch_tokens):
                self._score_batch([group[j] for j in mb], prompts, continuations, bounds, p, out)
        return out  # type: ignore[return-value]

    def _score_batch(
        self,
        batch: list[int],
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        bounds: Sequence[tuple[int, int] | None],
        p: int,
        out: list[PromptScores | None],
    ) -> None:
        """Score one micro-batch whose prompts all continue the first ``p`` tokens' cached keys and values."""
        from transformers import DynamicCache

        lm = self.owner
        model = lm.model
        base, head = model.get_decoder(), model.get_output_embeddings()
        forced = [len(continuations[i]) == 1 for i in batch]  # teacher-forced in the prompt's forward
        seqs = [
            [*prompts[i][p:], *(continuations[i][0][:-1] if one else ())] for i, one in zip(batch, forced, strict=True)
        ]
        ids, mask = self._pad(seqs)
        b = len(batch)
        # Keys and values are kept only where continuations will be fed after copies of them.
        copies = any(
            not one and any(len(c) > 1 for c in continuations[i]) for i, one in zip(batch, forced, strict=True)
        )
        if p:
            cache = self.prefix.batch_cache(b)
            mask = torch.cat([torch.ones(b, p, dtype=mask.dtype, device=mask.device), mask], 1)
        else:
            cache = DynamicCache(config=model.config) if copies else None
        # hidden[r, t] is the state after prompt token t + p of row r: it predicts token t + p + 1.
        kwargs = {self.prefix.cache_arg: cache} if cache is not None else {}
        hidden = base(input_ids=ids, attention_mask=mask, use_cache=cache is not None, **kwargs).last_hidden_state
        spans = self._span_logprobs(batch, prompts, bounds, p, hidden, head)
        pairs = [(r, c) for r, i in enumerate(batch) for c in continuations[i]]
        lp = torch.zeros(len(pairs))
        greedy = torch.zeros(len(pairs), dtype=torch.bool)
        dev = ids.device
        lens = torch.tensor([len(prompts[i]) for i in batch], device=dev)
        # Teacher-forced continuations: token j is predicted at the prompt's last position + j.
        tf = [k for k, (r, _) in enumerate(pairs) if forced[r]]
        if tf:
            cont, cmask = self._pad([pairs[k][1] for k in tf])
            rows = torch.tensor([pairs[k][0] for k in tf], device=dev)
            cols = (lens[rows] - 1 - p)[:, None] + torch.arange(cont.shape[1], device=dev)[None, :]
            h = hidden[rows[:, None], cols.clamp(max=hidden.shape[1] - 1)]
            self._continuation_scores(h, cont, cmask, head, lp, greedy, tf)
        # Several continuations of a prompt: its cache is copied once per continuation, at most a micro-batch's
        # worth of tokens at once.
        rest_pairs = [k for k, (r, _) in enumerate(pairs) if not forced[r]]
        step = max(lm.max_batch_tokens // mask.shape[1], 1)
        for s in range(0, len(rest_pairs), step):
            part = rest_pairs[s : s + step]
            rows = torch.tensor([pairs[k][0] for k in part], device=dev)
            cont, cmask = self._pad([pairs[k][1] for k in part])
            states = [hidden[rows, lens[rows] - 1 - p][:, None, :]]  # first token: predicted at the prompt's end
            longest = cont.shape[1]
            if longest > 1:
                assert cache is not None  # kept above whenever a continuation is longer than one token
                kv = [(layer.keys[rows], layer.values[rows]) for layer in cache.layers]
                pair_cache = DynamicCache(kv, config=model.config)
                full_mask = torch.cat([mask[rows], cmask[:, :-1]], 1)
                pos = lens[rows][:, None] + torch.arange(longest - 1, device=dev)[None, :]
                rest = base(
                    input_ids=cont[:, :-1], attention_mask=full_mask, position_ids=pos, use_cache=True,
                    **{self.prefix.cache_arg: pair_cache},
                ).last_hidden_state  # fmt: skip
                states.append(rest)
            h = torch.cat(states, 1)  # [pairs, longest, d]: the state that predicts continuation token j
            self._continuation_scores(h, cont, cmask, head, lp, greedy, part)
        k = 0
        for i, span in zip(batch, spans, strict=True):
            n = len(continuations[i])
            out[i] = PromptScores(lp[k : k + n], greedy[k : k + n], span)
            k += n

    @staticmethod
    def _continuation_scores(
        h: torch.Tensor,
        cont: torch.Tensor,
        cmask: torch.Tensor,
        head: torch.nn.Module,
        lp: torch.Tensor,
        greedy: torch.Tensor,
        where: list[int],
    ) -> None:
        """Summed log-probability and greedy match of continuations, written into ``lp[where]``, ``greedy[where]``.

        Args:
            h: ``[n, L, d]`` the states that predict each continuation token.
            cont: ``[n, L]`` the continuations, right-padded; ``cmask`` marks their tokens.
            cmask: ``[n, L]``.
            head: The LM head (run on ``HEAD_CHUNK`` continuations at a time).
            lp: Output, float.
            greedy: Output, bool.
            where: The n indices to write.
        """
        idx = torch.tensor(where)
        for c in range(0, len(where), HEAD_CHUNK):
            logp = torch.log_softmax(head(h[c : c + HEAD_CHUNK]).float(), dim=-1)
            tgt = cont[c : c + HEAD_CHUNK]
            tok = logp.gather(2, tgt[..., None])[..., 0]
            ok = logp.argmax(-1) == tgt
            valid = cmask[c : c + HEAD_CHUNK].bool()
            lp[idx[c : c + HEAD_CHUNK]] = (tok * valid).sum(1).cpu()
            greedy[idx[c : c + HEAD_CHUNK]] = (ok | ~valid).all(1).cpu()

    def _span_logprobs(
        self,
        batch: list[int],
        prompts: Sequence[Sequence[int]],
        bounds: Sequence[tuple[int, int] | None],
        p: int,
        hidden: torch.Tensor,
        head: torch.nn.Module,
    ) -> list[torch.Tensor | None]:
        """Per row, log p(prompt[j] | prompt[:j]) for j in its span (None without one), the LM head in slices."""
        rows, cols, targets = [], [], []
        for r, i in enumerate(batch):
            if bounds[i] is not None:
                start, end = bounds[i]
                rows += [r] * (end - start)
                cols += range(start - 1 - p, end - 1 - p)
                targets += prompts[i][start:end]
        if not targets:
            return [None] * len(batch)
        dev = hidden.device
        if p:  # the state before the first token after the prefix is the prefix's own last one (cached)
            last = self.prefix.last_state().to(hidden.dtype).expand(hidden.shape[0], 1, -1)
            hidden = torch.cat([last, hidden], 1)
            cols = [c + 1 for c in cols]
        h = hidden[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]
        tgt = torch.tensor(targets, device=dev)
        parts = []
        for s in range(0, len(targets), HEAD_CHUNK):
            logp = torch.log_softmax(head(h[s : s + HEAD_CHUNK]).float(), dim=-1)
            parts.append(logp.gather(1, tgt[s : s + HEAD_CHUNK, None])[:, 0].cpu())
        got = torch.cat(parts)
        out: list[torch.Tensor | None] = []
        k = 0
        for i in batch:
            if bounds[i] is None:
                out.append(None)
                continue
            n = bounds[i][1] - bounds[i][0]
            out.append(got[k : k + n])
            k += n
        return out

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and mask ``[B, W]`` on the owner's device."""
        ids, mask = pad_right(seqs, self.owner.pad_id)
        return ids.to(self.owner.device), mask.to(self.owner.device)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 8) -> list[list[int]]:
        """Greedy generation for a batch of prompts (left-padded, one ``generate`` call per micro-batch).

        Args:
            prompts: B prompt token-id sequences.
            max_new_tokens: Tokens to generate at most; generation stops early at EOS.

        Returns:
            B lists of generated token ids (EOS and what follows removed).
        """
        lm = self.owner
        out: list[list[int]] = [[] for _ in prompts]
        eos = lm.model.generation_config.eos_token_id
        eos_set = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        for batch in micro_batches([len(p) + max_new_tokens for p in prompts], lm.max_batch_tokens):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(batch):
                p = list(prompts[i])
                ids[r, width - len(p) :] = torch.as_tensor(p)
                mask[r, width - len(p) :] = 1
            gen = lm.model.generate(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=lm.pad_id,
                eos_token_id=list(eos_set) or None,
            )[:, width:].cpu()
            for r, i in enumerate(batch):
                toks: list[int] = []
                for t in gen[r].tolist():
                    if t in eos_set:
                        break
                    toks.append(t)
                out[i] = toks
        return out
