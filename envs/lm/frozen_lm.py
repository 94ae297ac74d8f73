"""A frozen causal LM behind one scoring interface, plus the tokenizer, prompt layout and policy features.

Contract:
    * Scoring (answer log-likelihood, teacher-forced exact match, answer distributions) and greedy generation
      are delegated to a scoring backend (:mod:`envs.lm.backends`): the in-process Hugging Face model by default
      (:class:`envs.lm.hf_backend.TransformersBackend`), or a vLLM server for a ``vllm+http://...`` spec
      (:class:`envs.lm.vllm_backend.VLLMBackend`). Callers see the same :meth:`FrozenLM.score_answers` either way.
    * ``model`` is always a local, frozen model: eval mode, ``requires_grad=False`` on every parameter. With the
      in-process backend it is the scored model; with a remote one it is the small local feature model (same
      tokenizer as the server's, checked on connection) that computes the policy's features. Nothing here
      ever trains it.
    * Prompts are assembled at the token level as ``prefix + context + suffix`` (see :class:`PromptLayout`),
      so the reducible context is always an exact token span inside the (optionally chat-wrapped) prompt.

Loading from specs (``smollm2-135m``, ``tiny-random``, ``.gguf`` paths, directories, hub ids) and the GGUF
conversion cache live in :mod:`envs.lm.model_cache`; remote specs in :mod:`envs.lm.backends`; policy features in
:mod:`policies.features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from envs.lm.backends import AnswerScores, PromptScores, RemoteSpec, ScoringBackend, is_remote_spec, remote_backend
from envs.lm.hf_backend import TransformersBackend
from envs.lm.model_cache import DEFAULT_MODEL_SPEC, load_model
from policies.features import FeatureModule, default_batch_tokens
from policies.tokenization import encode_text, pad_token_id

__all__ = ["INSTRUCTION", "AnswerScores", "FrozenLM", "PromptLayout", "PromptScores"]

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


class FrozenLM:
    """A frozen causal LM plus tokenizer with batched, padding-invariant scoring through a scoring backend.

    Args:
        model: A Hugging Face ``*ForCausalLM`` model. It is put in eval mode and frozen. With a remote backend
            it is the local feature model.
        tokenizer: Its tokenizer. Its settings are never changed.
        spec: The spec the model was loaded from (recorded in exported reducers).
        use_chat_template: Wrap prompts in the tokenizer's chat template when it has one.
        max_batch_tokens: Padded-token budget of one local forward micro-batch (scoring in process, features);
            None: :func:`~policies.features.default_batch_tokens` for the model's device.
        file_hash: Hash of the weights file the model came from, when known.
        backend: The scoring backend (default: :class:`~envs.lm.hf_backend.TransformersBackend` over ``model``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        spec: str = "custom",
        *,
        use_chat_template: bool = True,
        max_batch_tokens: int | None = None,
        file_hash: str | None = None,
        backend: ScoringBackend | None = None,
    ) -> None:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.file_hash = file_hash
        self.max_batch_tokens = default_batch_tokens(self.device) if max_batch_tokens is None else max_batch_tokens
        self.pad_id = pad_token_id(tokenizer)
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.layout = self._make_layout()
        self._feature_modules: dict[tuple[int, int], FeatureModule] = {}
        self.cache_prefix = True
        self.backend: ScoringBackend = backend if backend is not None else TransformersBackend(self)

    @property
    def remote(self) -> bool:
        """Whether the scored model is served outside this process (a ``vllm+http://`` spec)."""
        return bool(self.backend.remote)

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
        max_batch_tokens: int | None = None,
    ) -> FrozenLM:
        """Load a frozen model from a spec (see :mod:`envs.lm.model_cache`), or connect to a served one.

        A ``vllm+http://HOST:PORT[?...]`` spec (:mod:`envs.lm.backends`) loads the local feature model it names and
        connects to the server, checking that it serves the expected model with the same tokenizer.

        Args:
            spec: ``smollm2-135m``, ``tiny-random``, a ``.gguf`` path, a local directory, a hub id, or a remote spec.
            dtype: ``float32``, ``bfloat16`` or ``float16`` (of the local model).
            device: Torch device string (of the local model).
            trust_remote_code: Passed to ``from_pretrained``; off unless asked for.
            use_chat_template: Wrap prompts in the chat template when the tokenizer has one.
            max_batch_tokens: Padded-token budget of one local forward micro-batch (None: the device's default).

        Raises:
            ValueError: On an unknown dtype or a malformed remote spec.
            FileNotFoundError: If a GGUF path or embedded package is missing.
            BackendError: If a remote server is down, serves another model or uses another tokenizer.
        """
        remote = RemoteSpec.parse(spec) if is_remote_spec(spec) else None
        m = load_model(
            remote.features if remote else spec,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            num_layers=remote.feature_layers if remote else None,
        )
        lm = cls(
            m.model,
            m.tokenizer,
            spec if remote else m.spec,
            use_chat_template=use_chat_template,
            max_batch_tokens=max_batch_tokens,
            file_hash=None if remote else m.file_hash,
        )
        if remote:
            eos = lm.model.generation_config.eos_token_id
            eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
            lm.backend = remote_backend(remote.backend).connect(
                remote, lm.tokenizer, vocab_size=lm.vocab_size, eos_ids=eos_ids, probe=lm.layout
            )
        return lm

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
        """Token ids of ``text`` as plain text, as training encodes it (:func:`policies.tokenization.encode_text`)."""
        return list(encode_text(self.tokenizer, text))

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

    # ------------------------------------------------------------------ scoring (delegated to the backend)
    def score_answers(
        self,
        prompts: Sequence[Sequence[int]],
        answers: Sequence[Sequence[int]],
        *,
        return_distributions: bool = False,
    ) -> AnswerScores:
        """Log-likelihood of each answer given its prompt, batched by the scoring backend.

        Args:
            prompts: B prompt token-id sequences.
            answers: B non-empty answer token-id sequences.
            return_distributions: Also return full log-distributions at the answer positions.

        Returns:
            The scores, in input order.

        Raises:
            ValueError: On mismatched lengths or an empty prompt or answer.
            BackendError: When a remote backend cannot answer.
        """
        return self.backend.score_answers(prompts, answers, return_distributions=return_distributions)

    def score_continuations(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Log-likelihood of several continuations of each prompt (the gold answer and the choices, say).

        The in-process backend runs each prompt through the model once and scores all its continuations from
        its keys and values; a served model scores every (prompt, continuation) pair in one batched call. Results
        match :meth:`score_answers` on the pairs.

        Args:
            prompts: B non-empty prompt token-id sequences.
            continuations: For each prompt, its non-empty continuations.

        Returns:
            Per prompt, ``(logprob [k], greedy [k])``: each continuation's summed log-probability, and whether
            greedy decoding from the prompt would emit it.

        Raises:
            ValueError: On mismatched lengths or an empty prompt or continuation.
            BackendError: When a remote backend cannot answer.
        """
        return self.backend.score_continuations(prompts, continuations)

    def score_continuations_and_spans(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        spans: Sequence[slice | None],
    ) -> list[PromptScores]:
        """Continuations of each prompt (as :meth:`score_continuations`) plus the log-probabilities of a span of it.

        ``span_logprobs[j - start]`` is log p(prompt[j] | prompt[:j]) for j in the prompt's span: with the context
        slice of :meth:`build_prompt`, the context's surprisal given the layout prefix and the context before each
        token. The in-process backend reads it from the forward that scores the prompt's continuations; a served
        model from the prompt log-probabilities of the same request. A prompt may have no continuations when it
        has a span (just its surprisal), and prompts that do not start with the layout prefix are fine.

        Args:
            prompts: B non-empty prompt token-id sequences.
            continuations: For each prompt, its non-empty continuations (possibly none).
            spans: For each prompt, the slice of it to score (start >= 1), or None.

        Returns:
            Per prompt, its :class:`~envs.lm.backends.PromptScores`.

        Raises:
            ValueError: On mismatched lengths, an empty prompt or continuation, a bad span, or a prompt with
                neither continuations nor a span.
            BackendError: When a remote backend cannot answer.
        """
        return self.backend.score_continuations_and_spans(prompts, continuations, spans)

    def computed_tokens(
        self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], span: slice | None = None
    ) -> int:
        """Tokens the scoring backend runs through the model for one prompt of :meth:`score_continuations_and_spans`.

        In process: the prompt minus the cached layout prefix it reuses, plus each continuation but its first token
        (predicted from the prompt's last state). A served model recomputes the prompt for every continuation, and
        a prompt without continuations up to the end of its span. Used to share measured time out among prompts.
        """
        if isinstance(self.backend, TransformersBackend):
            bounds = None if span is None else span.indices(len(prompt))[:2]
            reused = self.backend.reused_prefix(prompt, bounds)
            return len(prompt) - reused + sum(len(c) - 1 for c in continuations)
        if not continuations:
            return span.indices(len(prompt))[1] if span is not None else 0
        return sum(len(prompt) + len(c) for c in continuations)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 8) -> list[list[int]]:
        """Greedy generation for a batch of prompts.

        Args:
            prompts: B prompt token-id sequences.
            max_new_tokens: Tokens to generate at most; generation stops early at EOS.

        Returns:
            B lists of generated token ids (EOS and what follows removed).
        """
        return self.backend.generate(prompts, max_new_tokens)

    # ------------------------------------------------------------------ features
    def feature_module(self, layer: int, attention_layers: int = 0) -> FeatureModule:
        """The policy's feature module over this model, sharing its weights (built once per setting)."""
        key = (layer, attention_layers)
        if key not in self._feature_modules:
            self._feature_modules[key] = FeatureModule.from_causal_lm(self.model, layer, attention_layers)
        return self._feature_modules[key]

    def features(self, seqs: Sequence[Sequence[int]], layer: int = 0) -> list[torch.Tensor]:
        """Per-token features ``[len_i, hidden_size]`` (float16) of ``layer`` for each sequence, batched."""
        return self.feature_module(layer).extract(seqs, self.pad_id, self.max_batch_tokens)
