"""Signed-in search (issue 21): typed queries sent anonymously and by members, as served.

    python -m benchmarks.signed_in [--workspace var/demo] [--version v1] [--name signed_in]

On a workspace's model (default var/demo, `make demo`; a workspace without one is built first at
``--size`` jobs, the data and training benchmarks.typed_queries uses), the evaluation report
(``ebr.eval.report.evaluate_marketplace``, exact search, the model's training vocabulary and
member interest) with its member-aware sections (``ebr.eval.signed_in``):

- typed queries (alternative labels, title words, misspellings, reorderings, common searches;
  ``ebr.eval.typed``) each sent anonymously and by 5 members drawn across cities and
  occupations, through the served path (spelling correction; anonymous as today; signed in:
  the query-led list, PERSONAL_DEPTH deep, reordered by the member with ``personal_rerank``):
  precision@10 and recall@100 by query relevance and personal fit of the top 10 (share within
  the member's commute radius or remote when accepted; mean seniority gap) for ebr, term and
  hybrid, signed in / anonymous ratios, by query kind; a sweep of the member's weight (hybrid);
- misspelled vs correctly spelled forms of the same queries (served, and uncorrected);
- held-out logged searches split by intent (profile-consistent vs exploring; an old world's
  log is all profile): recall@100 of the member-aware EBR, BM25, today's hybrid and each
  signed-in mode;
- with a live release (`make demo`): the request path in process, p50 of one signed-in search
  before (the member-aware embedding alone) and now (``Release.search``), alternating.

Targets (issue 21): hybrid signed-in p@10 >= 0.95x anonymous and fit >= 1.5x; misspelled
p@10 >= 0.9x the correct forms; anonymous hybrid p@10 >= 0.85 and EBR >= BM25; logged searches:
EBR recall@100 >= 1.3x BM25, exploring within 0.05 of profile (served signed-in hybrid);
request path p50 within +1 ms (hybrid). A
missed target is a recorded result. Writes benchmarks/results/<name>.json and <name>.png
(~5 min at 20,000 jobs on 2 cores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.common import TABLES, pyplot, save_figure, write_result
from ebr.eval.signed_in_path import MODES


def _ensure(root: Path, size: int, epochs: int, seed: int) -> dict[str, Any] | None:
    """A workspace with data and a model under ``root``: built when it has none (the
    marketplace, then the interest and composite models benchmarks.typed_queries trains)."""
    from benchmarks.typed_queries import _models
    from ebr.config import DataConfig, Workspace
    from ebr.data.marketplace import write_marketplace

    ws = Workspace(root)
    if any(ws.models.glob("*/model.json")):
        return None
    if not (ws.data / "impressions.parquet").is_file():
        write_marketplace(DataConfig(n_jobs=size, seed=seed), ws.data)
    return _models(ws.data, root, epochs)


def _version(root: Path, version: str | None) -> str:
    from ebr.config import Workspace

    found = sorted(
        (p.parent.name for p in Workspace(root).models.glob("*/model.json")),
        key=lambda v: (len(v), v),  # v2 before v10
    )
    if not found:
        raise typer.BadParameter(f"{root} holds no model")
    if version is not None and version not in found:
        raise typer.BadParameter(f"{root} has no model {version!r}; it has {found}")
    return version or found[-1]


def _report(root: Path, version: str, query_seed: int) -> tuple[dict[str, Any], Any]:
    """evaluate_marketplace of model ``version`` with typed queries (signed-in sections)."""
    import pandas as pd

    from ebr.config import Workspace
    from ebr.data.esco import load_occupations
    from ebr.eval.report import evaluate_marketplace
    from ebr.eval.typed import typed_queries
    from ebr.model.artifact import load_two_tower, load_vocabulary
    from ebr.model.interest import load_interest_snapshots
    from ebr.text import training_vocabulary
    from ebr.versions import eval_days, interest_paths, verified_interest, version_paths

    ws = Workspace(root)
    t = {n: pd.read_parquet(ws.data / f"{n}.parquet") for n in TABLES}
    tables = (t["jobs"], t["members"], t["impressions"])
    model, mcfg, meta = load_two_tower(version_paths(ws, version).model)
    days = eval_days(meta)
    iv = verified_interest(ws, meta)
    snaps = None
    if iv is not None:
        snaps = load_interest_snapshots(interest_paths(ws, iv).model, *tables, days)
    vocab = load_vocabulary(version_paths(ws, version).model) or training_vocabulary(*tables)
    queries = typed_queries(t["jobs"], t["impressions"], load_occupations(), query_seed, 2, vocab)
    report = evaluate_marketplace(
        model, mcfg, *tables, days, interest=snaps, typed=queries, vocabulary=vocab
    )
    return report, t["impressions"]


def _logged_targets(search: dict[str, Any]) -> dict[str, bool]:
    methods, split = search["methods"], search["methods_by_intent"]
    served = "signed_in_hybrid"
    explore, profile = (split[g]["recall@100"][served] for g in ("exploring", "profile"))
    return {
        "logged_ebr_recall@100_ge_1.3x_bm25": methods["ebr"]["recall@100"]
        >= 1.3 * methods["bm25"]["recall@100"],
        "logged_exploring_within_0.05_of_profile": explore is not None
        and abs(explore - profile) <= 0.05,
    }


def _request_path(root: Path, n: int) -> dict[str, Any] | None:
    """In-process p50 of one search (query + member, k=10) on the workspace's live release,
    before (the member-aware embedding searched alone, hybrid at HYBRID_EBR_WEIGHT_MEMBER) and
    now (``Release.search``: spelling, both embeddings, the query-led candidates reordered),
    alternating on the same warm release; None without a live release."""
    import random
    import statistics

    import pandas as pd

    from ebr.config import Workspace
    from ebr.release.record import read_release
    from ebr.release.state import read_state
    from feature_repo.store import open_store
    from serving.loaded_release import LoadedRelease

    ws = Workspace(root)
    live = read_state(ws).get("live")
    if live is None:
        return None
    rel = LoadedRelease(ws, open_store(ws.feature_repo), read_release(ws, live), False, 1.0)
    members = pd.read_parquet(ws.data / "members.parquet")["member_id"].astype(int).tolist()
    rng = random.Random(1)
    queries = ["data engineer", "nurse", "sales manager", "software developer", "accountant",
               "warehouse worker", "teacher", "project manager", "chef", "electrician"]  # fmt: skip
    out: dict[str, Any] = {}
    for retrieval in MODES:
        before, now = [], []
        for i in range(n + 20):
            q, m = rng.choice(queries), rng.choice(members)
            t0 = time.perf_counter()
            rel.encoder.understand(rel.speller.correct(q)[0])  # as Release.search did
            vec = rel.encoder.encode(q, m)
            rel.index.retrieve(vec, 10, None, q, retrieval, True)
            t1 = time.perf_counter()
            rel.answer(q, m, 10, None, retrieval)
            t2 = time.perf_counter()
            if i >= 20:  # warm-up
                before.append(t1 - t0)
                now.append(t2 - t1)
        b, a = statistics.median(before) * 1e3, statistics.median(now) * 1e3
        out[retrieval] = {"before_p50_ms": round(b, 3), "now_p50_ms": round(a, 3),
                          "delta_ms": round(a - b, 3)}  # fmt: skip
    return out


def _plot(section: dict[str, Any], split: dict[str, Any], targets: dict[str, bool]) -> Any:
    from ebr.eval.signed_in_tables import signed_in_bars, sweep_lines

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    signed_in_bars(axes[0, 0], section)
    kinds = [k for k in section["by_kind"] if k != "unknown"]
    for j, (metric, path) in enumerate(
        [(m, p) for m in ("p@10", "fit") for p in ("anonymous", "signed_in")]
    ):
        vals = [section["by_kind"][k]["hybrid"][path][metric] or 0.0 for k in kinds]
        axes[0, 1].bar([i + (j - 1.5) * 0.2 for i in range(len(kinds))], vals, 0.2,
                       label=f"{metric} {path}")  # fmt: skip
    axes[0, 1].set_xticks(range(len(kinds)), kinds, rotation=20, fontsize=8)
    axes[0, 1].set(ylim=(0, 1.05), title="hybrid by query kind")
    axes[0, 1].legend(fontsize=7)
    sweep_lines(axes[0, 2], section)
    mis = section["misspelled"]
    if mis.get("n"):
        cells = [(m, p) for m in MODES for p in ("anonymous", "signed_in")]
        for j, form in enumerate(("uncorrected", "misspelled", "correct")):
            vals = [mis["p@10"][m][p][form] or 0.0 for m, p in cells]
            xs = [i + (j - 1) * 0.27 for i in range(len(cells))]
            axes[1, 0].bar(xs, vals, 0.27, label=form.replace("misspelled", "misspelled, served"))
        axes[1, 0].set_xticks(range(len(cells)), [f"{m}\n{p[:4]}" for m, p in cells], fontsize=7)
        title = f"{mis['n']} misspellings ({mis['corrected_exactly']} fixed exactly)"
        axes[1, 0].set(ylim=(0, 1.05), ylabel="precision@10", title=title)
        axes[1, 0].legend(fontsize=7)
    groups = [g for g in split if split[g]["sessions"]]
    methods = list(split["all"]["recall@100"])
    for j, g in enumerate(groups):
        vals = [split[g]["recall@100"][m] or 0.0 for m in methods]
        width = 0.8 / len(groups)
        axes[1, 1].bar([i + (j - (len(groups) - 1) / 2) * width for i in range(len(methods))],
                       vals, width, label=f"{g} ({split[g]['sessions']})")  # fmt: skip
    axes[1, 1].set_xticks(range(len(methods)), methods, rotation=25, fontsize=7)
    axes[1, 1].set(ylim=(0, 1.05), ylabel="recall@100", title="logged searches by intent")
    axes[1, 1].legend(fontsize=7)
    axes[1, 2].axis("off")
    axes[1, 2].text(0, 1, "\n".join(f"{'met ' if v else 'MISS'}  {k}" for k, v in targets.items()),
                    va="top", family="monospace", fontsize=8)  # fmt: skip
    return fig


def main(
    workspace: Annotated[Path, typer.Option(help="workspace (`make demo` builds var/demo)")] = Path(
        "var/demo"
    ),
    version: Annotated[str | None, typer.Option(help="model version (default: newest)")] = None,
    size: Annotated[int, typer.Option(help="jobs, when the workspace must be built")] = 20_000,
    epochs: Annotated[int, typer.Option(help="training epochs, when built")] = 6,
    seed: Annotated[int, typer.Option(help="marketplace seed, when built")] = 7,
    query_seed: Annotated[int, typer.Option(help="seed of the typed-query draw")] = 0,
    name: Annotated[str, typer.Option(help="result file name")] = "signed_in",
    requests: Annotated[
        int, typer.Option(help="in-process requests per mode timing the request path (0: skip)")
    ] = 300,
) -> None:
    t0 = time.perf_counter()
    built = _ensure(workspace, size, epochs, seed)
    v = _version(workspace, version)
    t1 = time.perf_counter()
    report, impressions = _report(workspace, v, query_seed)
    section, search = report["signed_in"], report["search"]
    targets = {**section["targets"], **_logged_targets(search)}
    path = _request_path(workspace, requests) if requests else None
    if path is not None:
        targets["request_path_p50_within_1ms"] = path["hybrid"]["delta_ms"] <= 1.0
    summary = {
        "world": "intent" if "intent" in impressions.columns else "profile (no intent column)",
        "targets": targets,
        "ratios": {m: section["overall"][m]["ratio"] for m in MODES},
        "p@10": {
            m: {p: section["overall"][m][p]["p@10"] for p in ("anonymous", "signed_in")}
            for m in MODES
        },
        "weight": section["weight"],
        "geo_weight": section["geo_weight"],
        "request_path": path,
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "build_seconds": round(t1 - t0, 1) if built is not None else 0.0,
    }
    write_result(
        name,
        threads=2,
        params={
            "workspace": str(workspace),
            "version": v,
            "query_seed": query_seed,
            "size_if_built": size,
            "epochs_if_built": epochs,
            "seed_if_built": seed,
            "requests": requests,
        },  # fmt: skip
        results={
            "summary": summary,
            "signed_in": section,
            "logged_by_intent": search["methods_by_intent"],
            "logged_search": search["methods"],
            "jymbii": report.get("jymbii", {}).get("methods"),
            "typed_anonymous_p@10": {
                m: v["overall"]["p@10"] for m, v in report["typed"]["methods"].items()
            },
        },
    )
    fig = _plot(section, search["methods_by_intent"], targets)
    fig.suptitle(
        f"signed-in search on {workspace} ({v}): member weight {section['weight']:g}, "
        f"{len(section['members'])} members, {summary['world']} world",
        fontsize=10,
    )
    save_figure(fig, name)
    keys = ("world", "targets", "p@10", "ratios", "request_path")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    print("member weight (geo weight GEO_WEIGHT) / geo weight (member weight PERSONAL_WEIGHT):")
    print("weight  p@10  p@10_ratio  fit  fit_ratio  seniority_gap")
    for w, s in [*section["weight_sweep"].items(), *section["geo_sweep"].items()]:
        print(f"{w:>5} {s['p@10']:.3f} {s['p@10_ratio']:.3f} {s['fit']:.3f} {s['fit_ratio']:.3f} "
              f"{s['seniority_gap']:.3f}")  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
