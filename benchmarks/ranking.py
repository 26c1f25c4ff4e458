"""Second-stage ranking (issue 23): held-out NDCG, the offline A/B, and what ranking costs.

    python -m benchmarks.ranking [--workspace var/demo2] [--sessions 4000]

On a private copy of ``--workspace`` (the intent world at 20k jobs, ``build_platform`` at demo
size when it is missing; the copy in ``var/bench-rank/ws``, rebuilt each run):

- **NDCG**: a ranker trained for the live release's version (``ebr.rank.train``, default
  ``RankerConfig``): held-out graded NDCG@10 of its order vs the retrieval's own order of the
  same 200 candidates, by session kind (signed-in search, JYMBII feed) and search intent,
  gains from the preference model (``ebr.rank.gains``); its feature importances.
  Target: ranker >= 1.10x retrieval for searches and for feeds.
- **A/B**: two releases of the same slot, retrieval order ("retrieval", control) and ranked
  ("ranker"), as a 50/50 experiment served by Ray Serve over HTTP; the held-out sessions are
  replayed as requests (a search: query + member, a feed: the member's recommendations), and
  ``ebr.release.ab_report`` replays the preference model on what each arm showed (searches
  judged by what was typed). Target: the ranker arm's apply-rate lift has a 95% interval > 0.
- **Cost**: in process, on the ranked release, per signed-in search: ms of features (with the
  popularity read) and of scoring 200 candidates (target p50 <= 3 ms together), Feast reads
  per request (target <= 1); HTTP p50 of the two arms by request kind, interleaved on one
  server (target: the ranked arm's signed-in ``/v1/search`` p50 rises by at most 3 ms).

Writes benchmarks/results/ranking.json and ranking.png; a missed target is recorded.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from benchmarks.common import pyplot, save_figure, write_result
from ebr.config import BuildConfig, DataConfig, RankerConfig, Workspace

NAME = "ranking"
ROOT = Path("var/bench-rank")
EXPERIMENT = "ranker-vs-retrieval"


def _source(path: Path) -> Path:
    """``path``, built at demo size (the intent world, 20k jobs) when it has no live release."""
    from ebr.release import state as st

    if path.is_dir() and (path / "releases" / "state.json").is_file():
        if st.read_state(Workspace(path))["live"]:
            return path
    from workflows.platform import build_platform

    build_platform(config=BuildConfig(workspace=str(path), data=DataConfig(n_jobs=20_000)))
    return path


def _releases(ws: Workspace) -> tuple[str, str, dict[str, Any]]:
    """A ranker for the live version, and two releases of the live slot: (without, with it,
    the ranker's record)."""
    from ebr.rank.train import train_ranker
    from ebr.release import provision as ops
    from ebr.release import state as st
    from ebr.release.ranking import RankingSpec

    if st.read_state(ws)["experiment"]:
        st.stop_experiment(ws)
    live = st.live_release(ws)
    t0 = time.perf_counter()
    path = train_ranker(ws, live.version, RankerConfig(), live.slot.name)
    meta = json.loads((path / "ranker.json").read_text())
    meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    plain = ops.provision(ws, live.version, live.slot.name, ranking=RankingSpec(None))
    ranked = ops.provision(ws, live.version, live.slot.name, ranking=RankingSpec(path.name))
    ops.start_experiment(ws, EXPERIMENT, [("retrieval", plain.id, 0.5), ("ranker", ranked.id, 0.5)])
    return plain.id, ranked.id, meta


def _held_sessions(ws: Workspace, n: int, seed: int) -> pd.DataFrame:
    from ebr.data.pairs import time_split
    from ebr.rank.dataset import sessions
    from ebr.release.state import live_release
    from ebr.versions import eval_days, read_meta

    days = eval_days(read_meta(live_release(ws).paths.model))
    _, held = time_split(pd.read_parquet(ws.data / "impressions.parquet"), days)
    out = sessions(held)
    return out.sample(min(n, len(out)), random_state=seed).sort_values("ts")


def _replay(client: Any, rows: pd.DataFrame) -> pd.DataFrame:
    """Send each held-out session as the request it was: its ms, arm and kind."""
    out = []
    for s in rows.itertuples(index=False):
        t0 = time.perf_counter()
        if s.query is None:
            r = client.get(f"/v1/members/{int(s.member_id)}/recommendations", params={"k": 10})
        else:
            r = client.post("/v1/search", json={"query": s.query, "member_id": int(s.member_id),
                                                "k": 10})  # fmt: skip
        ms = (time.perf_counter() - t0) * 1e3
        r.raise_for_status()
        body = r.json()
        out.append((body["arm"], "feed" if s.query is None else "search", ms, body["took_ms"]))
    return pd.DataFrame(out, columns=["arm", "kind", "ms", "took_ms"])


def _in_process(ws: Workspace, ranked: str, plain: str, rows: pd.DataFrame) -> dict[str, Any]:
    """Per signed-in search on the ranked release: ms per stage (explain's), Feast reads; and
    the whole request path of both releases alternating (ms p50)."""
    from serving.loaded_release import Loader
    from serving.page import PageOptions

    loader = Loader(str(ws.root), verify=False, refresh_s=1.0)
    rel, base = loader._load(ranked), loader._load(plain)
    searches = rows[rows["query"].notna()].head(600)
    deadline = time.monotonic() + 120  # the popularity warm-up runs in the background
    while rel.stage.popularity.keys_read < len(rel.index.slot.job_ids) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    reads0 = rel.stage.popularity.reads
    stages, whole = [], {"ranked": [], "retrieval": []}
    for i, s in enumerate(searches.itertuples(index=False)):
        _, plan, _ = rel.answer(s.query, int(s.member_id), 10, None, "hybrid",
                                PageOptions(explain=True))  # fmt: skip
        stages.append(plan["stages_ms"])
        for name, r in (("ranked", rel), ("retrieval", base))[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            r.answer(s.query, int(s.member_id), 10, None, "hybrid")
            whole[name].append((time.perf_counter() - t0) * 1e3)
    per = pd.DataFrame(stages)
    ranking = per["features"] + per["rank"]
    return {
        "searches": len(per),
        "stage_ms_p50": {c: round(float(per[c].median()), 3) for c in per.columns},
        "ranking_ms_p50": round(float(ranking.median()), 3),
        "ranking_ms_p95": round(float(ranking.quantile(0.95)), 3),
        "feast_reads_per_request": round(
            (rel.stage.popularity.reads - reads0) / (2 * len(per)), 3
        ),  # fmt: skip
        "request_path_ms_p50": {k: round(statistics.median(v), 3) for k, v in whole.items()},
    }


def _plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    nd = results["ndcg@10"]
    groups = [g for g in ("search", "feed", "search:profile", "search:adjacent",
                          "search:career_change") if g in nd]  # fmt: skip
    x = np.arange(len(groups))
    for off, key in ((-0.2, "retrieval"), (0.2, "ranker")):
        axes[0].bar(x + off, [nd[g][key] for g in groups], 0.4, label=key)
    axes[0].set_xticks(x, [g.replace("search:", "") for g in groups], rotation=20)
    axes[0].set_title("held-out NDCG@10 (preference-model gains)")
    axes[0].legend()
    imp = sorted(results["importance"].items(), key=lambda kv: kv[1])[-12:]
    axes[1].barh([k for k, _ in imp], [v for _, v in imp])
    axes[1].set_title("feature importance (gain share)")
    ab = results["ab"]
    kinds = [k for k in ("all", "search", "feed") if ab.get(k)]
    for j, kind in enumerate(kinds):
        for off, arm in ((-0.2, "retrieval"), (0.2, "ranker")):
            a = ab[kind]["arms"][arm]["apply_rate"]
            axes[2].errorbar(j + off, a["mean"], yerr=[[a["mean"] - a["ci95"][0]],
                             [a["ci95"][1] - a["mean"]]], fmt="o",
                             color="C0" if arm == "retrieval" else "C1")  # fmt: skip
    axes[2].set_xticks(range(len(kinds)), kinds)
    axes[2].set_title("replayed apply rate, 95% CI (blue: retrieval, orange: ranker)")
    cost = results["cost"]
    names = list(cost["in_process"]["stage_ms_p50"])
    axes[3].bar(names, [cost["in_process"]["stage_ms_p50"][n] for n in names])
    axes[3].set_title("ms per stage, p50 (ranked release, in process)")
    fig.tight_layout()
    save_figure(fig, NAME)


def main(
    workspace: Annotated[Path, typer.Option(help="intent world with a live release")] = Path(
        "var/demo2"
    ),
    sessions: Annotated[int, typer.Option(help="held-out sessions replayed over HTTP")] = 4000,
    seed: int = 0,
) -> None:
    from benchmarks.serve import _start
    from ebr.release.ab_report import ab_report
    from feature_repo.store import copy_workspace

    src = _source(workspace)
    shutil.rmtree(ROOT / "ws", ignore_errors=True)
    ws = copy_workspace(src, ROOT / "ws")
    plain, ranked, meta = _releases(ws)
    rows = _held_sessions(ws, sessions, seed)
    in_process = _in_process(ws, ranked, plain, rows)
    client, _ = _start(ws.root)
    try:
        sent = _replay(client, rows)
    finally:
        from ray import serve

        serve.shutdown()
    http = {f"{arm}:{kind}": {"p50_ms": round(float(g["ms"].median()), 2),
                              "p95_ms": round(float(g["ms"].quantile(0.95)), 2),
                              "server_took_p50_ms": round(float(g["took_ms"].median()), 2),
                              "requests": len(g)}
            for (arm, kind), g in sent.groupby(["arm", "kind"])}  # fmt: skip
    ab = {"all": ab_report(ws, EXPERIMENT, control="retrieval")}
    for kind, logged in (("search", "search"), ("feed", "recommendations")):
        ab[kind] = ab_report(ws, EXPERIMENT, control="retrieval", kind=logged)
    lift = {k: ab[k]["differences"]["ranker"]["apply_rate"] for k in ab}
    nd = meta["evaluation"]["ndcg@10"]
    # /v1/search, signed in: both arms retrieve PERSONAL_DEPTH (200) candidates; the ranked
    # arm adds the ranking stage. (A ranked feed also retrieves 200 instead of k: in "http".)
    http_delta = http["ranker:search"]["p50_ms"] - http["retrieval:search"]["p50_ms"]
    targets = {
        "search_ndcg_ge_1.10x": nd["search"]["ratio"] >= 1.10,
        "feed_ndcg_ge_1.10x": nd["feed"]["ratio"] >= 1.10,
        "apply_lift_ci_above_0": lift["all"]["ci95"][0] > 0,
        "ranking_p50_le_3ms": in_process["ranking_ms_p50"] <= 3.0,
        "search_http_p50_rise_le_3ms": http_delta <= 3.0,
        "feast_reads_per_request_le_1": in_process["feast_reads_per_request"] <= 1.0,
    }
    results = {
        "ranker": meta["id"], "train_seconds": meta["train_seconds"],
        "train": {k: meta.get(k) for k in ("train_rows", "train_sessions", "seconds")},
        "ndcg@10": nd, "importance": meta["evaluation"]["importance"],
        "ab": {k: {"arms": v["arms"], "differences": v["differences"]} for k, v in ab.items()},
        "apply_rate_lift": lift,
        "cost": {"in_process": in_process, "http": http,
                 "search_http_p50_delta_ms": round(http_delta, 2)},
        "targets": targets,
    }  # fmt: skip
    params = {"workspace": str(workspace), "sessions": len(rows), "seed": seed,
              "ranker_config": meta["config"]}  # fmt: skip
    write_result(NAME, 2, params, results)
    _plot(results)
    summary = {"ndcg@10": {k: nd[k] for k in ("search", "feed")}, "lift": lift,
               "cost": results["cost"], "targets": targets}  # fmt: skip
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    typer.run(main)
