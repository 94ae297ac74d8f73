"""LlamaIndex: ``TokenKeepPostprocessor``, a ``BaseNodePostprocessor`` backed by a ``TokenReducer``.

Needs ``llama-index-core`` (``pip install tokenkeep[llamaindex]``); without it, importing this module raises an
ImportError that says so.

``postprocess_nodes(nodes, query_str=...)`` (or a query engine's ``node_postprocessors=[...]``) reduces the
nodes' text (``MetadataMode.NONE``) together under one budget
(:meth:`~policies.reducer.TokenReducer.reduce_documents`, the query conditioning the policy) and returns, in
the input order and with their scores, copies of the nodes of which something was kept: their text is the kept
text (stripped), their metadata gains ``tokenkeep_spans`` (the kept ``[start, end]`` character spans of the
original text), excluded from what the LLM and the embedding model see. The input nodes are not modified.
Nodes without text are returned unchanged (they cost no tokens); nodes of which nothing was kept are left out.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "policies.integrations.llamaindex needs llama-index-core, which is not installed: "
        "pip install tokenkeep[llamaindex]"
    ) from err

from policies.integrations.common import SPANS_KEY, check_budget, reduce_texts
from policies.reducer import TokenReducer


class TokenKeepPostprocessor(BaseNodePostprocessor):
    """A LlamaIndex node postprocessor that keeps what a trained tokenkeep policy ranks best for the query.

    Attributes:
        reducer: The :class:`~policies.reducer.TokenReducer` (e.g. ``TokenReducer.from_pretrained(dir)``); not
            serialised.
        rate: Keep at most this fraction of all the nodes' tokens together.
        target_tokens: Keep at most this many tokens in all (instead of ``rate``).
        token_cost: Adaptive mode (neither rate nor target): the token cost the policy is conditioned on (None:
            the reducer's default).
        force_keep: Strings kept wherever they occur (whole units, inside the budget); a string that occurs in
            none of the nodes of a call is skipped for that call (retrieval decides what is there).
    """

    reducer: TokenReducer = Field(exclude=True)
    rate: float | None = None
    target_tokens: int | None = None
    token_cost: float | None = None
    force_keep: list[str] = Field(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        """Refuse a bad budget when the component is built, not at its first call."""
        check_budget("TokenKeepPostprocessor", self.rate, self.target_tokens, self.token_cost)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex records for this component."""
        return "TokenKeepPostprocessor"

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **kwargs: Any) -> TokenKeepPostprocessor:
        """A postprocessor over the reducer saved in ``directory``; ``kwargs`` are the other attributes."""
        return cls(reducer=TokenReducer.from_pretrained(directory), **kwargs)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """Reduce the nodes together for the query (see the module docstring for what is returned).

        Raises:
            ReducerError: If the reduction cannot be done (e.g. the force-kept text alone exceeds the budget).
        """
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        query = query_bundle.query_str if query_bundle is not None else None
        res = reduce_texts(self.reducer, query, texts, self.rate, self.target_tokens, self.token_cost, self.force_keep)
        if res is None:
            return list(nodes)
        out = []
        for item, text, kept in zip(nodes, texts, res.documents, strict=True):
            if not text.strip():
                out.append(item)
                continue
            if kept.dropped:
                continue
            node = item.node.model_copy()
            node.set_content(kept.text.strip())
            node.metadata = {**item.node.metadata, SPANS_KEY: [[s, e] for s, e in kept.spans]}
            node.excluded_llm_metadata_keys = [*item.node.excluded_llm_metadata_keys, SPANS_KEY]
            node.excluded_embed_metadata_keys = [*item.node.excluded_embed_metadata_keys, SPANS_KEY]
            out.append(NodeWithScore(node=node, score=item.score))
        return out
