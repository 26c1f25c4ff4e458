"""Filters that correlate with the vectors on the marketplace: a region away from the member,
industries other than the one searched for. Part of ``python -m benchmarks.filtered_search``.

A request embeds the member's location and the query, so its nearest jobs sit in its own
region (93% of the exact top-10 on 1M jobs; ``own_region_share_of_top10``): a filter to
another region leaves the query only rows away from it, the case in which
filtered ANN used to return full pages of the wrong rows (the planner's ``ann_filtered``
safeguards: ``ebr.index.query.probing``). Per index kind and filter, against the exact filtered
top-10: the planner (``PlannerParams()``), and "unguarded": the same ANN without safeguards
(IVF: no score margin, no page check, i.e. the planner before them; HNSW: one FAISS search
with the selector at the planner's first efSearch). Industry correlates far less: the
engaged job's industry holds ~5% of a request's exact top-10 here, so excluding it removes few
of a query's nearest rows (a check that the planner does not pay for correlation it lacks).

Queries carry their context: the member's region, and the industry of the job the session
engaged with (the held-out positive), recomputed exactly as ``benchmarks.ann_curves`` drew the
cached requests (same split, same seed); ``own_region_share_of_top10`` checks the pairing.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

import faiss
import numpy as np

from benchmarks.common import timed
from ebr.config import TrainConfig
from ebr.index.query.attributes import AttributeTable
from ebr.index.query.filters import parse_filter
from ebr.index.query.planner import PlannerParams, filtered_search
from ebr.metrics import recall_of

BOXES = {  # lat/lon boxes of the market regions; Oceania's crosses the antimeridian
    "Europe": (35, -11, 72, 32),
    "North America": (24, -130, 60, -52),
    "Oceania": (-50, 110, 0, -170),
}
ABBR = {"Europe": "EU", "North America": "NA", "Oceania": "OC"}
REGION_PAIRS = (  # (members in, jobs in)
    ("Europe", ("North America",)),
    ("Europe", ("Oceania",)),
    ("Europe", ("North America", "Oceania")),
    ("North America", ("Europe",)),
    ("Oceania", ("Europe", "North America")),
)
OTHER_INDUSTRIES = (3, 6, 9, 12, 15)  # offsets in the sorted industry list: 5 of 20, ~25%
EXACT = PlannerParams(exact_max_fraction=1.0)  # every filter takes the exact subset scan
UNGUARDED = PlannerParams(margin_quantile=None, check_rows=0)
K, SEED = 10, 7
PLAN_COUNTS = ("fallback_queries", "switched_queries", "suspect_queries", "widened_queries")
Group = tuple[dict[str, Any] | None, np.ndarray | None, np.ndarray]  # filter, mask, query rows


def bbox(region: str) -> dict[str, Any]:
    keys = ("min_lat", "min_lon", "max_lat", "max_lon")
    return {"geo_bbox": dict(zip(keys, BOXES[region], strict=True))}


def region_of(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Name of the BOXES region holding each point ('other' where none): str [n]."""
    out = np.full(len(lat), "other", dtype=object)
    for name, (lat0, lon0, lat1, lon1) in BOXES.items():
        in_lon = (lon >= lon0) & (lon <= lon1) if lon0 <= lon1 else (lon >= lon0) | (lon <= lon1)
        out[(lat >= lat0) & (lat <= lat1) & in_lon] = name
    return out.astype(str)


def query_context(mp: Any, n_queries: int, seed: int) -> dict[str, np.ndarray]:
    """Member region and engaged job's industry of each cached request, str [q] each."""
    from ebr.data.pairs import eval_searches, time_split

    _, held = time_split(mp.impressions, TrainConfig().eval_days)
    searches = eval_searches(held, with_query=True)
    rows = np.random.default_rng(seed).choice(len(searches), n_queries, replace=False)
    picked = searches.iloc[np.sort(rows)]  # as benchmarks.ann_curves._encode_marketplace
    members = mp.members.set_index("member_id").loc[picked["member_id"]]
    industry = mp.jobs.set_index("job_id")["industry"].loc[[min(p) for p in picked["positives"]]]
    region = region_of(members["lat"].to_numpy(), members["lon"].to_numpy())
    return {"region": region, "industry": industry.to_numpy().astype(str)}


