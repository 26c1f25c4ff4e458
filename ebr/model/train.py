"""Train the two-tower model with in-batch softmax on engaged impressions.

python -m ebr.model.train --data var/data --out var/models --version v1
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ebr.config import ModelConfig, TrainConfig
from ebr.data.pairs import eval_searches, positive_pairs, time_split
from ebr.eval.metrics import exact_topk_ids, recall_at_k
from ebr.model.features import job_batch, request_batch
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.towers import TwoTower, in_batch_softmax_loss


def member_records(members: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """member_id -> profile record (the same fields Feast serves online)."""
    return {int(r["member_id"]): r for r in members.to_dict("records")}


def _to_torch(batch: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v[idx]) for k, v in batch.items()}


def evaluate(
    model: TwoTower,
    cfg: ModelConfig,
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    held: pd.DataFrame,
    k: int = 100,
) -> dict[str, float]:
    """Recall@k of exact search over all jobs on held-out search and JYMBII sessions."""
    model.eval()
    item_vecs = encode_jobs(model.item, jobs.to_dict("records"), cfg)
    ids = jobs["job_id"].to_numpy()
    recs = member_records(members)
    out: dict[str, float] = {}
    for name, with_query in (("search", True), ("jymbii", False)):
        ev = eval_searches(held, with_query=with_query)
        if ev.empty:
            continue
        q = encode_requests(
            model.request,
            [None if pd.isna(x) else x for x in ev["query"]],
            [recs[m] for m in ev["member_id"]],
            cfg,
        )
        ranked = exact_topk_ids(q, item_vecs, ids, k)
        out[f"{name}_recall@{k}"] = recall_at_k(ranked, ev["positives"].tolist(), k)
        out[f"{name}_sessions"] = float(len(ev))
    return out


def train(
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    impressions: pd.DataFrame,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
) -> tuple[TwoTower, dict[str, Any]]:
    """Fit on the earlier days of the log; report held-out recall@100 on the later days."""
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.torch_threads)
    rng = np.random.default_rng(tcfg.seed)
    t0 = time.perf_counter()
    train_imp, held = time_split(impressions, tcfg.eval_days)
    pairs = positive_pairs(train_imp)
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} engaged impressions in the train split")

    # Featurize once: every job and every (query, member) pair of the train split.
    job_row = pd.Series(np.arange(len(jobs)), index=jobs["job_id"].to_numpy())
    job_feats = job_batch(jobs.to_dict("records"), mcfg)
    recs = member_records(members)
    queries = [None if pd.isna(x) else x for x in pairs["query"]]
    drop = rng.random(len(pairs)) < tcfg.member_dropout
    req_members = [
        None if (d and q is not None) else recs[int(m)]
        for d, q, m in zip(drop, queries, pairs["member_id"], strict=True)
    ]
    req_feats = request_batch(queries, req_members, mcfg)
    pair_job = job_row.loc[pairs["job_id"].to_numpy()].to_numpy()

    model = TwoTower(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    bs = min(tcfg.batch_size, len(pairs))
    curve: list[float] = []
    for _epoch in range(tcfg.epochs):
        model.train()
        order = rng.permutation(len(pairs))
        losses = []
        for a in range(0, len(order) - bs + 1, bs):  # drop the ragged tail: fixed softmax width
            b = order[a : a + bs]
            req = model.request(**_to_torch(req_feats, b))
            item = model.item(**_to_torch(job_feats, pair_job[b]))
            loss = in_batch_softmax_loss(req, item, torch.from_numpy(pair_job[b]), tcfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curve.append(float(np.mean(losses)))
    train_s = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "train_pairs": len(pairs),
        "train_seconds": round(train_s, 2),
        "loss_curve": [round(x, 4) for x in curve],
        **evaluate(model, mcfg, jobs, members, held),
    }
    return model, metrics


def main(
    data: Path = Path("var/data"),
    out: Path = Path("var/models"),
    version: str = "v1",
    epochs: int = 4,
) -> None:
    """CLI: train on a marketplace folder and save the versioned artifact."""
    from ebr.model.artifact import save_model

    mcfg, tcfg = ModelConfig(), TrainConfig(epochs=epochs)
    tables = {n: pd.read_parquet(data / f"{n}.parquet") for n in ("jobs", "members", "impressions")}
    model, metrics = train(tables["jobs"], tables["members"], tables["impressions"], mcfg, tcfg)
    path = save_model(model, out, version, {"train": asdict(tcfg), "metrics": metrics})
    print(path, metrics)


if __name__ == "__main__":
    import typer

    typer.run(main)
