"""Train two-tower models with in-batch softmax on engaged impressions.

    python -m ebr.model.train --data var/data --out var/models --version v1

``train`` builds the marketplace's pairs for ``ebr.model.fit.fit`` (the one training loop):
positives from engagement on the earlier days, request time as context, the member-interest
embedding looked up point-in-time, heuristic hard negatives.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import TASK_OUTCOMES, ModelConfig, TrainConfig
from ebr.data.catalogue import catalogue_pairs
from ebr.data.pairs import eval_searches, hard_negatives, positive_pairs, time_split
from ebr.metrics import exact_topk, recall_at_k
from ebr.model.features import job_batch, member_records, request_batch
from ebr.model.fit import PairData, fit
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.specs import tower_specs
from ebr.model.towers import TwoTower


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
        ranked = exact_topk(item_vecs, q, k, ids)[1]
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
    req = request_batch(queries, req_members, mcfg, whens)
    pair_item = job_row.loc[pairs["job_id"].to_numpy()].to_numpy()
    labels = {t: outcome.isin(TASK_OUTCOMES[t]).to_numpy() for t in mcfg.tasks}
    cat = catalogue_pairs(jobs, round(tcfg.catalogue_pairs * len(pairs)), rng)
    if len(cat):  # anonymous typed text -> job, a positive of every task
        extra = request_batch(cat["query"].tolist(), [None] * len(cat), mcfg)
        req = {k: np.concatenate([v, extra[k]]) for k, v in req.items()}
        pair_item = np.concatenate([pair_item, job_row.loc[cat["job_id"].to_numpy()].to_numpy()])
        labels = {t: np.concatenate([v, np.ones(len(cat), bool)]) for t, v in labels.items()}
        if hard is not None:
            hard = np.concatenate([hard, np.full(len(cat), -1)])
    return PairData(
        req=req,
        item=job_batch(jobs.to_dict("records"), mcfg),
        pair_item=pair_item,
        labels=labels,
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
    model = TwoTower(mcfg, tower_specs(mcfg))
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
    from ebr.model.interest import load_interest_snapshots
    from ebr.versions import interest_lineage

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
    from ebr.text import training_vocabulary

    mcfg, tcfg = ModelConfig(), TrainConfig(epochs=epochs)
    tables = {n: pd.read_parquet(data / f"{n}.parquet") for n in ("jobs", "members", "impressions")}
    model, metrics = train(tables["jobs"], tables["members"], tables["impressions"], mcfg, tcfg)
    vocab = training_vocabulary(tables["jobs"], tables["members"], tables["impressions"])
    path = save_model(model, out, version, {"train": asdict(tcfg), "metrics": metrics}, vocab)
    print(path, metrics)


if __name__ == "__main__":
    import typer

    typer.run(main)
