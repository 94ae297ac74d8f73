"""A frozen Hugging Face causal LM with the batched scoring operations the environment needs.

Contract:
    * The wrapped model is frozen: eval mode, ``requires_grad=False`` on every parameter, and every public
      operation runs under ``torch.inference_mode()``. Nothing here ever trains it.
    * Every batched operation takes a list of variable-length token-id sequences and runs a single forward
      pass per micro-batch (sorted by length to limit padding waste; by default one micro-batch holds up to
      ``max_batch_tokens`` padded tokens). Padding never changes a result: scores match one-by-one scoring
      to within float rounding.
    * Prompts are assembled at the token level as ``prefix + context + suffix`` (see :class:`PromptLayout`),
      so the reducible context is always an exact token span inside the (optionally chat-wrapped) prompt.

Loading from specs (``smollm2-135m``, ``tiny-random``, ``.gguf`` paths, directories, hub ids) and the GGUF
conversion cache live in :mod:`envs.model_cache`; policy features in :mod:`policies.features`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from envs.model_cache import DEFAULT_MODEL_SPEC, load_model, tiny_random_model
from policies.features import FeatureModule, micro_batches, pad_right
from policies.processor import pad_token_id

HEAD_CHUNK = 256
"""Answer positions that go through the LM head together (bounds the ``[positions, vocab]`` logits)."""

INSTRUCTION = "Read the text and answer the question with a short answer."


@dataclass(frozen=True)
class PromptLayout:
    """Token-level prompt template: ``prefix + context + middle + question + suffix + answer_prefix``.

    Attributes:
        prefix: Token ids before the context (chat header and instruction).
        middle: Token ids between the context and the question.
        suffix: Token ids after the question (chat footer and generation prompt).
    """

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]

    def build(
        self, context: Sequence[int], question: Sequence[int], answer_prefix: Sequence[int] = ()
    ) -> tuple[list[int], slice]:
        """Assemble a prompt.

        Args:
            context: Context token ids (possibly reduced).
            question: Question token ids.
            answer_prefix: Token ids that start the model's turn (e.g. "The pass key is").

        Returns:
            The prompt ids and the slice of the context inside them.
        """
        ids = [*self.prefix, *context, *self.middle, *question, *self.suffix, *answer_prefix]
        start = len(self.prefix)
        return ids, slice(start, start + len(context))


@dataclass
class AnswerScores:
    """Result of :meth:`FrozenLM.score_answers` for a batch of B (prompt, answer) pairs.

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


