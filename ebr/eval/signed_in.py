"""Member-aware evaluation (issue 21): does a signed-in search keep what the member typed?

    section = evaluate_signed_in(model, mcfg, jobs, members, typed_queries(...), vocabulary)
    by_intent = search_by_intent(model, mcfg, cat, ev, held, member_q, texts, positives, today)

What is served is ``ebr.eval.signed_in_path``: anonymous requests as today, signed-in ones the
query-led list reordered by the member (``personal_rerank``); queries spelling-corrected first
as serving corrects them (``Spelling``). Sections:

- typed queries (``ebr.eval.typed``) each sent anonymously and by ``n_members`` members drawn
  across cities and occupations: per retrieval mode (ebr, term, hybrid) x path (anonymous,
  signed_in), precision@10 and recall@100 by query relevance (a job of a relevant occupation;
  unknown queries only count ``empty``, the share answered with nothing) and the personal fit
  of the top 10 for the member: ``fit`` (share within the member's commute radius, or remote
  when the member accepts it) and ``seniority_gap`` (mean |level difference|; anonymous
  results are judged against the same members); ratios signed_in / anonymous; by query kind;
  sweeps of the member's weight and of the commute decay's weight for hybrid (what chooses
  ``PERSONAL_WEIGHT`` and ``GEO_WEIGHT``);
- misspelled vs correctly spelled (the occupation label the typo was made from): p@10 per mode
  and path, served (corrected), correct, and uncorrected; how many corrections were exact;
- logged searches (``search_by_intent``, in the report's search section): recall@100 of the
  member-aware EBR, BM25, today's hybrid and each signed-in mode, by the session's ``intent``
  (profile vs exploring = adjacent + career_change; an old log is all profile).

Size: the member-aware section of the report (typed, misspelled, exploring and logged searches),
its figures and their table; the served path it scores is ``signed_in_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import ModelConfig
from ebr.eval.bm25 import BM25Baseline
from ebr.eval.signed_in_members import draw_members, personal_fit, session_intents
from ebr.eval.signed_in_path import (
    MODES,
    TOP,
    Catalogue,
    Served,
    Spelling,
    personal_cosines,
    query_led,
    serve,
    signed_in_candidates,
)
from ebr.eval.signed_in_path import K as K_SERVED
from ebr.eval.typed import KINDS
from ebr.eval.typed_scores import relevant_jobs, typed_metrics
from ebr.index.query.fusion import GEO_WEIGHT, PERSONAL_DEPTH, PERSONAL_WEIGHT, personal_rerank
from ebr.metrics import recall_at
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.towers import TwoTower
from ebr.text import Vocabulary, words

PATHS = ("anonymous", "signed_in")
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # the member's share the sweep tries (hybrid)
GEO_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)  # commute decay against the cosine (hybrid, at weight)
METRICS = ("p@10", "recall@100", "fit", "seniority_gap")
N_MEMBERS = 5


def _measure(
    cat: Catalogue,
    ranked: np.ndarray,
    relevant: Sequence[set[int]],
    panel: pd.DataFrame,
    rep: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per request: p@10, recall@100, fit, seniority_gap, empty. ``ranked`` [r, K] holds one
    list per request, or with ``rep`` one per query (request i reads query rep[i])."""
    metrics = typed_metrics(ranked, relevant)[["p@10", "recall@100"]]
    if rep is not None:
        metrics, ranked = metrics.iloc[rep].reset_index(drop=True), ranked[rep]
    fit = personal_fit(cat, ranked[:, :TOP], panel)
    return pd.concat([metrics, fit], axis=1).assign(empty=(ranked < 0).all(1))


