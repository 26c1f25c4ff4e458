"""Member-interest model: a separately trained, separately versioned embedding of a member.

    python -m ebr.model.interest --data var/data --out var/interest/models --version v1

It embeds a member from the profile (headline, skills, seniority, location) and the
interaction history (titles of the jobs the member engaged with, most recent first), trained
with in-batch softmax against the jobs the member engaged with next. Its batch embeddings
(``interest/embeddings/<iv>/members.parquet``, Feast view ``member_interest_<iv>``) are an
*input* of the two-tower request tower, looked up, never recomputed there; the two-tower
model records which interest version it was co-trained with (``lineage`` in model.json).

History is point-in-time: a snapshot "as of" day d uses engagements strictly before d, and
only from the training split, so neither training pairs nor held-out sessions see their own
engagement through the interest embedding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import ModelConfig, TrainConfig
from ebr.data.pairs import positive_pairs, split_cutoff, time_split
from ebr.model.features import (
    HISTORY_TOKENS,
    SHORT_TOKENS,
    SKILL_TOKENS,
    _skills_text,
    interest_specs,
    job_batch,
    profile_cats,
    profile_nums,
    stack,
    text_ids,
)
from ebr.model.towers import TwoTower

HISTORY_JOBS = 8  # most recent engaged jobs whose titles form the history text
INTEREST_DIM = 32  # width of the interest embedding (an input of the request tower)


def interest_config() -> ModelConfig:
    """The member-interest model's shape: a single-objective two-tower of its own."""
    return ModelConfig(schema="interest", dim=INTEREST_DIM, tasks=())


def member_tensors(member: Mapping[str, Any], history: str, cfg: ModelConfig) -> dict[str, Any]:
    """Member-tower inputs: headline [16], skills [48], history [64] int64; cats [4]; nums [5]."""
    b = cfg.hash_buckets
    return {
        "headline": text_ids(member.get("headline"), SHORT_TOKENS, b),
        "skills": text_ids(_skills_text(member.get("skills")), SKILL_TOKENS, b),
        "history": text_ids(history, HISTORY_TOKENS, b),
        "cats": profile_cats(member, cfg),
        "nums": profile_nums(member),
    }


