"""Offline A/B readout: replay the marketplace's engagement model on the results each arm served.

    ebr experiment report --workspace var/demo [--experiment v2-vs-v1] [--out PATH]

Reads the impression log (``ebr.release.impressions``), keeps the requests of one experiment
and, for every request with a known member, computes the *expected* engagement the synthetic
marketplace's preference model gives the list that was shown (``ebr.data.replay``: the
generator's hidden state rebuilt from the tables, and its engagement funnel averaged over the
noise; a search is judged by what was typed, ``search_utility``, with the query serving
searched: the corrected one when it corrected a typo). Per request that is

- ``apply_rate`` / ``click_rate``: P(>= 1 apply / click among the shown jobs), the headline;
- ``applies_per_request`` / ``clicks_per_request``: expected number of applies / clicks.

Each arm's value is the mean over its requests, with a 95% percentile-bootstrap interval that
resamples *members* (the randomisation unit; a member's requests are correlated), and every
other arm is compared with the control (difference and its interval, from the same draws).
Anonymous requests cannot be replayed (no hidden preferences): they are counted, not scored.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import Workspace
from ebr.data.replay import QueryMatches, engagement_probabilities, hidden_from_tables
from ebr.io import atomic_write_bytes, atomic_write_json
from ebr.release.impressions import read_impressions
from ebr.release.state import read_state

METRICS = {
    "apply_rate": "P(>= 1 apply among the shown jobs) per request",
    "click_rate": "P(>= 1 click among the shown jobs) per request (saves, applies: clicked)",
    "applies_per_request": "expected applies per request",
    "clicks_per_request": "expected clicks per request",
}
MIN_MEMBERS = 10  # fewer members in an arm: too few clusters to call a difference


def score_requests(
    requests: pd.DataFrame, jobs: pd.DataFrame, members: pd.DataFrame
) -> pd.DataFrame:
    """Per logged request whose member is in ``members``: ``arm``, ``release``, ``member_id``,
    the METRICS and ``unknown_jobs`` (shown job ids missing from ``jobs``: never engaged)."""
    known = requests[requests["member_id"].isin(members["member_id"])].reset_index(drop=True)
    sub = members.set_index("member_id").loc[np.sort(known["member_id"].unique())].reset_index()
    typed = _typed(known)
    matcher = QueryMatches(jobs) if typed.notna().any() else None  # the whole catalogue's rule
    catalogue_row = pd.Series(np.arange(len(jobs)), index=jobs["job_id"].to_numpy())
    jobs = jobs[jobs["job_id"].isin(known["job_ids"].explode())].reset_index(drop=True)
    h = hidden_from_tables(jobs, sub)  # only what was shown: fast at any catalogue size
    lengths = known["job_ids"].map(len).to_numpy(int)
    req = np.repeat(np.arange(len(known)), lengths)
    shown = np.concatenate([np.asarray(j, dtype=np.int64) for j in known["job_ids"]] + [[]])
    position = np.concatenate([np.arange(n) for n in lengths] + [[]]).astype(int)
    job = pd.Series(np.arange(len(jobs)), index=jobs["job_id"]).reindex(shown).to_numpy()
    ok = ~np.isnan(job)
    mem = pd.Series(np.arange(len(sub)), index=sub["member_id"]).loc[known["member_id"]]
    match = np.full(len(shown), np.nan)  # feeds: NaN (profile utility)
    if matcher is not None:
        at = catalogue_row.reindex(shown).to_numpy()
        for r, text in typed.dropna().items():
            rows = np.flatnonzero(req == r)
            hit = ~np.isnan(at[rows])
            match[rows[hit]] = matcher(str(text))[at[rows[hit]].astype(int)]
    p_click, p_apply = np.zeros(len(shown)), np.zeros(len(shown))
    p_click[ok], p_apply[ok] = engagement_probabilities(
        h, mem.to_numpy(int)[req[ok]], job[ok].astype(int), position[ok], match[ok]
    )

    def per_request(x: np.ndarray) -> np.ndarray:
        return np.bincount(req, weights=x, minlength=len(known))

    def at_least_one(p: np.ndarray) -> np.ndarray:  # shown jobs engage independently
        return 1.0 - np.exp(per_request(np.log1p(-np.minimum(p, 1.0 - 1e-12))))

    out = known[["arm", "release", "member_id"]].copy()
    out["apply_rate"], out["click_rate"] = at_least_one(p_apply), at_least_one(p_click)
    out["applies_per_request"] = per_request(p_apply)
    out["clicks_per_request"] = per_request(p_click)
    out["unknown_jobs"] = per_request((~ok).astype(float)).astype(int)
    return out


def _typed(requests: pd.DataFrame) -> pd.Series:
    """Per request, the text it searched (the corrected query when serving corrected it; None
    for a feed or a search without a query)."""
    query = requests["query"] if "query" in requests else pd.Series(None, index=requests.index)
    if "corrected_query" in requests:
        query = requests["corrected_query"].where(requests["corrected_query"].notna(), query)
    query = query.where(query.notna(), None)
    if "kind" in requests:
        query = query.where(requests["kind"] == "search", None)
    return query.astype(object)


def _arm_draws(scored: pd.DataFrame, seed: int, arm: str, n_draws: int) -> tuple[Any, Any]:
    """Point estimates [len(METRICS)] (mean over requests) and their member-bootstrap draws
    [n_draws, len(METRICS)]; the stream depends on (seed, arm name) only."""
    by = scored.groupby("member_id", sort=True)
    n, s = by.size().to_numpy(float), by[list(METRICS)].sum().to_numpy()
    key = int.from_bytes(hashlib.sha256(arm.encode()).digest()[:8], "big")
    rng = np.random.default_rng([seed, key])
    draws = np.empty((n_draws, len(METRICS)))
    step = max(1, 1_000_000 // len(n))  # bounded memory: [step, members, metrics] per step
    for a in range(0, n_draws, step):
        idx = rng.integers(0, len(n), (min(step, n_draws - a), len(n)))
        draws[a : a + len(idx)] = s[idx].sum(axis=1) / n[idx].sum(axis=1)[:, None]
    return s.sum(axis=0) / n.sum(), draws


def _ci(draws: np.ndarray) -> list[float]:
    return [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def _control(ws: Workspace, experiment: str, arms: list[str]) -> str:
    """The experiment's first arm as started (``releases/state.json``: running, else its last
    start event), else the arm named 'control', else the first by name."""
    state = read_state(ws)
    running = state.get("experiment") or {}
    starts = [e["arms"] for e in state["events"] if e.get("action") == "start_experiment"
              and e.get("experiment") == experiment]  # fmt: skip
    specs = running["arms"] if running.get("name") == experiment else (starts or [None])[-1]
    if specs and specs[0]["arm"] in arms:
        return str(specs[0]["arm"])
    return "control" if "control" in arms else arms[0]


def ab_report(
    ws: Workspace,
    experiment: str | None = None,
    seed: int = 0,
    n_draws: int = 2000,
    control: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """The readout of ``experiment`` (default: the one of the latest logged experiment request)
    as a JSON-ready dict (module docstring); deterministic given ``seed``. ``kind``: only the
    requests of that kind ("search" or "recommendations")."""
    if seed < 0 or n_draws < 100:
        raise ValueError(f"seed must be >= 0 and n_draws >= 100, got {seed}, {n_draws}")
    log = read_impressions(ws)
    tagged = log[log["experiment"].notna()]
    if tagged.empty:
        raise ValueError(f"no experiment requests in the impression log under {ws.root}")
    name = experiment or str(tagged.loc[tagged["ts"].idxmax(), "experiment"])
    rows = tagged[tagged["experiment"] == name]
    if kind is not None:
        rows = rows[rows["kind"] == kind]
    if rows.empty:
        raise ValueError(f"no requests of {name!r}; logged: {sorted(set(tagged['experiment']))}")
    names = sorted(set(rows["arm"]))
    ctrl = control or _control(ws, name, names)
    if ctrl not in names:
        raise ValueError(f"control arm {ctrl!r} is not one of the logged arms {names}")
    members = pd.read_parquet(ws.data / "members.parquet")
    scored = score_requests(rows, pd.read_parquet(ws.data / "jobs.parquet"), members)
    arms: dict[str, Any] = {}
    draws: dict[str, tuple[Any, Any]] = {}
    for arm in names:
        mine, got = rows[rows["arm"] == arm], scored[scored["arm"] == arm]
        anonymous = int(mine["member_id"].isna().sum())
        arms[arm] = {
            "releases": sorted(set(mine["release"])), "requests": len(mine),
            "replayed_requests": len(got), "anonymous_requests": anonymous,
            "unknown_member_requests": len(mine) - len(got) - anonymous,
            "unknown_job_impressions": int(got["unknown_jobs"].sum()),
            "members": int(got["member_id"].nunique()),
        }  # fmt: skip
        if len(got):
            draws[arm] = _arm_draws(got, seed, arm, n_draws)
        for k, metric in enumerate(METRICS):
            est, d = draws.get(arm, (None, None))
            arms[arm][metric] = {"mean": None if est is None else float(est[k]),
                                 "ci95": None if d is None else _ci(d[:, k])}  # fmt: skip
    differences: dict[str, Any] = {}
    for arm in (a for a in names if a != ctrl and a in draws and ctrl in draws):
        (et, dt), (ec, dc) = draws[arm], draws[ctrl]
        enough = min(arms[arm]["members"], arms[ctrl]["members"]) >= MIN_MEMBERS
        differences[arm] = {}
        for k, metric in enumerate(METRICS):
            lo, hi = _ci(dt[:, k] - dc[:, k])
            differences[arm][metric] = {
                "diff": float(et[k] - ec[k]), "ci95": [lo, hi],
                "significant": (lo > 0 or hi < 0) if enough else None,
                "relative": float(et[k] / ec[k] - 1) if ec[k] > 0 else None,
            }  # fmt: skip
    return {
        "experiment": name, "control": ctrl, "seed": seed, "n_draws": n_draws, "kind": kind,
        "metrics": METRICS, "arms": arms, "differences": differences,
        "method": "expected engagement under the marketplace's preference model (noise "
        "integrated) per request; mean over requests; 95% percentile bootstrap resampling "
        "members within each arm; differences are arm minus control",
        "log": {"files": int(log.attrs["files"]), "torn_lines": int(log.attrs["torn_lines"]),
                "requests": len(rows), "first_ts": rows["ts"].min().isoformat(),
                "last_ts": rows["ts"].max().isoformat()},
    }  # fmt: skip


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Bar chart of apply and click rate per arm with 95% interval error bars (PNG, atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(report["arms"])
    fig = Figure(figsize=(3.0 + 1.6 * len(names), 3.8))
    FigureCanvasAgg(fig)  # no pyplot: no global backend switch in a serving process
    for ax, metric in zip(fig.subplots(1, 2), ("apply_rate", "click_rate"), strict=True):
        stats = [report["arms"][a][metric] for a in names]
        mean = np.array([s["mean"] if s["mean"] is not None else np.nan for s in stats])
        ci = np.array([s["ci95"] if s["ci95"] is not None else [np.nan] * 2 for s in stats])
        colors = ["#8c8c8c" if a == report["control"] else "#1f77b4" for a in names]
        ticks = [f"{a}\n(control)" if a == report["control"] else a for a in names]
        ax.bar(ticks, mean, yerr=[mean - ci[:, 0], ci[:, 1] - mean], capsize=6, color=colors)
        ax.set_title(metric.replace("_", " "))
        ax.set_ylabel(f"P(>= 1 {metric.split('_')[0]}) per request")
    fig.suptitle(f"{report['experiment']}: 95% member-bootstrap intervals", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def write_readout(
    ws: Workspace,
    experiment: str | None = None,
    control: str | None = None,
    kind: str | None = None,
    out: Path | None = None,
    seed: int = 0,
    n_draws: int = 2000,
) -> dict[str, Any]:
    """``ab_report``, written to ``out`` (default ``<workspace>/eval/ab_report_<experiment>
    .json``) with a PNG chart beside it; -> the readout."""
    report = ab_report(ws, experiment, seed=seed, n_draws=n_draws, control=control, kind=kind)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", report["experiment"])
    path = out or ws.root / "eval" / f"ab_report_{safe}.json"
    atomic_write_json(path, report)
    plot_report(report, path.with_suffix(".png"))
    return report
