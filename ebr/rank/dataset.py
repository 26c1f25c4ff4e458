"""Ranking data from the impression log: per session, what the release's retrieval returns for
it, plus (training) the jobs the log shows it was shown, each with its features.

    ctx = RankContext.of(ws, release)                # the release's towers, slot, tables
    data = build(ctx, sessions(train), shown=True)  # LightGBM groups, labels, positions

A session is replayed as serving answers it (``serving.loaded_release.LoadedRelease``): a
search signed in embeds the query alone (the candidates: hybrid retrieval) and the query with
the member (the member reorders them: ``personal``, with the member's home), a query the towers
know no word of embeds the member alone (hybrid at ``HYBRID_EBR_WEIGHT_MEMBER``); a feed
(JYMBII) searches with the member's embedding (ebr). Request embeddings are point-in-time
(``ebr.model.train.request_members``: the member-interest snapshot of the session's day), and
popularity is read as of the session (``ebr.rank.popularity.as_of``).

Labels: a shown job's logged outcome grade (``gains.GRADES``) at its logged position; a
retrieved job the session did not show is unlabelled for the log: grade 0 at position
``UNSHOWN``, a position LightGBM's position-bias model learns as never examined. ``gain`` holds
each row's expected grade from the preference model (``gains.Judge``): what NDCG is judged by.

Size: the offline replay of the served request path for whole session batches, with the
labels and point-in-time joins; one module so training and evaluation build rows alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import ModelConfig, Workspace
from ebr.index.live.slot import LiveSlot, open_live
from ebr.index.query.fusion import HYBRID_EBR_WEIGHT, HYBRID_EBR_WEIGHT_MEMBER
from ebr.index.query.personal import Places
from ebr.rank.candidates import gather
from ebr.rank.features import FEATURES, Member, RankRequest, feature_matrix
from ebr.rank.gains import GRADES, Judge
from ebr.rank.popularity import as_of, popularity_tables
from ebr.text import Vocabulary

DEPTH = 200  # candidates retrieved per request (serving's default)
# The position of a retrieved job the session did not show: one more position id for LightGBM's
# position-bias term (ids are categories, not distances), past any logged page.
UNSHOWN = 1000
BATCH = 256  # sessions replayed per retrieval call


@dataclass
class RankContext:
    """What replaying sessions needs: the release's request tower, its slot, the tables."""

    tower: Any
    cfg: ModelConfig
    vocabulary: Vocabulary | None
    live: LiveSlot
    members: pd.DataFrame
    jobs: pd.DataFrame
    interest: dict[pd.Timestamp, np.ndarray] | None
    popularity: tuple[pd.DataFrame, pd.DataFrame]
    job_interest: tuple[pd.Index, np.ndarray] | None = None  # job ids, float32 [n, d]
    judge: Judge | None = None
    _records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, ws: Workspace, model_dir: Path, slot_dir: Path, interest_dir: Path | None,
           eval_days: int, judge: bool = True) -> RankContext:  # fmt: skip
        from ebr.model.artifact import load_request_tower, load_vocabulary
        from ebr.model.interest import load_interest_snapshots

        tables = {n: pd.read_parquet(ws.data / f"{n}.parquet")
                  for n in ("jobs", "members", "impressions")}  # fmt: skip
        tower, cfg, _ = load_request_tower(model_dir)
        snaps = None
        if interest_dir is not None:
            snaps = load_interest_snapshots(
                interest_dir, tables["jobs"], tables["members"], tables["impressions"], eval_days
            )
        pop = popularity_tables(tables["impressions"], tables["jobs"])
        return cls(
            tower, cfg, load_vocabulary(model_dir), open_live(slot_dir, verify=False,
            writable=False), tables["members"], tables["jobs"], snaps, pop,
            _job_interest(interest_dir),
            Judge(tables["jobs"], tables["members"]) if judge
            else None,
        )  # fmt: skip

    def interest_of(self, job_ids: np.ndarray) -> np.ndarray | None:
        """float32 [n, d]: the jobs' member-interest-model embeddings (NaN rows: none)."""
        if self.job_interest is None:
            return None
        index, vecs = self.job_interest
        at = index.get_indexer(job_ids)
        out = np.full((len(job_ids), vecs.shape[1]), np.nan, dtype=np.float32)
        out[at >= 0] = vecs[at[at >= 0]]
        return out

    def records(self, member_ids: list[int], ts: list[pd.Timestamp]) -> list[dict[str, Any]]:
        """Member records with their point-in-time interest, as the request tower reads them."""
        from ebr.model.train import request_members

        frame = pd.DataFrame({"member_id": member_ids, "ts": ts})
        return request_members(frame, self.members, self.interest)