def engagements(impressions: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """Engaged impressions with the job's title: member_id, job_id, title, ts (sorted by ts)."""
    pos = positive_pairs(impressions)[["member_id", "job_id", "ts"]]
    pos = pos.merge(jobs[["job_id", "title"]], on="job_id", how="left")
    return pos.sort_values("ts", kind="stable").reset_index(drop=True)


def history_text(events: Iterable[tuple[Any, str]]) -> str:
    """Titles of the HISTORY_JOBS most recent (time, title) engagements, most recent first.

    The one definition of the history feature: training snapshots and the Beam batch pipeline
    both call it, so their histories match exactly.
    """
    recent = sorted(((pd.Timestamp(t), str(title)) for t, title in events))[-HISTORY_JOBS:]
    return " ".join(title for _, title in reversed(recent))


def history_as_of(engaged: pd.DataFrame, as_of: pd.Timestamp) -> dict[int, str]:
    """member_id -> history text of the jobs engaged strictly before ``as_of``."""
    before = engaged[engaged["ts"] < as_of]
    return {
        int(m): history_text(zip(g["ts"], g["title"], strict=True))
        for m, g in before.groupby("member_id")
    }


def member_batch(
    members: Sequence[Mapping[str, Any]], histories: Mapping[int, str], cfg: ModelConfig
) -> dict[str, np.ndarray]:
    return stack([member_tensors(m, histories.get(int(m["member_id"]), ""), cfg) for m in members])


def snapshot_days(ts: pd.Series) -> pd.Series:
    """The snapshot a request at ``ts`` reads: the one as of the start of its UTC day."""
    return pd.to_datetime(ts, utc=True).dt.floor("D")


def interest_snapshots(
    model: TwoTower,
    members: pd.DataFrame,
    engaged: pd.DataFrame,
    days: Sequence[pd.Timestamp],
) -> dict[pd.Timestamp, np.ndarray]:
    """Daily batch embeddings: as_of day -> float32 [n_members, INTEREST_DIM] (members' order).

    What a nightly batch run would have written each day; a training pair reads the snapshot
    of its day, exactly like a Feast point-in-time join over daily rows.
    """
    from ebr.model.infer import run_tower

    model.eval()
    recs = members.to_dict("records")
    out = {}
    for day in sorted(set(days)):
        hist = history_as_of(engaged, day)
        parts = [
            run_tower(model.request, member_batch(recs[i : i + 2048], hist, model.cfg))
            for i in range(0, len(recs), 2048)
        ]
        out[pd.Timestamp(day)] = np.concatenate(parts)
    return out


def training_snapshots(
    model: TwoTower,
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    impressions: pd.DataFrame,
    eval_days: int,
) -> dict[pd.Timestamp, np.ndarray]:
    """Snapshots for every day of the log, from training-split engagements only (no leakage)."""
    train_imp, _ = time_split(impressions, eval_days)
    days = snapshot_days(impressions["ts"]).unique()
    return interest_snapshots(model, members, engagements(train_imp, jobs), list(days))


def load_interest_snapshots(
    interest_dir: Path,
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    impressions: pd.DataFrame,
    eval_days: int,
) -> dict[pd.Timestamp, np.ndarray]:
    """training_snapshots of the saved member-interest model at ``interest_dir``."""
    from ebr.model.artifact import load_two_tower

    model, cfg, _ = load_two_tower(interest_dir)
    if cfg.schema != "interest":
        raise ValueError(f"{interest_dir} holds a {cfg.schema!r} model, not member-interest")
    return training_snapshots(model, jobs, members, impressions, eval_days)


def lookup(
    snapshots: Mapping[pd.Timestamp, np.ndarray],
    members: pd.DataFrame,
    member_ids: Sequence[int],
    ts: pd.Series,
) -> list[np.ndarray]:
    """Point-in-time interest vector of each (member, request time): float32 [INTEREST_DIM]."""
    row = pd.Series(np.arange(len(members)), index=members["member_id"].to_numpy())
    rows = row.loc[np.asarray(member_ids)].to_numpy()
    days = snapshot_days(pd.Series(ts)).tolist()
    return [snapshots[pd.Timestamp(d)][r] for d, r in zip(days, rows, strict=True)]


def train_interest(
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    impressions: pd.DataFrame,
    tcfg: TrainConfig,
) -> tuple[TwoTower, dict[str, Any]]:
    """Fit the member-interest model on the training split; held-out JYMBII-style recall@100.

    Pairs: (member as of the pair's day, engaged job). Returns the model (its request tower is
    the interest encoder) and metrics.
    """
    from ebr.metrics import exact_topk, recall_at_k
    from ebr.model.features import member_records
    from ebr.model.fit import PairData, fit
    from ebr.model.infer import encode_jobs, run_tower

    cfg = interest_config()
    tcfg = replace(tcfg, logq=True, hard_negatives=False, task_weights=())
    train_imp, held = time_split(impressions, tcfg.eval_days)
    engaged = engagements(train_imp, jobs)
    if len(engaged) < 2:
        raise ValueError(f"only {len(engaged)} engaged impressions in the train split")
    recs = member_records(members)
    day = snapshot_days(engaged["ts"])
    feats = []
    for d, idx in engaged.groupby(day).groups.items():
        hist = history_as_of(engaged, pd.Timestamp(d))
        part = engaged.loc[idx]
        feats.append((idx, member_batch([recs[int(m)] for m in part["member_id"]], hist, cfg)))
    order = np.concatenate([np.asarray(i) for i, _ in feats])
    req = {k: np.concatenate([f[k] for _, f in feats])[np.argsort(order)] for k in feats[0][1]}
    job_row = pd.Series(np.arange(len(jobs)), index=jobs["job_id"].to_numpy())
    data = PairData(
        req=req,
        item=job_batch(jobs.to_dict("records"), cfg),
        pair_item=job_row.loc[engaged["job_id"].to_numpy()].to_numpy(),
    )
    model = TwoTower(cfg, interest_specs(cfg))
    metrics = fit(model, data, tcfg)

    # Held-out: every later engagement of a member, from the snapshot as of the split.
    future = positive_pairs(held).groupby("member_id")["job_id"].agg(set)
    hist = history_as_of(engaged, split_cutoff(impressions, tcfg.eval_days))
    q = run_tower(model.request, member_batch([recs[int(m)] for m in future.index], hist, cfg))
    item_vecs = encode_jobs(model.item, jobs.to_dict("records"), cfg)
    ranked = exact_topk(item_vecs, q, 100, jobs["job_id"].to_numpy())[1]
    metrics["heldout_member_recall@100"] = recall_at_k(ranked, future.tolist(), 100)
    metrics["heldout_members"] = len(future)
    return model, metrics


def main(
    data: Path = Path("var/data"),
    out: Path = Path("var/interest/models"),
    version: str = "v1",
    epochs: int = 4,
) -> None:
    """CLI: train the member-interest model on a marketplace folder and save it."""
    from dataclasses import asdict

    from ebr.model.artifact import save_model

    tcfg = TrainConfig(epochs=epochs)
    tables = {n: pd.read_parquet(data / f"{n}.parquet") for n in ("jobs", "members", "impressions")}
    model, metrics = train_interest(tables["jobs"], tables["members"], tables["impressions"], tcfg)
    print(save_model(model, out, version, {"train": asdict(tcfg), "metrics": metrics}), metrics)


if __name__ == "__main__":
    import typer

    typer.run(main)