def _mean(col: pd.Series) -> float | None:
    col = col.dropna()
    return float(col.mean()) if len(col) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _summary(per: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {m: _mean(per[m]) for m in METRICS}
    out["empty"] = float(per["empty"].mean()) if len(per) else None
    out["n"] = len(per)
    return out


def _block(anon: pd.DataFrame, signed: pd.DataFrame) -> dict[str, Any]:
    a, s = _summary(anon), _summary(signed)
    return {"anonymous": a, "signed_in": s, "ratio": {m: _ratio(s[m], a[m]) for m in METRICS}}


def _searched(spelling: Spelling | None, texts: Sequence[str]) -> tuple[list[str], list[Any]]:
    """The texts serving searches (corrected) and the corrections ([] without a speller)."""
    if spelling is None:
        return list(texts), []
    fixes = spelling.correct(texts)
    return [str(f.query) for f in fixes], fixes


def _requests(
    served: Served, rel: Sequence[set[int]], panel: pd.DataFrame
) -> tuple[pd.DataFrame, list[set[int]]]:
    """Per signed-in request (query rep[r], member r % m): its member's row and relevant jobs."""
    judges = panel.iloc[np.tile(np.arange(len(panel)), len(rel))].reset_index(drop=True)
    return judges, [rel[i] for i in served.rep]


def _per_path(
    served: Served, cat: Catalogue, rel: Sequence[set[int]], panel: pd.DataFrame, weight: float
) -> dict[tuple[str, str], pd.DataFrame]:
    """(mode, path) -> per-request measures (q * m rows, request r = query rep[r])."""
    judges, rel_r = _requests(served, rel, panel)
    out = {}
    for mode in MODES:
        out[mode, "anonymous"] = _measure(cat, served.anonymous[mode], rel, judges, served.rep)
        out[mode, "signed_in"] = _measure(cat, served.signed_in(mode, weight), rel_r, judges)
    return out


def evaluate_signed_in(
    model: TwoTower,
    mcfg: ModelConfig,
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    queries: pd.DataFrame,
    vocabulary: Vocabulary,
    *,
    interest: Mapping[pd.Timestamp, np.ndarray] | None = None,
    when: pd.Timestamp | None = None,
    bm25: BM25Baseline | None = None,
    item_vecs: np.ndarray | None = None,
    n_members: int = N_MEMBERS,
    seed: int = 0,
    weight: float = PERSONAL_WEIGHT,
    occupations: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The signed-in section (module docstring) of typed ``queries`` (``typed_queries``).

    ``vocabulary``: the words the towers know; ``interest`` and ``when`` (the request time):
    as ``evaluate_marketplace`` has them; ``occupations``: ESCO (``uri``, ``label``) for the
    misspellings' correct forms (default ``load_occupations()``). Returns {"members",
    "weight", "depth", "spelling", "n_queries", "overall": {mode: block}, "by_kind": {kind:
    {mode: block}}, "weight_sweep": {weight: {...}}, "misspelled", "targets"}, block =
    {"anonymous": summary, "signed_in": summary, "ratio": {metric: signed / anonymous}}.
    """
    model.eval()
    vecs = (
        encode_jobs(model.item, jobs.to_dict("records"), mcfg) if item_vecs is None else item_vecs
    )
    cat = Catalogue.of(jobs, vecs, bm25 or BM25Baseline(jobs))
    panel = draw_members(members, n_members, seed)
    spelling = Spelling.of(jobs, vocabulary)
    texts, fixes = _searched(spelling, queries["query"].tolist())

    def run(texts: Sequence[str]) -> Served:
        return serve(model, mcfg, cat, texts, vocabulary, panel, members, interest, when)

    served = run(texts)
    rel = relevant_jobs(jobs, queries)
    per = _per_path(served, cat, rel, panel, weight)
    kind = queries["kind"].to_numpy(object)[served.rep]
    known = kind != "unknown"
    overall = {m: _block(per[m, "anonymous"][known], per[m, "signed_in"][known]) for m in MODES}
    by_kind = {
        k: {
            m: _block(per[m, "anonymous"][kind == k], per[m, "signed_in"][kind == k]) for m in MODES
        }
        for k in KINDS
        if (kind == k).any()
    }
    judges, rel_r = _requests(served, rel, panel)
    anon = _summary(per["hybrid", "anonymous"][known])
    sweep = {}
    for w in WEIGHTS:
        s = _summary(_measure(cat, served.signed_in("hybrid", w), rel_r, judges)[known])
        sweep[f"{w:g}"] = {**s, **{f"{m}_ratio": _ratio(s[m], anon[m]) for m in METRICS}}
    geo_sweep = {}
    for g in GEO_WEIGHTS:
        per_g = _measure(cat, served.signed_in("hybrid", weight, geo_weight=g), rel_r, judges)
        sg = _summary(per_g[known])
        geo_sweep[f"{g:g}"] = {**sg, **{f"{m}_ratio": _ratio(sg[m], anon[m]) for m in METRICS}}
    changed = [bool(f.corrected) for f in fixes]
    mis = _misspelled(run, cat, panel, jobs, queries, spelling, weight, occupations)
    hybrid = overall["hybrid"]
    mis_hybrid = mis.get("p@10", {}).get("hybrid", {})
    targets = {
        "hybrid_signed_in_p@10_ratio_ge_0.95": (hybrid["ratio"]["p@10"] or 0) >= 0.95,
        "hybrid_signed_in_fit_ratio_ge_1.5": (hybrid["ratio"]["fit"] or 0) >= 1.5,
        "misspelled_p@10_ge_0.9x_correct": bool(mis_hybrid)
        and all((mis_hybrid[p]["ratio"] or 0) >= 0.9 for p in PATHS),
        "anonymous_hybrid_p@10_ge_0.85": (hybrid["anonymous"]["p@10"] or 0) >= 0.85,
        "anonymous_ebr_p@10_ge_term": (overall["ebr"]["anonymous"]["p@10"] or 0)
        >= (overall["term"]["anonymous"]["p@10"] or 0),
    }
    cols = ["member_id", "headline", "city", "country", "seniority", "max_commute_km"]
    return {
        "members": panel[[*cols, "open_to_remote"]].to_dict("records"),
        "weight": weight,
        "depth": PERSONAL_DEPTH,
        "spelling": {"available": spelling is not None, "changed": int(sum(changed))},
        "n_queries": queries["kind"].value_counts().to_dict(),
        "overall": overall,
        "by_kind": by_kind,
        "weight_sweep": sweep,
        "geo_weight": GEO_WEIGHT,
        "geo_sweep": geo_sweep,
        "misspelled": mis,
        "targets": targets,
    }


def _misspelled(
    run: Callable[[Sequence[str]], Served],
    cat: Catalogue,
    panel: pd.DataFrame,
    jobs: pd.DataFrame,
    queries: pd.DataFrame,
    spelling: Spelling | None,
    weight: float,
    occupations: pd.DataFrame | None,
) -> dict[str, Any]:
    """p@10 of the misspelled typed queries served (corrected), their correct forms (the
    occupation label, served too) and, for reference, uncorrected; per mode and path."""
    sub = queries[queries["kind"] == "misspelled"].reset_index(drop=True)
    if sub.empty:
        return {"n": 0}
    if occupations is None:
        from ebr.data.esco import load_occupations

        occupations = load_occupations()
    label = occupations.set_index("uri")["label"]
    correct = [" ".join(words(label[u])) for u in sub["occupation_uri"]]
    rel = relevant_jobs(jobs, sub)
    forms = {
        "misspelled": _searched(spelling, sub["query"].tolist()),
        "correct": _searched(spelling, correct),
        "uncorrected": (sub["query"].tolist(), []),
    }
    p10: dict[str, dict[str, dict[str, float | None]]] = {m: {p: {} for p in PATHS} for m in MODES}
    for form, (texts, _) in forms.items():
        served = run(texts)
        for (mode, path), per in _per_path(served, cat, rel, panel, weight).items():
            p10[mode][path][form] = _mean(per["p@10"])
    for mode in MODES:
        for path in PATHS:
            cell = p10[mode][path]
            cell["ratio"] = _ratio(cell["misspelled"], cell["correct"])
    searched, fixes = forms["misspelled"]
    return {
        "n": len(sub),
        "changed": sum(bool(f.corrected) for f in fixes),
        "corrected_exactly": sum(
            words(t) == words(c) for t, c in zip(searched, correct, strict=True)
        ),
        "unresolved": sum(bool(getattr(f, "unresolved", ())) for f in fixes),
        "p@10": p10,
        "examples": [
            {"query": q, "searched": t, "correct": c}
            for q, t, c in list(zip(sub["query"], searched, correct, strict=True))[:12]
        ],
    }


def search_by_intent(
    model: TwoTower,
    mcfg: ModelConfig,
    cat: Catalogue,
    sessions: pd.DataFrame,
    held: pd.DataFrame,
    member_q: np.ndarray,
    positives: Sequence[set[int]],
    today: Mapping[str, np.ndarray],
    members: pd.DataFrame,
    weight: float = PERSONAL_WEIGHT,
) -> dict[str, dict[str, Any]]:
    """Recall@100 on held-out logged searches by intent: {group: {"sessions": n, "recall@100":
    {method: float | None}}}, groups all, profile, exploring (every other intent) and each
    other intent. Methods: ``today`` (name -> ranked ids [n, >=100]: the report's member-aware
    EBR, BM25, hybrid) and signed_in_<mode> (``signed_in_candidates`` + ``personal_rerank``
    with the member-aware embeddings ``member_q`` float32 [n, dim], the sessions' rows, and
    the commute decay for each session's member, a row of ``members``)."""
    texts = [str(q) for q in sessions["query"]]
    whens = sessions["ts"].tolist()
    anon = encode_requests(model.request, texts, [None] * len(texts), mcfg, whens=whens)
    led = query_led(cat, anon, texts, np.ones(len(texts), dtype=bool), PERSONAL_DEPTH)
    candidates = signed_in_candidates(cat, led, np.arange(len(texts)), member_q, anon, texts)
    ranked = dict(today)
    homes = members.set_index("member_id").loc[sessions["member_id"].to_numpy()].reset_index()
    for mode in MODES:
        ids, scores = candidates[mode]
        personal = personal_cosines(cat, ids, member_q) + GEO_WEIGHT * cat.decay(ids, homes)
        ranked[f"signed_in_{mode}"] = personal_rerank(ids, scores, personal, K_SERVED, weight)[1]
    intent = session_intents(held, sessions["session_id"])
    groups = {"all": np.ones(len(intent), dtype=bool), "profile": intent == "profile"}
    groups["exploring"] = ~groups["profile"]
    groups |= {str(i): intent == i for i in sorted(set(intent) - {"profile"})}
    out = {}
    for name, mask in groups.items():
        pos = [p for p, keep in zip(positives, mask, strict=True) if keep]
        out[name] = {
            "sessions": int(mask.sum()),
            "recall@100": {
                m: recall_at(r[mask], pos, [100])[100] if mask.any() else None
                for m, r in ranked.items()
            },
        }
    return out
