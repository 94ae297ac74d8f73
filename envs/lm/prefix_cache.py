"""The layout prefix's keys and values, computed once and shared by every in-process forward that continues it.

Every prompt built by :meth:`~envs.lm.frozen_lm.FrozenLM.build_prompt` starts with the same chat header (the
layout prefix). :class:`PrefixCache` runs it through the frozen decoder once and hands out its per-layer keys and
values (expanded to a batch, without copies) and its last hidden state (what predicts the first token after it).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch


class PrefixCache:
    """The owner's layout prefix, run once through its decoder.

    Args:
        owner: The :class:`~envs.lm.frozen_lm.FrozenLM` whose ``model``, ``layout``, ``device`` and ``cache_prefix``
            are read at every call.
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self._kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
        self._last: torch.Tensor | None = None

    def reused(self, prompt: Sequence[int], span: tuple[int, int] | None = None) -> int:
        """How many leading tokens of ``prompt`` come from the cache instead of a forward.

        The prefix is reused when caching is on, the prompt starts with it and goes on past it, and its span (if
        any) starts at the first token after the prefix or later: the prefix's last hidden state is cached, but not
        the ones before it.
        """
        prefix = self.owner.layout.prefix if self.owner.cache_prefix else ()
        n = len(prefix)
        if not n or len(prompt) <= n or tuple(prompt[:n]) != prefix or (span is not None and span[0] < n):
            return 0
        return n

    def kv(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per-layer (keys, values) ``[1, heads, P, head_dim]`` of the layout prefix, computed on first use."""
        if self._kv is None:
            from transformers import DynamicCache

            model = self.owner.model
            ids = torch.tensor([list(self.owner.layout.prefix)], device=self.owner.device)
            cache = DynamicCache(config=model.config)
            out = model.get_decoder()(input_ids=ids, use_cache=True, **{self.cache_arg: cache})
            self._last = out.last_hidden_state[0, -1]
            self._kv = tuple((layer.keys, layer.values) for layer in cache.layers)
        return self._kv

    def last_state(self) -> torch.Tensor:
        """The prefix's last hidden state ``[d]`` (it predicts the first token after the prefix)."""
        self.kv()
        if self._last is None:
            raise RuntimeError("the layout prefix's hidden state was not cached")
        return self._last

    def batch_cache(self, rows: int) -> Any:
        """A ``DynamicCache`` holding the prefix for ``rows`` rows (expanded views, no copies)."""
        from transformers import DynamicCache

        kv = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in self.kv()]
        return DynamicCache(kv, config=self.owner.model.config)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, prefix_len: int) -> torch.Tensor:
        """Last hidden states of ``ids`` ``[B, W]``, continuing the cached prefix when ``prefix_len`` > 0."""
        base = self.owner.model.get_decoder()
        if not prefix_len:
            return base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        b = ids.shape[0]
        full_mask = torch.cat([torch.ones(b, prefix_len, dtype=mask.dtype, device=mask.device), mask], 1)
        out = base(input_ids=ids, attention_mask=full_mask, use_cache=True, **{self.cache_arg: self.batch_cache(b)})
        return out.last_hidden_state

    @property
    def cache_arg(self) -> str:
        """The decoder's keyword for a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
        params = inspect.signature(self.owner.model.get_decoder().forward).parameters
        return "cache" if "cache" in params else "past_key_values"