def scenarios(items: Any, ctx: dict[str, np.ndarray], n: int) -> list[dict[str, Any]]:
    """Filters as (family, name, groups): each group is a filter and the queries it serves."""
    out: list[dict[str, Any]] = []
    for src, dst in REGION_PAIRS:
        flt = bbox(dst[0]) if len(dst) == 1 else {"or": [bbox(r) for r in dst]}
        name = f"{src} members, jobs in {' + '.join(dst)}"
        short = f"{ABBR[src]}->{'+'.join(ABBR[d] for d in dst)}"
        groups: list[Group] = [(flt, None, ctx["region"] == src)]
        out.append({"family": "region", "name": name, "short": short, "groups": groups})
    inds = sorted(items["industry"].unique())
    others = [
        [inds[(i + o) % len(inds)] for o in OTHER_INDUSTRIES] for i in range(len(inds))
    ]  # fmt: skip
    own = [ctx["industry"] == ind for ind in inds]
    not_own = [
        ({"not": {"term": {"industry": ind}}}, None, q) for ind, q in zip(inds, own, strict=True)
    ]
    five = [({"term": {"industry": o}}, None, q) for o, q in zip(others, own, strict=True)]
    name = "other industries (all 19)"
    out.append({"family": "industry", "name": name, "short": "other ind.", "groups": not_own})
    name = "5 other industries"
    out.append({"family": "industry", "name": name, "short": "5 other ind.", "groups": five})
    rand = np.random.default_rng(SEED).random(n) < 0.4
    groups = [(None, rand, np.ones(len(ctx["region"]), dtype=bool))]
    name = "random 40% (independent)"
    out.append({"family": "random", "name": name, "short": "random 40%", "groups": groups})
    return out