def _job_interest(interest_dir: Path | None) -> tuple[pd.Index, np.ndarray] | None:
    """The interest run's job embeddings (``interest/embeddings/<iv>/jobs.parquet``, what
    Feast's ``job_interest_<iv>`` serves), or None (no interest model, or none written)."""
    if interest_dir is None:
        return None
    path = interest_dir.parents[1] / "embeddings" / interest_dir.name / "jobs.parquet"
    if not path.is_file():
        return None
    table = pd.read_parquet(path, columns=["job_id", "embedding"])
    return pd.Index(table["job_id"].to_numpy(np.int64)), np.stack(table["embedding"]).astype(
        np.float32
    )


def sessions(impressions: pd.DataFrame) -> pd.DataFrame:
    """One row per session: session_id, member_id, query (None: a feed), ts (its start),
    intent, and the shown jobs' job_ids, positions and grades (lists)."""
    log = impressions.sort_values(["session_id", "position"], kind="stable")
    grade = log["outcome"].astype(str).map(GRADES).astype(int)
    agg = log.assign(grade=grade).groupby("session_id", sort=True)
    out = agg.agg(member_id=("member_id", "first"), ts=("ts", "min"),
                  job_ids=("job_id", list), positions=("position", list),
                  grades=("grade", list)).reset_index()  # fmt: skip
    first = agg.first()
    out["query"] = [None if pd.isna(q) else str(q) for q in first["query"].to_numpy()]
    out["intent"] = first["intent"].to_numpy() if "intent" in first else None
    return out


@dataclass
class RankData:
    """Rows of many sessions, grouped (LightGBM ``group``: rows per session, in order)."""

    X: np.ndarray  # float32 [rows, len(FEATURES)]
    label: np.ndarray  # int [rows]: logged grade (0 unshown)
    position: np.ndarray  # int [rows]: logged position, UNSHOWN for a job not shown
    gain: np.ndarray  # float [rows]: the preference model's expected grade (NaN: no judge)
    retrieved: np.ndarray  # int [rows]: retrieval rank, -1 for a shown job not retrieved
    group: np.ndarray  # int [sessions]
    session: pd.DataFrame  # session_id, member_id, kind (search / feed), intent

    def session_rows(self) -> list[slice]:
        ends = np.cumsum(self.group)
        return [slice(int(e - g), int(e)) for e, g in zip(ends, self.group, strict=True)]


def _retrieve(ctx: RankContext, batch: pd.DataFrame, depth: int) -> list[dict[str, Any]]:
    """Per session of ``batch``: the retrieval's ids and scores and what the ranker reads of
    the request (query vector, head vectors, text, member), as serving would have it."""
    from ebr.model.infer import encode_request_heads, encode_requests

    recs = ctx.records(batch["member_id"].astype(int).tolist(), batch["ts"].tolist())
    queries = batch["query"].tolist()
    whens = batch["ts"].tolist()
    known = [q is not None and (ctx.vocabulary is None or bool(ctx.vocabulary.split(q)[0]))
             for q in queries]  # fmt: skip
    embed = [q if k else None for q, k in zip(queries, known, strict=True)]
    heads = encode_request_heads(ctx.tower, embed, recs, ctx.cfg, whens=whens)  # [T, b, d]
    serve = heads[ctx.cfg.tasks.index(ctx.cfg.serve_task)] if ctx.cfg.tasks else heads[0]
    anon = encode_requests(ctx.tower, embed, [None] * len(embed), ctx.cfg, whens=whens)
    out: list[dict[str, Any]] = [{} for _ in range(len(batch))]
    groups = {
        "led": [i for i, (q, k) in enumerate(zip(queries, known, strict=True)) if q and k],
        "member_led": [
            i for i, (q, k) in enumerate(zip(queries, known, strict=True)) if q and not k
        ],  # fmt: skip
        "feed": [i for i, q in enumerate(queries) if q is None],
    }
    for kind, idx in groups.items():
        if not idx:
            continue
        texts = [queries[i] for i in idx]
        if kind == "led":
            places = Places.of([recs[i] for i in idx])
            hits = ctx.live.query(anon[idx], depth, texts=texts, retrieval="hybrid",
                                  ebr_weight=HYBRID_EBR_WEIGHT, personal=serve[idx],
                                  places=places)  # fmt: skip
        elif kind == "member_led":
            hits = ctx.live.query(serve[idx], depth, texts=texts, retrieval="hybrid",
                                  ebr_weight=HYBRID_EBR_WEIGHT_MEMBER)  # fmt: skip
        else:
            hits = ctx.live.query(serve[idx], depth)
        for row, i in enumerate(idx):
            found = hits.job_ids[row] >= 0
            out[i] = {
                "ids": hits.job_ids[row][found], "scores": hits.scores[row][found].astype(float),
                "query_vec": anon[i] if kind == "led" else None, "heads": heads[:, i],
                "text": queries[i], "member": recs[i],
            }  # fmt: skip
    return out


