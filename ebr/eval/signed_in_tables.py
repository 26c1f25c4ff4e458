"""The signed-in section (``ebr.eval.signed_in``) as HTML tables (the Flyte Deck, via
``ebr.eval.report.report_html``) and matplotlib panels (the report's PNG, the benchmark's)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ebr.eval.signed_in_path import MODES

PATHS = ("anonymous", "signed_in")


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_f(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table border='1'><tr>{th}</tr>{body}</table>"


def signed_in_rows(section: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, mode, block) rows: group overall, then kind:<kind>; block as in the section."""
    groups = [("overall", section["overall"])]
    groups += [(f"kind:{k}", v) for k, v in section["by_kind"].items()]
    return [(g, m, blocks[m]) for g, blocks in groups for m in MODES]


def signed_in_html(section: Mapping[str, Any]) -> str:
    """Tables: signed in vs anonymous by query kind x retrieval; the member-weight sweep; the
    misspellings; the targets; the members the queries were sent with."""
    head = ["queries", "retrieval", "n"]
    head += [f"{m} {p}" for m in ("p@10", "recall@100") for p in ("anon", "signed", "ratio")]
    head += ["fit anon", "fit signed", "fit ratio", "seniority gap anon", "signed", "empty anon"]
    rows = []
    for group, mode, b in signed_in_rows(section):
        a, s, r = b["anonymous"], b["signed_in"], b["ratio"]
        cells: list[Any] = [group, mode, s["n"]]
        for m in ("p@10", "recall@100", "fit"):
            cells += [a[m], s[m], r[m]]
        cells += [a["seniority_gap"], s["seniority_gap"], a["empty"]]
        rows.append(cells)
    spell = section["spelling"]
    parts = [
        f"<h3>signed-in typed queries: {len(section['members'])} members x "
        f"{sum(section['n_queries'].values())} queries, member weight {section['weight']:g}, "
        f"query-led depth {section['depth']}, spelling correction "
        f"{'on' if spell['available'] else 'unavailable'} ({spell['changed']} changed)</h3>",
        _table(head, rows),
        "<h4>hybrid by member weight (0: the query-led order)</h4>",
        _table(
            ["weight", "p@10", "p@10 ratio", "recall@100", "fit", "fit ratio", "seniority gap"],
            (
                [
                    w,
                    v["p@10"],
                    v["p@10_ratio"],
                    v["recall@100"],
                    v["fit"],
                    v["fit_ratio"],
                    v["seniority_gap"],
                ]
                for w, v in section["weight_sweep"].items()
            ),
        ),  # fmt: skip
    ]
    mis = section["misspelled"]
    if mis.get("n"):
        parts.append(
            f"<h4>misspelled vs correctly spelled ({mis['n']} queries; corrected to the exact "
            f"words {mis['corrected_exactly']}, changed {mis['changed']}, unresolved "
            f"{mis['unresolved']})</h4>"
        )
        parts.append(
            _table(
                ["retrieval", "path", "misspelled (served)", "correct", "ratio", "uncorrected"],
                (
                    [m, p, c["misspelled"], c["correct"], c["ratio"], c["uncorrected"]]
                    for m in MODES
                    for p, c in mis["p@10"][m].items()
                ),
            )
        )
    parts.append("<h4>targets</h4>" + _table(["target", "met"], section["targets"].items()))
    cols = ["member_id", "headline", "city", "country", "seniority", "max_commute_km"]
    parts.append(
        "<h4>members</h4>"
        + _table([*cols, "open_to_remote"], ([r[c] for c in [*cols, "open_to_remote"]]
                                              for r in section["members"]))
    )  # fmt: skip
    return "\n".join(parts)


def intent_html(by_intent: Mapping[str, Mapping[str, Any]]) -> str:
    """The logged searches split by intent: recall@100 per method and group."""
    groups = list(by_intent)
    methods = list(next(iter(by_intent.values()))["recall@100"])
    head = ["method", *(f"{g} ({by_intent[g]['sessions']})" for g in groups)]
    rows = ([m, *(by_intent[g]["recall@100"][m] for g in groups)] for m in methods)
    return "<h4>logged searches by intent: recall@100 (sessions)</h4>" + _table(head, rows)


def signed_in_bars(ax: Any, section: Mapping[str, Any]) -> None:
    """p@10 and personal fit per retrieval, anonymous vs signed in (the report PNG's panel)."""
    bars = [(f"{m} {p}", [section["overall"][mode][p][m] or 0.0 for mode in MODES])
            for m in ("p@10", "fit") for p in PATHS]  # fmt: skip
    x = np.arange(len(MODES))
    for j, (name, vals) in enumerate(bars):
        ax.bar(x + (j - 1.5) * 0.2, vals, 0.2, label=name)
    ax.set_xticks(x, list(MODES))
    ax.set(
        ylim=(0, 1.05),
        ylabel="share of the top 10",
        title=f"signed in vs anonymous ({len(section['members'])} members, weight "
        f"{section['weight']:g})",
    )
    ax.legend(fontsize=7)


def sweep_lines(ax: Any, section: Mapping[str, Any]) -> None:
    """hybrid p@10 ratio and fit ratio (signed in / anonymous) by member weight."""
    sweep = section["weight_sweep"]
    w = [float(k) for k in sweep]
    for key in ("p@10_ratio", "fit_ratio"):
        ax.plot(w, [v[key] or 0.0 for v in sweep.values()], marker="o", label=key)
    ax.axhline(0.95, ls=":", c="C0")
    ax.axhline(1.5, ls=":", c="C1")
    ax.axvline(section["weight"], ls="--", c="k", lw=0.8)
    ax.set(xlabel="member weight", ylabel="signed in / anonymous", title="hybrid by weight")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
