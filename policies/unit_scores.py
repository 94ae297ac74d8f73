"""The keep network's scores of prepared contexts, window by window: what the reducer's selection ranks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from policies.budget import Budget
from policies.features import FeatureModule
from policies.network import TokenKeepNetwork
from policies.observations import pack_observations
from policies.processor import Encoded, windows
from policies.reducer_config import ReducerConfig, ReducerError


def unit_scores(
    features: FeatureModule,
    network: TokenKeepNetwork,
    config: ReducerConfig,
    items: Sequence[Encoded],
    budgets: Sequence[Budget],
    window_batch: int,
    max_batch_tokens: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per context: unit scores, STOP score per unit, the unit of each token and tokens per unit.

    A context longer than a window (``processor.window_len`` with the question) is scored window by window,
    ``window_batch`` windows per forward; its units are the windows' units in order (a unit cut by a window edge
    counts twice).

    Raises:
        ReducerError: If a context cannot be cut into windows.
    """
    try:
        parts = [windows(enc, config.processor.window_len) for enc in items]
    except ValueError as err:
        raise ReducerError(str(err)) from err
    rows = [(i, w) for i, ws in enumerate(parts) for w in ws]
    scores: list[list[np.ndarray]] = [[] for _ in items]
    stops: list[list[np.ndarray]] = [[] for _ in items]
    pad = config.tokenizer.pad_id
    device = next(network.parameters()).device
    for start in range(0, len(rows), window_batch):
        chunk = rows[start : start + window_batch]
        feats = features.extract(
            [w.question + w.context for _, w in chunk], pad, max_batch_tokens, [len(w.question) for _, w in chunk]
        )
        vecs = [config.budget.observe(budgets[i], len(items[i].context)) for i, _ in chunk]
        width = max(len(w.question) + len(w.context) for _, w in chunk)
        att = features.attention_size
        obs = pack_observations([w for _, w in chunk], feats, vecs, max_len=width, pad_id=pad, attention_size=att)
        net_scores, stop, _ = network({k: torch.as_tensor(v, device=device) for k, v in obs.items()})
        for r, (i, w) in enumerate(chunk):
            scores[i].append(net_scores[r, : w.n_units].float().cpu().numpy())
            stops[i].append(np.full(w.n_units, float(stop[r])))
    out = []
    for ws, sc, st in zip(parts, scores, stops, strict=True):
        if network.config.stop_relative and len(ws) > 1:
            # each window's STOP was set against that window's best unit: set it against the context's best, as
            # one window over the whole context would, so a window with nothing relevant keeps nothing
            best = max(float(x.max()) for x in sc)
            st = [s - float(x.max()) + best for s, x in zip(st, sc, strict=True)]
        joined = np.concatenate(sc)
        before = np.cumsum([0] + [w.n_units for w in ws[:-1]])
        token_unit = np.concatenate([w.unit_index + k for w, k in zip(ws, before, strict=True)])
        lengths = np.bincount(token_unit, minlength=len(joined))
        out.append((joined, np.concatenate(st), token_unit, lengths))
    return out
