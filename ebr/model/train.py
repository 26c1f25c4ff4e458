"""Train two-tower models with in-batch softmax on engaged impressions.

    python -m ebr.model.train --data var/data --out var/models --version v1

``fit`` is the one training loop (job marketplace, member-interest model, MovieLens): multi-task
heads, logQ correction and hard negatives are switched by the configs. ``train`` builds the
marketplace's pairs: positives from engagement on the earlier days, request time as context,
the member-interest embedding looked up point-in-time, heuristic hard negatives.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ebr.config import TASK_OUTCOMES, ModelConfig, TrainConfig
from ebr.data.pairs import eval_searches, hard_negatives, positive_pairs, time_split
from ebr.eval.metrics import exact_topk_ids, recall_at_k
from ebr.model.features import job_batch, request_batch
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.towers import TwoTower, in_batch_softmax_loss


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
            body = model.request.body(_take(data.req, b))
            if tasks:
                parts = []
                for t, w in zip(tasks, weights, strict=True):
                    mask = torch.from_numpy(data.labels[t][b])
                    lt = in_batch_softmax_loss(
                        model.request.head(body, t),
                        item,
                        temperature=tcfg.temperature,
                        rows=mask,
                        **kw,
                    )
                    per_task[t].append(float(lt.detach()))
                    parts.append(w * lt)
                loss = torch.stack(parts).sum()
            else:
                req = model.request.head(body, None)
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
    return {
        "train_pairs": n,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss_curve": [round(x, 4) for x in curve],
        "task_loss_curves": {t: [round(x, 4) for x in c] for t, c in task_curves.items()},
    }


def member_records(members: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """member_id -> profile record (the same fields Feast serves online)."""
    return {int(r["member_id"]): r for r in members.to_dict("records")}


def request_members(
    sessions: pd.DataFrame,
    members: pd.DataFrame,
    interest: Mapping[pd.Timestamp, np.ndarray] | None,
) -> list[dict[str, Any]]:
    """Member record of each row (member_id, ts), with its point-in-time ``interest`` vector."""
    recs = member_records(members)
    out = [dict(recs[int(m)]) for m in sessions["member_id"]]
    if interest is not None:
        from ebr.model.interest import lookup

        vecs = lookup(interest, members, sessions["member_id"].tolist(), sessions["ts"])
        for rec, vec in zip(out, vecs, strict=True):
            rec["interest"] = vec
    return out


def evaluate(
    model: TwoTower,
    cfg: ModelConfig,
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    held: pd.DataFrame,
    interest: Mapping[pd.Timestamp, np.ndarray] | None = None,
    k: int = 100,
) -> dict[str, float]:
    """Recall@k of exact search over all jobs on held-out search and JYMBII sessions."""
    model.eval()
    item_vecs = encode_jobs(model.item, jobs.to_dict("records"), cfg)
    ids = jobs["job_id"].to_numpy()
    out: dict[str, float] = {}
    for name, with_query in (("search", True), ("jymbii", False)):
        ev = eval_searches(held, with_query=with_query)
        if ev.empty or (not with_query and cfg.request_inputs == "query"):
            continue
        q = encode_requests(
            model.request,
            [None if pd.isna(x) else x for x in ev["query"]],
            request_members(ev, members, interest),
            cfg,
            whens=ev["ts"].tolist(),
        )
        ranked = exact_topk_ids(q, item_vecs, ids, k)
        out[f"{name}_recall@{k}"] = recall_at_k(ranked, ev["positives"].tolist(), k)
        out[f"{name}_sessions"] = float(len(ev))
    return out


def marketplace_pairs(
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    train_imp: pd.DataFrame,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    interest: Mapping[pd.Timestamp, np.ndarray] | None,
) -> PairData:
    """Positives (engaged impressions of the tasks), request features, labels, hard negatives."""
    rng = np.random.default_rng(tcfg.seed)
    pairs = positive_pairs(train_imp)
    wanted = {o for t in mcfg.tasks for o in TASK_OUTCOMES[t]} or set(TASK_OUTCOMES["click"])
    pairs = pairs[pairs["outcome"].isin(wanted)]
    if mcfg.request_inputs == "query":
        pairs = pairs[pairs["query"].notna()]
    pairs = pairs.reset_index(drop=True)
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} engaged impressions in the train split")
    queries = [None if pd.isna(x) else x for x in pairs["query"]]
    drop = rng.random(len(pairs)) < tcfg.member_dropout
    recs = request_members(pairs, members, interest)
    req_members = [
        None if (d and q is not None) else r for d, q, r in zip(drop, queries, recs, strict=True)
    ]
    job_row = pd.Series(np.arange(len(jobs)), index=jobs["job_id"].to_numpy())
    hard = None
    if tcfg.hard_negatives:
        hard_ids = hard_negatives(train_imp, pairs, jobs, rng)
        hard = np.where(hard_ids >= 0, job_row.reindex(hard_ids).fillna(-1).to_numpy(), -1)
    outcome = pairs["outcome"].astype(str)
    no_time = rng.random(len(pairs)) < tcfg.context_dropout
    whens = [None if d else t for d, t in zip(no_time, pairs["ts"], strict=True)]
    return PairData(
        req=request_batch(queries, req_members, mcfg, whens),
        item=job_batch(jobs.to_dict("records"), mcfg),
        pair_item=job_row.loc[pairs["job_id"].to_numpy()].to_numpy(),
        labels={t: outcome.isin(TASK_OUTCOMES[t]).to_numpy() for t in mcfg.tasks},
        hard_item=None if hard is None else hard.astype(np.int64),
    )


def train(
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    impressions: pd.DataFrame,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    interest: Mapping[pd.Timestamp, np.ndarray] | None = None,
) -> tuple[TwoTower, dict[str, Any]]:
    """Fit on the earlier days of the log; report held-out recall@100 on the later days.

    ``interest``: daily member-interest snapshots (ebr.model.interest.interest_snapshots),
    required when ``mcfg.interest_dim`` > 0.
    """
    if bool(mcfg.interest_dim) != (interest is not None):
        raise ValueError("pass member-interest snapshots exactly when mcfg.interest_dim > 0")
    t0 = time.perf_counter()
    train_imp, held = time_split(impressions, tcfg.eval_days)
    data = marketplace_pairs(jobs, members, train_imp, mcfg, tcfg, interest)
    featurize_s = time.perf_counter() - t0
    model = TwoTower(mcfg)
    metrics = fit(model, data, tcfg)
    metrics["featurize_seconds"] = round(featurize_s, 2)
    metrics.update(evaluate(model, mcfg, jobs, members, held, interest))
    return model, metrics


def train_with_interest(
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    impressions: pd.DataFrame,
    interest_dir: Path,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
) -> tuple[TwoTower, dict[str, Any], dict[str, Any]]:
    """Train the composite model on the member-interest model at ``interest_dir``.

    Returns (model, metrics, lineage): save the lineage in the model's metadata, so every
    later stage can check it reads the interest version the model was co-trained with.
    """
    from ebr.model.artifact import interest_lineage
    from ebr.model.interest import load_interest_snapshots

    lineage = interest_lineage(interest_dir)
    snaps = load_interest_snapshots(interest_dir, jobs, members, impressions, tcfg.eval_days)
    mcfg = replace(mcfg, interest_dim=int(lineage["member_interest"]["dim"]))
    model, metrics = train(jobs, members, impressions, mcfg, tcfg, snaps)
    return model, metrics, lineage


def main(
    data: Path = Path("var/data"),
    out: Path = Path("var/models"),
    version: str = "v1",
    epochs: int = 4,
) -> None:
    """CLI: train (without a member-interest input) and save the versioned artifact."""
    from ebr.model.artifact import save_model

    mcfg, tcfg = ModelConfig(), TrainConfig(epochs=epochs)
    tables = {n: pd.read_parquet(data / f"{n}.parquet") for n in ("jobs", "members", "impressions")}
    model, metrics = train(tables["jobs"], tables["members"], tables["impressions"], mcfg, tcfg)
    path = save_model(model, out, version, {"train": asdict(tcfg), "metrics": metrics})
    print(path, metrics)


if __name__ == "__main__":
    import typer

    typer.run(main)
