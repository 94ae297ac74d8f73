"""The deployable reduction module: ``TokenReducer``, loadable and usable without the trainer.

Imports torch, safetensors, tokenizers and transformers' model classes only: no stable-baselines3, no gymnasium,
nothing from ``envs`` or ``agents``. Observations are built by :mod:`policies.processor` and the selection runs
in :mod:`policies.selection`, the same code the training environment uses. The text API's checks and results are
:mod:`policies.text_api`; what a reduction returns is :mod:`policies.reduction`; the directory format, selection,
rounds, force-keep, documents and long contexts are described in ``docs/reducer.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.budget import Budget, BudgetConfig, BudgetError, rank_priorities
from policies.features import FeatureModule
from policies.fileio import atomic_directory
from policies.force_keep import ForceKeep, document_force_keep
from policies.llmlingua import compress_prompt
from policies.network import NetworkConfig, TokenKeepNetwork
from policies.processor import Encoded, ProcessorConfig
from policies.reducer_config import (
    ReducerConfig,
    ReducerError,
    check_compatible,
    tokenizer_fingerprint,
)
from policies.reducer_files import read_reducer_files, write_reducer_files
from policies.reduction import (
    DocumentsReduction,
    Reduction,
    join_documents,
    split_documents,
)
from policies.retokenize import retokenize as retokenize_text
from policies.selection import Selection
from policies.semantic import SentenceEncoder
from policies.text_api import call_budget, make_reduction, prepare_contexts
from policies.tokenization import encode_question, encode_text
from policies.unit_scores import unit_scores


class TokenReducer(nn.Module):
    """A trained keep policy plus what it needs to compute its features.

    Args:
        features: The feature module (frozen-model embeddings or first k blocks).
        network: The keep network.
        tokenizer: The base model's tokenizer.
        config: The reducer config.
        encoder: The sentence encoder of the semantic channel (needed when ``config.processor.semantic``).
    """

    def __init__(
        self,
        features: FeatureModule,
        network: TokenKeepNetwork,
        tokenizer: Any,
        config: ReducerConfig,
        encoder: SentenceEncoder | None = None,
    ) -> None:
        super().__init__()
        if features.layer != config.processor.feature_layer:
            raise ReducerError(
                f"feature module is layer {features.layer}, config says {config.processor.feature_layer}"
            )
        if config.processor.semantic and encoder is None:
            raise ReducerError("the processor's semantic channel needs a sentence encoder")
        self.features = features
        self.network = network
        self.tokenizer = tokenizer
        self.config = config
        self.encoder = encoder if config.processor.semantic else None
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_base_model(
        cls,
        model: nn.Module,
        tokenizer: Any,
        *,
        spec: str,
        file_hash: str | None = None,
        processor: ProcessorConfig | None = None,
        budget: BudgetConfig | None = None,
        network: TokenKeepNetwork | NetworkConfig | None = None,
        trained_on: dict[str, Any] | None = None,
        encoder: SentenceEncoder | None = None,
    ) -> TokenReducer:
        """A reducer over a loaded ``*ForCausalLM``, sharing its weights; untrained unless ``network`` is given.

        Args:
            model: The frozen causal LM whose embeddings / first blocks give the features.
            tokenizer: Its tokenizer.
            spec: Its model spec, recorded in the config.
            file_hash: Hash of its weights file, when known.
            processor: Observation settings (default: :class:`ProcessorConfig` defaults).
            budget: Budget settings (default: :class:`BudgetConfig` defaults).
            network: A trained network, or a shape for a fresh untrained one.
            trained_on: Notes recorded in the config.
            encoder: The semantic channel's sentence encoder (default: :meth:`SentenceEncoder.default` when the
                processor uses the channel).
        """
        processor = processor or ProcessorConfig()
        if processor.semantic and encoder is None:
            encoder = SentenceEncoder.default()
        budget = budget or BudgetConfig()
        features = FeatureModule.from_causal_lm(model, processor.feature_layer, processor.attention_layers)
        if not isinstance(network, TokenKeepNetwork):
            config = network or NetworkConfig()
            network = TokenKeepNetwork(
                config, features.hidden_size, processor.lexical_size, budget.observation_size, features.attention_size
            )
        config = ReducerConfig.for_base_model(
            model, tokenizer, spec, file_hash, processor, budget, network.config, trained_on
        )
        return cls(features, network, tokenizer, config, encoder)

    @property
    def max_len(self) -> int:
        """Question + context tokens of a training observation."""
        return self.config.processor.max_len

    @property
    def window_len(self) -> int:
        """Question + context tokens one window of a long context holds (``processor.read_len`` or ``max_len``)."""
        return self.config.processor.window_len

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the reducer directory atomically (temporary directory, then rename).

        Raises:
            FileExistsError: If ``directory`` exists and is not empty.
        """
        with atomic_directory(directory) as tmp:
            self.write_files(tmp)
        return Path(directory)

    def write_files(self, directory: Path) -> None:
        """Write the reducer's files into an existing directory (use :meth:`save_pretrained` for atomicity)."""
        write_reducer_files(directory, self.features, self.network, self.tokenizer, self.config, self.encoder)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> TokenReducer:
        """Load a reducer directory written by :meth:`save_pretrained` (safetensors, JSON, tokenizer files only).

        Raises:
            ReducerError: On a missing or corrupted file, an unknown format version, or a tokenizer that does
                not match the one the reducer was trained with.
        """
        return cls(*read_reducer_files(directory))

    def check_compatible(self, tokenizer: Any, model_spec: str | None = None, file_hash: str | None = None) -> None:
        """Raise ReducerError unless ``tokenizer`` (and the base model, when given) is the one trained for."""
        check_compatible(self.config, tokenizer, model_spec, file_hash)

    # ------------------------------------------------------------------ inference
    def encode(self, text: str) -> list[int]:
        """Token ids of a context text, as the policy sees them."""
        return list(encode_text(self.tokenizer, text))

    @torch.inference_mode()
    def keep_masks(
        self,
        items: Sequence[Encoded],
        budgets: Sequence[Budget],
        window_batch: int = 64,
        max_batch_tokens: int = 16384,
        forced: Sequence[np.ndarray | None] | None = None,
    ) -> list[np.ndarray]:
        """Bool keep mask over each prepared context's tokens (windows of ``window_len`` when a context is long).

        With ``processor.rounds`` R > 1, rounds before the last keep a probe of the best units
        (:meth:`~policies.processor.ProcessorConfig.probe_tokens`) and the next round scores the contexts
        conditioned on it (:func:`policies.processor.condition`), as in training.

        Args:
            items: Prepared contexts (:func:`policies.processor.process`).
            budgets: The budget of each.
            window_batch: Windows scored per network forward (bounds memory on long inputs).
            max_batch_tokens: Padded-token budget of one feature micro-batch.
            forced: Per context, bool per context token of the force-kept tokens (whole units,
                :func:`policies.processor.force_keep_mask`), or None. They are kept first, inside the budget
                (:func:`policies.budget.select_units`), and count as kept in the probes of earlier rounds
                (:func:`policies.budget.probe_units`).

        Returns:
            One mask per context.

        Raises:
            ReducerError: If a context's forced tokens alone exceed its rate's or target's budget.
        """
        forced = list(forced) if forced is not None else [None] * len(items)
        if len(forced) != len(items):
            raise ReducerError(f"got {len(items)} contexts but {len(forced)} forced masks")
        selection = Selection.start(self.config.processor, self.config.budget, items, budgets, forced)
        while True:
            scored = unit_scores(
                self.features, self.network, self.config, selection.current, budgets, window_batch, max_batch_tokens
            )
            units = [(token_unit, lengths) for _, _, token_unit, lengths in scored]
            if not selection.final:
                selection.advance([rank_priorities(scores) for scores, *_ in scored], units)
                continue
            # adaptive mode or a ceiling: above STOP is the policy's choice; below it, ranked, for the minimum
            priorities = [
                scores - stop if lim.adaptive else rank_priorities(scores)
                for (scores, stop, _, _), lim in zip(scored, selection.limits, strict=True)
            ]
            try:
                return selection.keep(priorities, units)
            except BudgetError as err:
                raise ReducerError(str(err)) from err

    def reduce(
        self,
        context: str,
        question: str | None = None,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        token_cost: float | None = None,
        too_long: str = "chunk",
        force_keep: ForceKeep | None = None,
    ) -> Reduction:
        """Reduce one context; see :meth:`reduce_batch` (``force_keep`` is this context's list)."""
        q = None if question is None else [question]
        kw = dict(rate=rate, target_tokens=target_tokens, token_cost=token_cost, too_long=too_long)
        return self.reduce_batch([context], q, force_keep=None if force_keep is None else [force_keep], **kw)[0]

    def reduce_batch(
        self,
        contexts: Sequence[str],
        questions: Sequence[str | None] | None = None,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        token_cost: float | None = None,
        too_long: str = "chunk",
        force_keep: Sequence[ForceKeep | None] | None = None,
    ) -> list[Reduction]:
        """Reduce many contexts with batched forwards. Deterministic.

        Args:
            contexts: The texts to reduce.
            questions: The question for each context (or None: no question).
            rate: Keep at most ``floor(rate * n)`` context tokens (at least 1), as close to it as units allow.
            target_tokens: Keep at most this many context tokens.
            token_cost: Without rate or target: the token cost the adaptive policy is conditioned on (default:
                the reducer's ``budget.default_token_cost``).
            too_long: ``"chunk"`` or ``"error"`` for contexts longer than one window (docs/reducer.md, "Long contexts").
            force_keep: One list per context (or None for a context without): ``(start, end)`` character spans of
                the context, and strings, each standing for *every* non-overlapping occurrence of it in the
                context. They are always kept, as whole units (with word units a span over part of a word keeps
                the whole word; with sentence units, the whole sentence), and counted inside the budget: the
                forced units first, then the policy's ranking fills the rest. In adaptive mode they are kept too,
                with the policy's choice among the other units.

        Returns:
            One :class:`Reduction` per context, with the achieved ``kept_ratio``.

        Raises:
            ReducerError: On an empty or whitespace-only context, a bad budget, a long context with
                ``too_long="error"``, or a bad ``force_keep``: a malformed or out-of-range span, overlapping spans,
                a string that does not occur, or forced units that alone exceed the budget (the message gives
                both numbers).
        """
        budget = call_budget(rate, target_tokens, token_cost, too_long)
        prepared = prepare_contexts(self, contexts, questions, budget, force_keep, too_long)
        items, forced = [enc for enc, _ in prepared], [f for _, f in prepared]
        keeps = self.keep_masks(items, [budget] * len(items), forced=forced)
        return [make_reduction(self, enc, keep, budget, f) for enc, keep, f in zip(items, keeps, forced, strict=True)]

    def reduce_documents(
        self,
        question: str | None,
        documents: Sequence[str],
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        token_cost: float | None = None,
        force_keep: Sequence[str | tuple[int, int, int]] | None = None,
        too_long: str = "chunk",
    ) -> DocumentsReduction:
        """Reduce retrieved passages together, under one budget, keeping their order.

        The documents are joined with a blank line (:data:`policies.reduction.DOCUMENT_SEPARATOR`) and reduced as one
        context (:meth:`reduce`): the policy sees them all and the budget (``rate`` of all their tokens, or
        ``target_tokens``) is shared, so an irrelevant document can lose everything while a relevant one keeps
        much. Whitespace-only documents are left out and reported as dropped.

        Args:
            question: The question the passages were retrieved for (None: no question).
            documents: The passages, in the order they should appear.
            rate: Keep at most this fraction of all the documents' tokens.
            target_tokens: Keep at most this many tokens in all.
            token_cost: Adaptive mode's token cost (without rate or target).
            force_keep: Strings (every non-overlapping occurrence in every document is kept) and
                ``(document_index, start, end)`` character spans of one document; whole units, inside the
                budget, as in :meth:`reduce_batch`.
            too_long: As in :meth:`reduce_batch`.

        Returns:
            A :class:`DocumentsReduction`: per document its kept character spans and kept text, the indices of
            the documents dropped entirely, and the reduction of the joined text.

        Raises:
            ReducerError: On no documents, a document that is not a string, only whitespace-only documents, a bad
                budget, or a bad ``force_keep`` (a string that occurs in no document, a span outside its
                document, overlapping spans, forced units that alone exceed the budget).
        """
        joined, starts = join_documents(documents)
        try:
            spans = None if force_keep is None else document_force_keep(documents, starts, force_keep)
        except ValueError as err:
            raise ReducerError(str(err)) from err
        budget = call_budget(rate, target_tokens, token_cost, too_long)
        label = f"the {len(starts)} documents joined"
        [(enc, forced)] = prepare_contexts(self, [joined], [question], budget, [spans], too_long, [label])
        keep = self.keep_masks([enc], [budget], forced=[forced])[0]
        reduction = make_reduction(self, enc, keep, budget, forced)
        return split_documents(documents, starts, reduction)

    def compress_prompt(
        self,
        context: str | Sequence[str],
        instruction: str = "",
        question: str = "",
        rate: float = 0.5,
        target_token: int = -1,
        force_tokens: Sequence[str] = (),
    ) -> dict[str, Any]:
        """LLMLingua-shaped adapter: ``compressor.compress_prompt(...)`` with the same arguments and keys.

        Args:
            context: The context (a string or a list of strings, joined with blank lines).
            instruction: Kept as is, placed before the context.
            question: Kept as is, placed after the context; also conditions the policy.
            rate: Fraction of context tokens to keep (ignored when ``target_token`` > 0).
            target_token: Context tokens to keep; -1 uses ``rate``.
            force_tokens: Strings always kept where they occur in the context (as LLMLingua-2's ``force_tokens``;
                here every occurrence's whole units are kept, inside the budget, as ``force_keep`` does). Strings
                that do not occur are ignored; occurrences that overlap (``"Q3"`` and ``"Q3 revenue"``) are merged.

        Returns:
            ``compressed_prompt`` (str), ``origin_tokens`` and ``compressed_tokens`` (ints, whole prompt),
            ``ratio`` (float, origin / compressed) and ``rate`` (float, compressed / origin).
        """
        return compress_prompt(self, context, instruction, question, rate, target_token, force_tokens)

    def generate(
        self,
        lm: Any,
        context: str,
        question: str,
        *,
        answer_prefix: str = "",
        max_new_tokens: int = 32,
        retokenize: bool = False,
        **reduce_kwargs: Any,
    ) -> str:
        """Reduce the context, then generate the answer with the frozen model ``lm`` (a ``FrozenLM``).

        With ``retokenize=True`` the reducer serves a model it was not trained for: no compatibility check, and
        where ``lm``'s tokenizer differs from the reducer's, the kept text is re-tokenized with it
        (:func:`policies.retokenize.retokenize`).

        Raises:
            ReducerError: If ``lm`` uses another tokenizer or base model than the reducer was trained for (unless
                ``retokenize``).
        """
        if not retokenize:
            self.check_compatible(lm.tokenizer, getattr(lm, "spec", None), getattr(lm, "file_hash", None))
        red = self.reduce(context, question, **reduce_kwargs)
        same = tokenizer_fingerprint(lm.tokenizer) == self.config.tokenizer.fingerprint
        kept = red.kept_ids if same else retokenize_text(red.text, lm.tokenizer)
        prompt, _ = lm.build_prompt(kept, encode_question(lm.tokenizer, question), lm.encode(answer_prefix))
        return lm.decode(lm.generate([prompt], max_new_tokens=max_new_tokens)[0])