def build(ctx: RankContext, rows: pd.DataFrame, shown: bool, depth: int = DEPTH) -> RankData:
    """Replay ``rows`` (``sessions``) and make their ranking rows (module docstring); with
    ``shown`` the logged shown jobs join each session's candidates."""
    X, label, position, gain, retrieved, group, kinds = [], [], [], [], [], [], []
    view_live = ctx.live
    for a in range(0, len(rows), BATCH):
        batch = rows.iloc[a : a + BATCH].reset_index(drop=True)
        found = _retrieve(ctx, batch, depth)
        view = view_live.view()
        per: list[tuple[Any, ...]] = []
        for s, got in zip(batch.itertuples(index=False), found, strict=True):
            ids, scores = got["ids"], got["scores"]
            pos = np.full(len(ids), UNSHOWN)
            lab = np.zeros(len(ids), dtype=int)
            rank = np.arange(len(ids))
            if shown:
                at = {int(j): r for r, j in enumerate(ids.tolist())}
                extra, e_pos, e_lab = [], [], []
                for j, p, g in zip(s.job_ids, s.positions, s.grades, strict=True):
                    r = at.get(int(j))
                    if r is not None:
                        pos[r], lab[r] = p, g
                    else:
                        extra.append(int(j))
                        e_pos.append(p)
                        e_lab.append(g)
                live = _live(view, np.array(extra, dtype=np.int64))
                extra = [j for j, ok in zip(extra, live, strict=True) if ok]
                e_pos = [p for p, ok in zip(e_pos, live, strict=True) if ok]
                e_lab = [g for g, ok in zip(e_lab, live, strict=True) if ok]
                ids = np.concatenate([ids, np.array(extra, dtype=np.int64)])
                scores = np.concatenate([scores, np.full(len(extra), np.nan)])
                pos = np.concatenate([pos, np.array(e_pos, dtype=int)])
                lab = np.concatenate([lab, np.array(e_lab, dtype=int)])
                rank = np.concatenate([rank, np.full(len(extra), -1)])
            if not len(ids):
                continue
            per.append((s, got, ids, scores, pos, lab, rank))
        if not per:
            continue
        all_ids = np.concatenate([p[2] for p in per])
        all_ts = np.concatenate([np.full(len(p[2]), p[0].ts) for p in per])
        pop = np.concatenate(
            [as_of(ctx.popularity[0], "job_id", all_ids, all_ts).to_numpy(),
             as_of(ctx.popularity[1], "company", _companies(ctx, all_ids), all_ts).to_numpy()],
            axis=1,
        )  # fmt: skip
        cursor = 0
        for s, got, ids, scores, pos, lab, rank in per:
            cands = gather(view, ids, scores, got["query_vec"], got["heads"], got["text"])
            req = RankRequest(got["text"], Member.of(got["member"]), pd.Timestamp(s.ts))
            X.append(feature_matrix(req, cands, pop[cursor : cursor + len(ids)],
                                    ctx.interest_of(ids)))  # fmt: skip
            cursor += len(ids)
            label.append(lab)
            position.append(pos)
            retrieved.append(rank)
            g = np.full(len(ids), np.nan)
            if ctx.judge is not None:
                g = ctx.judge.gains(int(s.member_id), ids, s.query)
            gain.append(g)
            group.append(len(ids))
            kinds.append((s.session_id, s.member_id, "feed" if s.query is None else "search",
                          s.intent))  # fmt: skip
    if not X:
        raise ValueError("no session gave a candidate")
    return RankData(
        np.concatenate(X), np.concatenate(label), np.concatenate(position),
        np.concatenate(gain), np.concatenate(retrieved), np.array(group),
        pd.DataFrame(kinds, columns=["session_id", "member_id", "kind", "intent"]),
    )  # fmt: skip


def _live(view: Any, ids: np.ndarray) -> np.ndarray:
    """bool [n]: which of ``ids`` the view serves (snapshot rows not deleted and open, or a
    live delta record)."""
    from ebr.index.query.personal import _locate

    if not len(ids):
        return np.zeros(0, dtype=bool)
    pos, rows = _locate(view.snap, view.delta, ids)
    ok = pos >= 0
    snap_ok = rows >= 0
    if snap_ok.any():
        r = rows[snap_ok]
        alive = ~view.dead[r]
        if view.snap.open_rows is not None:
            alive &= view.snap.open_rows[r]
        ok[snap_ok] = alive
    return ok


def _companies(ctx: RankContext, ids: np.ndarray) -> np.ndarray:
    company = pd.Series(ctx.jobs["company"].to_numpy(), index=ctx.jobs["job_id"].to_numpy())
    return company.reindex(ids).fillna("").astype(str).to_numpy()


__all__ = ["DEPTH", "FEATURES", "RankContext", "RankData", "build", "sessions"]
