"""The one training loop: in-batch softmax over featurized pairs, for every two-tower model.

The job marketplace (ebr.model.train), the member-interest model (ebr.model.interest) and
MovieLens (ebr.model.movielens) build a ``PairData`` and call ``fit``; multi-task heads, logQ
correction and hard negatives are switched by the model and train configs.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ebr.config import TrainConfig
from ebr.model.towers import TwoTower, in_batch_softmax_loss
from ebr.progress import report


@dataclass
class PairData:
    """Featurized training pairs for ``fit``.

    req: request inputs, each [n_pairs, ...]; item: item inputs, each [n_items, ...];
    pair_item: int64 [n_pairs] row of each pair's positive in ``item``; labels: task ->
    bool [n_pairs] (which pairs are positives of that task; empty for a single objective);
    hard_item: int64 [n_pairs] row of a hard negative per pair, -1 for none.
    """

    req: dict[str, np.ndarray]
    item: dict[str, np.ndarray]
    pair_item: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    hard_item: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.pair_item)
        for name, arr in {**self.req, **self.labels}.items():
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows, expected {n} (one per pair)")
        if self.hard_item is not None and len(self.hard_item) != n:
            raise ValueError(f"hard_item has {len(self.hard_item)} rows, expected {n}")


def _take(batch: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v[idx]) for k, v in batch.items()}


def _optimizers(model: torch.nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """SparseAdam for the sparse-gradient embedding tables, Adam for everything else.

    On the 20k-job marketplace this trained 20% faster than dense Adam over all parameters
    and reached a higher held-out recall@100 (0.722 vs 0.702): rows a batch does not touch
    keep their moments instead of decaying towards stale updates.
    """
    sparse = {
        id(m.weight): m.weight
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and m.sparse
    }
    dense = [p for p in model.parameters() if id(p) not in sparse]
    opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr)]
    if sparse:
        opts.append(torch.optim.SparseAdam(list(sparse.values()), lr=lr))
    return opts


def fit(model: TwoTower, data: PairData, tcfg: TrainConfig) -> dict[str, Any]:
    """Adam (SparseAdam for the embedding tables) over shuffled batches of pairs; returns loss
    curves, seconds and peak RSS.

    Loss per batch: sum over tasks of weight * in-batch softmax over the task's positive rows
    (the request tower's task head, shared item tower); one loss without heads.
    """
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.torch_threads)
    rng = np.random.default_rng(tcfg.seed)
    n = len(data.pair_item)
    if n < 2:
        raise ValueError(f"need at least 2 training pairs, got {n}")
    tasks = list(model.request.tasks)
    weights = tcfg.task_weights or (1.0,) * len(tasks)
    if len(weights) != len(tasks):
        raise ValueError(f"{len(weights)} task_weights for tasks {tasks}")
    missing = [t for t in tasks if t not in data.labels]
    if missing:
        raise ValueError(f"no labels for tasks {missing}")
    counts = np.bincount(data.pair_item, minlength=len(next(iter(data.item.values()))))
    log_q = np.log(np.maximum(counts, 1) / n).astype(np.float32)  # per item row
    opts = _optimizers(model, tcfg.lr)
    bs = min(tcfg.batch_size, n)
    t0 = time.perf_counter()
    curve: list[float] = []
    task_curves: dict[str, list[float]] = {t: [] for t in tasks}
    for _epoch in range(tcfg.epochs):
        model.train()
        order = rng.permutation(n)
        losses: list[float] = []
        per_task: dict[str, list[float]] = {t: [] for t in tasks}
        for a in range(0, n - bs + 1, bs):  # drop the ragged tail: fixed softmax width
            b = order[a : a + bs]
            rows = data.pair_item[b]
            item = model.item(**_take(data.item, rows))
            kw: dict[str, Any] = {"item_ids": torch.from_numpy(rows)}
            if tcfg.logq:
                kw["log_q"] = torch.from_numpy(log_q[rows])
            if tcfg.hard_negatives and data.hard_item is not None:
                hard_rows = data.hard_item[b]
                kw["hard"] = model.item(**_take(data.item, np.maximum(hard_rows, 0)))
                kw["hard_ids"] = torch.from_numpy(hard_rows)
            req_in = _take(data.req, b)
            body, lexical = model.request.body(req_in), model.request.lexical(req_in)
            if tasks:
                parts = []
                for t, w in zip(tasks, weights, strict=True):
                    mask = torch.from_numpy(data.labels[t][b])
                    lt = in_batch_softmax_loss(
                        model.request.head(body, t, lexical),
                        item,
                        temperature=tcfg.temperature,
                        rows=mask,
                        **kw,
                    )
                    per_task[t].append(float(lt.detach()))
                    parts.append(w * lt)
                loss = torch.stack(parts).sum()
            else:
                req = model.request.head(body, None, lexical)
                loss = in_batch_softmax_loss(req, item, temperature=tcfg.temperature, **kw)
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            losses.append(loss.item())
        curve.append(float(np.mean(losses)))
        for t in tasks:
            task_curves[t].append(float(np.mean(per_task[t])))
        report("train", advance=1, total=tcfg.epochs, loss=round(curve[-1], 4))
    return {
        "train_pairs": n,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss_curve": [round(x, 4) for x in curve],
        "task_loss_curves": {t: [round(x, 4) for x in c] for t, c in task_curves.items()},
    }