def _selector_only(index: Any, q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HNSW without safeguards: one FAISS search with the bitmap at the planner's first ef."""
    bits = np.packbits(mask, bitorder="little")
    sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
    sp.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    p = PlannerParams()
    sp.efSearch = min(p.max_ef_search, int(np.ceil(index.hnsw.efSearch * mask.mean() ** -0.5)))
    return np.asarray(index.search(q, K, params=sp)[1])


def measure(
    index: Any, kind: str, x: np.ndarray, q: np.ndarray, table: AttributeTable,
    spec: dict[str, Any], reps: int,
) -> dict[str, Any]:  # fmt: skip
    """One scenario on one index: recall, QPS (sum over groups of the median of ``reps``
    batch runs) and the plans' counters, for the planner, unguarded ANN and the exact scan."""
    found: dict[str, list[np.ndarray]] = {"planner": [], "unguarded": [], "exact": []}
    secs = dict.fromkeys(found, 0.0)
    counts: dict[str, int] = {}
    eligible, queries = 0, 0
    for flt, mask, which in spec["groups"]:
        mask = mask if mask is not None else table.mask(parse_filter(flt))
        qs = np.ascontiguousarray(q[which])
        if not len(qs):
            continue
        eligible, queries = eligible + int(mask.sum()) * len(qs), queries + len(qs)
        runs: dict[str, Any] = {
            "exact": lambda: filtered_search(index, x, qs, K, mask, EXACT)[1],  # noqa: B023
            "planner": lambda: filtered_search(index, x, qs, K, mask),  # noqa: B023
            "unguarded": (
                (lambda: _selector_only(index, qs, mask))  # noqa: B023
                if kind == "hnsw"
                else (lambda: filtered_search(index, x, qs, K, mask, UNGUARDED)[1])  # noqa: B023
            ),
        }
        for label, run in runs.items():
            timings = [timed(run) for _ in range(reps if label != "exact" else 1)]
            secs[label] += statistics.median(t for t, _ in timings)
            out = timings[-1][1]
            if label == "planner":
                plan = asdict(out[2])
                for key in PLAN_COUNTS:
                    counts[key] = counts.get(key, 0) + plan[key]
                out = out[1]
            found[label].append(out)
    truth = np.concatenate(found["exact"])
    row: dict[str, Any] = {k: spec[k] for k in ("family", "name", "short")}
    row["queries"] = queries
    row["selectivity"] = eligible / queries / len(x) if queries else 0.0
    for label in ("planner", "unguarded", "exact"):
        rows = np.concatenate(found[label])
        row[label] = {"recall": recall_of(rows, truth), "qps": queries / secs[label]}
    row["planner"] |= counts
    return row


def run_all(
    index: Any, kind: str, x: np.ndarray, q: np.ndarray, table: AttributeTable,
    specs: list[dict[str, Any]], reps: int,
) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for spec in specs:
        rows.append(measure(index, kind, x, q, table, spec, reps))
        r = rows[-1]
        print(
            f"{kind} {r['name']}: planner {r['planner']['recall']:.3f} "
            f"({r['planner']['qps']:.0f} q/s, {r['planner']['fallback_queries']} exact, "
            f"{r['planner']['widened_queries']} widened), unguarded "
            f"{r['unguarded']['recall']:.3f}, exact {r['exact']['qps']:.0f} q/s",
            flush=True,
        )
    return rows


def own_region_share(x: np.ndarray, q: np.ndarray, jobs_region: np.ndarray, ctx: Any) -> float:
    """Share of each request's exact top-10 jobs in its member's region (pairing check)."""
    from ebr.metrics import exact_topk

    _, top = exact_topk(x, q, K)
    return float((jobs_region[top] == ctx["region"][:, None]).mean())


def plot_panel(ax: Any, correlated: dict[str, Any]) -> None:
    """Recall@10 vs QPS per scenario: planner (filled) and unguarded (hollow), per index kind."""
    for i, (kind, block) in enumerate(correlated.items()):
        for r in block["rows"]:
            for label, face in (("planner", f"C{i}"), ("unguarded", "none")):
                ax.scatter(r[label]["recall"], r[label]["qps"], c=face, edgecolors=f"C{i}")
            xy = (r["planner"]["recall"], r["planner"]["qps"])
            ax.annotate(r["short"], xy, fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.scatter([], [], c=f"C{i}", label=f"{kind}: planner (hollow: unguarded)")
    ax.axvline(0.95, color="grey", lw=0.8, label="target recall@10")
    ax.set(yscale="log", xlabel="recall@10 vs exact filtered", ylabel="queries/s (batch)")
    ax.set_title("filters correlated with the vectors (region, industry)")
    ax.legend(fontsize=7)


def build_hnsw(x: np.ndarray, q: np.ndarray, ef_grid: tuple[int, ...]) -> dict[str, Any]:
    """HNSW (IndexConfig defaults) at the cheapest efSearch of ``ef_grid`` whose unfiltered
    recall@10 on the requests is >= 0.95 (else the best): index, info, sweep, build_seconds."""
    from ebr.config import IndexConfig
    from ebr.index.build.faiss_index import build_index
    from ebr.index.query.params import set_search_params
    from ebr.metrics import exact_topk

    build_s, (index, info) = timed(lambda: build_index(x, IndexConfig(kind="hnsw")))
    _, truth = exact_topk(x, q, K)
    sweep = []
    for ef in ef_grid:
        set_search_params(index, {"ef_search": ef})
        secs, found = timed(lambda: index.search(q, K)[1])
        sweep.append({"ef_search": ef, "recall": recall_of(found, truth), "qps": len(q) / secs})
    ok = [p for p in sweep if p["recall"] >= 0.95]
    chosen = ok[0] if ok else max(sweep, key=lambda p: p["recall"])
    set_search_params(index, {"ef_search": chosen["ef_search"]})
    return {"index": index, "info": info, "sweep": sweep, "build_seconds": build_s}


def summary(correlated: dict[str, Any]) -> dict[str, Any]:
    """Worst planner recall over the correlated filters per kind, and whether it meets 0.95."""
    out: dict[str, Any] = {}
    for kind, block in correlated.items():
        worst = min(block["rows"], key=lambda r: r["planner"]["recall"])
        out[f"correlated_{kind}_recall_min"] = worst["planner"]["recall"]
        out[f"correlated_{kind}_recall_min_filter"] = worst["name"]
        out[f"correlated_{kind}_unguarded_recall_min"] = min(
            r["unguarded"]["recall"] for r in block["rows"]
        )
    out["met_correlated_0.95"] = all(
        v >= 0.95 for k, v in out.items() if k.endswith("_recall_min") and "unguarded" not in k
    )
    return out
