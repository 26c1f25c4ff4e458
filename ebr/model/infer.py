"""Batched encoding with either tower (the plain torch loop; Beam and Serve wrap the same calls)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ebr.config import ModelConfig
from ebr.model.features import job_batch, request_batch
from ebr.model.towers import ItemTower, RequestTower


def run_tower(
    tower: torch.nn.Module, batch: Mapping[str, np.ndarray], task: str | None = None
) -> np.ndarray:
    """One forward pass without gradients: feature batch -> float32 [n, dim].

    ``task`` picks a request-tower head (None: the model's serve_task).
    """
    with torch.inference_mode():
        out = tower(task=task, **{k: torch.from_numpy(v) for k, v in batch.items()})
    return out.numpy().astype(np.float32, copy=False)


def encode_jobs(
    tower: ItemTower, jobs: Sequence[Mapping[str, Any]], cfg: ModelConfig, batch_size: int = 1024
) -> np.ndarray:
    """Embed job records in batches: -> float32 [n, dim], unit rows."""
    if not jobs:
        return np.zeros((0, cfg.dim), dtype=np.float32)
    parts = [
        run_tower(tower, job_batch(jobs[i : i + batch_size], cfg))
        for i in range(0, len(jobs), batch_size)
    ]
    return np.concatenate(parts)


def encode_requests(
    tower: RequestTower,
    queries: Sequence[str | None],
    members: Sequence[Mapping[str, Any] | None],
    cfg: ModelConfig,
    batch_size: int = 1024,
    whens: Sequence[Any] | None = None,
    task: str | None = None,
) -> np.ndarray:
    """Embed (query, member, request time) requests in batches: -> float32 [n, dim], unit rows."""
    times = list(whens) if whens is not None else [None] * len(queries)
    parts = [
        run_tower(
            tower,
            request_batch(
                queries[i : i + batch_size],
                members[i : i + batch_size],
                cfg,
                times[i : i + batch_size],
            ),
            task,
        )
        for i in range(0, len(queries), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, cfg.dim), dtype=np.float32)


def encode_request_heads(
    tower: RequestTower,
    queries: Sequence[str | None],
    members: Sequence[Mapping[str, Any] | None],
    cfg: ModelConfig,
    whens: Sequence[Any] | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Every task head's request embedding, one body pass per batch: float32 [len(tasks), n,
    dim] unit rows in ``cfg.tasks`` order (``encode_requests`` gives one head's)."""
    times = list(whens) if whens is not None else [None] * len(queries)
    parts = []
    for i in range(0, len(queries), batch_size):
        batch = request_batch(
            queries[i : i + batch_size], members[i : i + batch_size], cfg, times[i : i + batch_size]
        )
        with torch.inference_mode():
            out = tower.every_head(**{k: torch.from_numpy(v) for k, v in batch.items()})
        parts.append(out.numpy().astype(np.float32, copy=False))
    if not parts:
        return np.zeros((max(len(cfg.tasks), 1), 0, cfg.dim), dtype=np.float32)
    return np.concatenate(parts, axis=1)
