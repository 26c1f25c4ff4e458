"""One results page: retrieve -> features -> rank -> crowd -> top k, with backfill.

    records, plan = serve_page(index, stage, encoded, k, flt, text, retrieval, options)

A release's ``ranking`` (``ebr.release.record.RankingPin``) says how many candidates to retrieve
(``depth``, default 200), which ranker orders them (``serving.ranking.RankStage``; none:
retrieval order) and the page's default crowding caps; a request may set its own caps and
depth (``PageOptions``). The crowding caps hold on the final page (``ebr.rank.crowding``): a
capped candidate's place goes to the next one, and when the candidates run out before the page
is full while the retrieval was full, the retrieval goes 4x deeper and the stages run again,
until the page is full or the retrieval returned every eligible job. Filters hold throughout:
only retrieved jobs are ever ranked.

A ranked search orders its candidates by whether they match what was typed first
(``ebr.rank.candidates.query_tiers``: half the query's terms in its title, or all of them
in its text), then by the
ranker's score: the member's fit orders the jobs the query asks for, and a job near the member
that the query does not ask for only fills the page after them.

A request with neither a ranker nor a cap is today's retrieval, ``k`` deep. With ``explain``
each result carries its retrieval scores, the ranker's per-feature contributions and how many
places crowding moved it up (``promoted_by``: crowded-out jobs ranked above it), and the plan
the jobs crowding demoted off the page (``crowding.crowded_out``, with the cap each hit), the
funnel (eligible, retrieved, ranked, crowded out) and the
milliseconds of each stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ebr.rank.crowding import Caps, crowd

if TYPE_CHECKING:
    from ebr.index.query.filters import Filter
    from serving.encoder import Encoded
    from serving.ranking import RankStage
    from serving.retriever import ReleaseIndex

GROWTH = 4  # a short page's next retrieval is this much deeper


@dataclass(frozen=True)
class PageOptions:
    """What a request sets of the page (None: the release's default)."""

    max_per_company: int | None = None
    max_per_city: int | None = None
    depth: int | None = None
    explain: bool = False
    rank: bool = True  # False: the retrieval's order for this request (caps still apply)


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _capped_by(i: int, picked: np.ndarray, cols: Any, caps: Caps) -> list[str]:
    """Which caps the page's results of candidate ``i``'s company / city fill."""
    out = []
    for name, col, cap in (("max_per_company", cols.company, caps.max_per_company),
                           ("max_per_city", cols.city, caps.max_per_city)):  # fmt: skip
        if cap is not None and sum(col[j] == col[i] for j in picked.tolist()) >= cap:
            out.append(name)
    return out


def _eligible(plan: dict[str, Any]) -> int | None:
    """Jobs passing the filter, as the retrieval's plan counted them (its EBR or term list)."""
    for part in (plan, plan.get("ebr") or {}, plan.get("term") or {}):
        if isinstance(part.get("eligible"), int):
            return int(part["eligible"])
    return None


def serve_page(
    index: ReleaseIndex,
    stage: RankStage,
    enc: Encoded | None,
    k: int,
    flt: Filter | None,
    text: str | None,
    retrieval: str,
    options: PageOptions,
) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """The page of ``k`` for one request (module docstring): ([records], plan)."""
    from ebr.rank.candidates import gather, query_tiers
    from ebr.rank.features import FEATURES, TASKS, Member, RankRequest

    pin = stage.pin
    caps = Caps(options.max_per_company or pin.max_per_company,
                options.max_per_city or pin.max_per_city)  # fmt: skip
    signed_in = enc is not None and enc.profile is not None
    ranked = options.rank and stage.ranks(signed_in)
    vec = None if enc is None else enc.vec
    personal, place = (None, None) if enc is None else (enc.personal, enc.place)
    if not (ranked or caps.active or options.explain):
        return index.retrieve(vec, k, flt, text, retrieval, signed_in, personal, place)
    depth = max(k, options.depth or pin.depth) if ranked or caps.active else k
    ms: dict[str, float] = {"retrieve": 0.0, "features": 0.0, "rank": 0.0, "crowd": 0.0}
    rounds = 0
    while True:
        rounds += 1
        t = time.perf_counter()
        view, hits, plan = index.candidates(vec, depth, flt, text, retrieval, signed_in,
                                            personal, place)  # fmt: skip
        ms["retrieve"] += (time.perf_counter() - t) * 1e3
        if hits is None or view is None:
            return [[]], plan
        found = hits.job_ids[0] >= 0
        ids, scores = hits.job_ids[0][found], hits.scores[0][found].astype(float)
        t = time.perf_counter()
        heads = None if enc is None else enc.heads
        cands = gather(view, ids, scores, None if enc is None else enc.query_vec, heads, text)
        X = score = None
        if ranked:
            assert enc is not None and enc.profile is not None and stage.ranker is not None
            now = pd.Timestamp(time.time_ns(), unit="ns", tz="UTC")
            request = RankRequest(text, Member.of(enc.profile), now)
            X = stage.features(request, cands)
            t2 = time.perf_counter()
            ms["features"] += (t2 - t) * 1e3
            score = stage.ranker.score(X)
            # matches of what was typed first, each tier in the ranker's order
            tiers = query_tiers(cands.coverage, X[:, FEATURES.index("title_match")])
            order = np.lexsort((-score, tiers))
            ms["rank"] += (time.perf_counter() - t2) * 1e3
        else:
            order = np.arange(len(ids))
            ms["features"] += (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        page = crowd(order, cands.cols.company, cands.cols.city, k, caps)
        ms["crowd"] += (time.perf_counter() - t) * 1e3
        if not page.short or len(ids) < depth:
            break
        depth *= GROWTH  # the cap left the page short and more may be eligible: go deeper
    picked = page.picked
    final = score[picked] if score is not None else scores[picked]
    records = index.rows(hits, ids[picked], final)
    if options.explain:
        t = time.perf_counter()
        rank_of = np.empty(len(order), dtype=np.int64)
        rank_of[order] = np.arange(len(order))
        contrib = None
        if ranked and X is not None and stage.ranker is not None:
            contrib = stage.ranker.contributions(X[picked])
        for row, (rec, i) in enumerate(zip(records, picked.tolist(), strict=True)):
            rec["explain"] = {
                "retrieval": {"rank": i, "score": _num(scores[i]),
                              "ebr_cosine": _num(cands.query_cos[i]),
                              "head_cosines": {t: _num(c) for t, c in
                                               zip(TASKS, cands.heads[i], strict=False)},
                              "bm25": _num(cands.bm25[i]),
                              "term_coverage": _num(cands.coverage[i])},
                "ranker": None if contrib is None or score is None else {
                    "score": _num(score[i]), "rank": int(rank_of[i]),
                    "contributions": {f: _num(c) for f, c in
                                      zip((*FEATURES, "base"), contrib[row], strict=True)},
                },
                "crowding": {"ranked_at": int(rank_of[i]), "position": row,
                             "promoted_by": int(rank_of[i]) - row},
            }  # fmt: skip
        ms["explain"] = (time.perf_counter() - t) * 1e3
        plan["funnel"] = {
            "eligible": _eligible(plan), "retrieved": len(ids),
            "ranked": len(ids) if ranked else 0,
            "crowded_out": len(page.crowded_out), "returned": len(picked), "rounds": rounds,
        }  # fmt: skip
        plan["crowding"] = {
            "max_per_company": caps.max_per_company, "max_per_city": caps.max_per_city,
            "crowded_out": [{"job_id": int(ids[i]), "company": cands.cols.company[i],
                             "city": cands.cols.city[i], "ranked_at": int(rank_of[i]),
                             "capped_by": _capped_by(i, picked, cands.cols, caps)}
                            for i in page.crowded_out.tolist()],
        }  # fmt: skip
        plan["ranker"] = None if not ranked or stage.ranker is None else stage.ranker.id
        plan["stages_ms"] = {s: round(v, 3) for s, v in ms.items()}
    return [records], plan