class FrozenLM:
    """A frozen causal LM plus tokenizer with batched, padding-invariant scoring.

    Args:
        model: A Hugging Face ``*ForCausalLM`` model. It is put in eval mode and frozen.
        tokenizer: Its tokenizer. Its settings are never changed.
        spec: The spec the model was loaded from (recorded in exported reducers).
        use_chat_template: Wrap prompts in the tokenizer's chat template when it has one.
        max_batch_tokens: Padded-token budget of one forward micro-batch.
        file_hash: Hash of the weights file the model came from, when known.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        spec: str = "custom",
        *,
        use_chat_template: bool = True,
        max_batch_tokens: int = 16384,
        file_hash: str | None = None,
    ) -> None:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.file_hash = file_hash
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = pad_token_id(tokenizer)
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.layout = self._make_layout()
        self._feature_modules: dict[tuple[int, int], FeatureModule] = {}
        self.cache_prefix = True
        self._prefix_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        spec: str = DEFAULT_MODEL_SPEC,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        trust_remote_code: bool = False,
        use_chat_template: bool = True,
        max_batch_tokens: int = 16384,
    ) -> FrozenLM:
        """Load a frozen model from a spec (see :mod:`envs.model_cache`).

        Args:
            spec: ``smollm2-135m``, ``tiny-random``, a ``.gguf`` path, a local directory or a hub id.
            dtype: ``float32``, ``bfloat16`` or ``float16``.
            device: Torch device string.
            trust_remote_code: Passed to ``from_pretrained``; off unless asked for.
            use_chat_template: Wrap prompts in the chat template when the tokenizer has one.
            max_batch_tokens: Padded-token budget of one forward micro-batch.

        Raises:
            ValueError: On an unknown dtype.
            FileNotFoundError: If a GGUF path or embedded package is missing.
        """
        m = load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        return cls(
            m.model,
            m.tokenizer,
            m.spec,
            use_chat_template=use_chat_template,
            max_batch_tokens=max_batch_tokens,
            file_hash=m.file_hash,
        )

    @classmethod
    def tiny_random(cls, seed: int = 0, max_batch_tokens: int = 16384) -> FrozenLM:
        """A 2-layer, width-64 random Llama over the default tokenizer (spec ``tiny-random``), for smoke runs."""
        m = tiny_random_model(seed)
        return cls(m.model, m.tokenizer, m.spec, max_batch_tokens=max_batch_tokens)

    # ------------------------------------------------------------------ basic properties
    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        """Width of the model's hidden states (= per-token feature size)."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return int(self.model.config.num_hidden_layers)

    @property
    def vocab_size(self) -> int:
        """Size of the output vocabulary."""
        return int(self.model.config.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------------ prompt layout
    def _make_layout(self) -> PromptLayout:
        ctx_slot, q_slot = "\x00CTX\x00", "\x00Q\x00"
        user = f"{INSTRUCTION}\n\nText:\n{ctx_slot}\n\nQuestion:{q_slot}"
        if self.use_chat_template:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        else:
            rendered = f"{user}\nAnswer: "
        head, rest = rendered.split(ctx_slot)
        middle, tail = rest.split(q_slot)

        # Special tokens in the chat template (e.g. <|im_start|>) are real tokens here, so encode with
        # special-token parsing on but no automatic BOS: the template decides.
        def enc(s: str) -> tuple[int, ...]:
            return tuple(self.tokenizer(s, add_special_tokens=False)["input_ids"])

        prefix = enc(head)
        bos = self.tokenizer.bos_token_id
        if not self.use_chat_template and bos is not None and getattr(self.tokenizer, "add_bos_token", False):
            prefix = (bos, *prefix)
        return PromptLayout(prefix=prefix, middle=enc(middle), suffix=enc(tail))

    def build_prompt(
        self, context_ids: Sequence[int], question_ids: Sequence[int], answer_prefix_ids: Sequence[int] = ()
    ) -> tuple[list[int], slice]:
        """Prompt ids for a (context, question) pair and the context's span inside them."""
        return self.layout.build(context_ids, question_ids, answer_prefix_ids)

    # ------------------------------------------------------------------ batching helpers
    def _micro_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped, sorted by length, into batches of at most ``max_batch_tokens`` padded tokens."""
        return micro_batches(lengths, self.max_batch_tokens)

    def _pad_right(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_right(seqs, self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ scoring
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

        Args:
            prompts: B prompt token-id sequences.
            answers: B non-empty answer token-id sequences.
            return_distributions: Also return full log-distributions at the answer positions.

        Returns:
            The scores, in input order.

        Raises:
            ValueError: On mismatched lengths or an empty prompt or answer.
        """
        if len(prompts) != len(answers):
            raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            if len(p) == 0 or len(a) == 0:
                raise ValueError(f"pair {i}: prompt and answer must both be non-empty")
        n = len(prompts)
        seqs = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
        total = torch.zeros(n, dtype=torch.float32)
        per_token: list[torch.Tensor] = [torch.empty(0)] * n
        match = torch.zeros(n, dtype=torch.bool)
        dists: list[torch.Tensor] | None = [torch.empty(0)] * n if return_distributions else None
        head = self.model.get_output_embeddings()
        prefix = list(self.layout.prefix) if self.cache_prefix else []
        for batch in self._micro_batches([len(s) for s in seqs]):
            # Prompts built by build_prompt share the layout's prefix: its keys and values are computed once
            # and reused, so only the rest runs through the model.
            shared = prefix and all(seqs[i][: len(prefix)] == prefix and len(prompts[i]) > len(prefix) for i in batch)
            p = len(prefix) if shared else 0
            ids, mask = self._pad_right([seqs[i][p:] for i in batch])
            hidden = self._forward(ids, mask, p)
            # Positions predicting answer token j sit at len(prompt) - 1 + j (minus the cached prefix).
            rows, cols, targets, owners = [], [], [], []
            for r, i in enumerate(batch):
                lp, la = len(prompts[i]) - p, len(answers[i])
                rows += [r] * la
                cols += range(lp - 1, lp - 1 + la)
                targets += list(answers[i])
                owners += [i] * la
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

    @torch.inference_mode()
    def score_continuations(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Log-likelihood of several continuations of each prompt, running each prompt through the model once.

        Each prompt's keys and values are computed once and reused for all its continuations (choices, say),
        instead of one full forward per (prompt, continuation) pair. Results match :meth:`score_answers`.

        Args:
            prompts: B non-empty prompt token-id sequences.
            continuations: For each prompt, its non-empty continuations.

        Returns:
            Per prompt, ``(logprob [k], greedy [k])``: each continuation's summed log-probability, and whether
            greedy decoding from the prompt would emit it.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuation lists")
        if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for cs in continuations for c in cs):
            raise ValueError("prompts and continuations must be non-empty")
        from transformers import DynamicCache

        out: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.empty(0), torch.empty(0))] * len(prompts)
        base, head = self.model.get_decoder(), self.model.get_output_embeddings()
        # The cache is copied once per continuation: keep a micro-batch's copies within the token budget.
        widest = max(len(cs) for cs in continuations)
        budget = max(self.max_batch_tokens // (1 + widest), 1)
        for batch in micro_batches([len(p) for p in prompts], budget):
            ids, mask = self._pad_right([prompts[i] for i in batch])
            cache = DynamicCache(config=self.model.config)
            hidden = base(input_ids=ids, attention_mask=mask, use_cache=True, **{self._cache_arg: cache})
            hidden = hidden.last_hidden_state
            pairs = [(r, c) for r, i in enumerate(batch) for c in continuations[i]]
            rows = torch.tensor([r for r, _ in pairs], device=ids.device)
            lens = torch.tensor([len(prompts[i]) for i in batch], device=ids.device)
            # First token of each continuation: predicted at the prompt's last position.
            first_h = hidden[rows, lens[rows] - 1]
            states = [first_h[:, None, :]]
            longest = max(len(c) for _, c in pairs)
            cont, cmask = self._pad_right([c for _, c in pairs])
            if longest > 1:
                kv = [(layer.keys[rows], layer.values[rows]) for layer in cache.layers]
                pair_cache = DynamicCache(kv, config=self.model.config)
                full_mask = torch.cat([mask[rows], cmask[:, :-1]], 1)
                pos = lens[rows][:, None] + torch.arange(longest - 1, device=ids.device)[None, :]
                rest = base(
                    input_ids=cont[:, :-1], attention_mask=full_mask, position_ids=pos, use_cache=True,
                    **{self._cache_arg: pair_cache},
                ).last_hidden_state  # fmt: skip
                states.append(rest)
            h = torch.cat(states, 1)  # [pairs, longest, d]: the state that predicts continuation token j
            lp_rows, greedy_rows = [], []
            for s in range(0, len(pairs), HEAD_CHUNK):
                logp = torch.log_softmax(head(h[s : s + HEAD_CHUNK]).float(), dim=-1)
                tgt = cont[s : s + HEAD_CHUNK]
                tok = logp.gather(2, tgt[..., None])[..., 0]
                ok = logp.argmax(-1) == tgt
                valid = cmask[s : s + HEAD_CHUNK].bool()
                lp_rows.append((tok * valid).sum(1).cpu())
                greedy_rows.append((ok | ~valid).all(1).cpu())
            lp, greedy = torch.cat(lp_rows), torch.cat(greedy_rows)
            k = 0
            for i in batch:
                n = len(continuations[i])
                out[i] = (lp[k : k + n], greedy[k : k + n])
                k += n
        return out

    def _prefix_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per-layer (keys, values) ``[1, heads, P, head_dim]`` of the layout prefix, computed on first use."""
        if self._prefix_kv is None:
            from transformers import DynamicCache

            ids = torch.tensor([list(self.layout.prefix)], device=self.device)
            cache = DynamicCache(config=self.model.config)
            self.model.get_decoder()(input_ids=ids, use_cache=True, **{self._cache_arg: cache})
            self._prefix_kv = tuple((layer.keys, layer.values) for layer in cache.layers)
        return self._prefix_kv

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, prefix_len: int) -> torch.Tensor:
        """Last hidden states of ``ids`` ``[B, W]``, continuing the cached layout prefix when ``prefix_len`` > 0."""
        base = self.model.get_decoder()
        if not prefix_len:
            return base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        from transformers import DynamicCache

        b = ids.shape[0]
        kv = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in self._prefix_cache()]
        cache = DynamicCache(kv, config=self.model.config)
        full_mask = torch.cat([torch.ones(b, prefix_len, dtype=mask.dtype, device=mask.device), mask], 1)
        out = base(input_ids=ids, attention_mask=full_mask, use_cache=True, **{self._cache_arg: cache})
        return out.last_hidden_state

    @property
    def _cache_arg(self) -> str:
        """The decoder's keyword for a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
        params = inspect.signature(self.model.get_decoder().forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 8) -> list[list[int]]:
        """Greedy generation for a batch of prompts (left-padded, one ``generate`` call per micro-batch).

        Args:
            prompts: B prompt token-id sequences.
            max_new_tokens: Tokens to generate at most; generation stops early at EOS.

        Returns:
            B lists of generated token ids (EOS and what follows removed).
        """
        out: list[list[int]] = [[] for _ in prompts]
        eos = self.model.generation_config.eos_token_id
        eos_set = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        for batch in self._micro_batches([len(p) + max_new_tokens for p in prompts]):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(batch):
                p = list(prompts[i])
                ids[r, width - len(p) :] = torch.as_tensor(p)
                mask[r, width - len(p) :] = 1
            gen = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
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

    # ------------------------------------------------------------------ features
    def feature_module(self, layer: int, attention_layers: int = 0) -> FeatureModule:
        """The policy's feature module over this model, sharing its weights (built once per setting)."""
        key = (layer, attention_layers)
        if key not in self._feature_modules:
            self._feature_modules[key] = FeatureModule.from_causal_lm(self.model, layer, attention_layers)
        return self._feature_modules[key]

    def features(self, seqs: Sequence[Sequence[int]], layer: int = 0) -> list[torch.Tensor]:
        """Per-token features ``[len_i, hidden_size]`` (float16) of ``layer`` for each sequence, batched."""
        return self.feature_module(layer).encode(seqs, self.pad_id, self.max_batch_tokens)
