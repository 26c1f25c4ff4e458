"""Catalogue-derived training pairs: text a job seeker could type -> the job it describes.

The impression log only teaches the words of the occupations people searched for (its head);
these pairs cover every job in the catalogue with its own words: the full title, the title
without its seniority prefix (the occupation's preferred label), a one- or two-word span of the
title, one of its skill phrases, or one of its occupation's ESCO alternative labels from the
half training may read (``eval_reserved`` keeps the other half for the typed-query
evaluation, ``ebr.eval.typed``); a span or skill phrase that happens to equal a reserved
alternative label of any occupation is replaced by the job's title.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ebr.data.esco_labels import alternative_labels, eval_reserved, label_key
from ebr.data.marketplace import TITLE_PREFIX

KINDS = ("title", "label", "span", "skill", "synonym")
_PREFIXES = tuple(p for p in TITLE_PREFIX if p)


def _label(title: str) -> str:
    for prefix in _PREFIXES:
        if title.startswith(prefix):
            return title[len(prefix) :]
    return title


def _span(title: str, rng: np.random.Generator) -> str:
    words = [w for w in _label(title).split() if len(w) > 2]  # skip 'of', 'and', ...
    if not words:
        return title
    width = min(len(words), 1 + int(rng.random() < 0.4))
    start = int(rng.integers(len(words) - width + 1))
    return " ".join(words[start : start + width])


def _reserved() -> frozenset[str]:
    """Normalised alternative labels the typed-query evaluation keeps out of training."""
    alt = alternative_labels()["alt_label"]
    return frozenset(label_key(a) for a in alt if eval_reserved(a))


def _synonyms() -> dict[str, list[str]]:
    """occupation uri -> its ESCO alternative labels training may read (the half
    ``eval_reserved`` leaves to training)."""
    alt = alternative_labels()
    out: dict[str, list[str]] = {}
    for uri, label in zip(alt["uri"], alt["alt_label"], strict=True):
        if not eval_reserved(label):
            out.setdefault(uri, []).append(label)
    return out


def catalogue_pairs(jobs: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` (query, job_id, kind) rows over jobs sampled uniformly (every occupation, not the
    log's head), each query one of ``KINDS`` picked at random."""
    if n <= 0 or jobs.empty:
        return pd.DataFrame({"query": [], "job_id": np.zeros(0, np.int64), "kind": []})
    rows = rng.integers(len(jobs), size=n)
    kinds = rng.integers(len(KINDS), size=n)
    titles = jobs["title"].to_numpy()[rows]
    skills = jobs["skills"].to_numpy()[rows] if "skills" in jobs.columns else [None] * n
    uris = (
        jobs["occupation_uri"].to_numpy()[rows] if "occupation_uri" in jobs.columns else [None] * n
    )
    synonyms = _synonyms() if "occupation_uri" in jobs.columns else {}
    queries = []
    for title, kind, skill, uri in zip(titles, kinds, skills, uris, strict=True):
        name = KINDS[kind]
        if name == "synonym" and synonyms.get(uri):
            queries.append(synonyms[uri][int(rng.integers(len(synonyms[uri])))])
        elif name == "skill" and skill is not None and len(skill):
            queries.append(str(skill[int(rng.integers(len(skill)))]))
        elif name == "label":
            queries.append(_label(title))
        elif name == "span":
            queries.append(_span(title, rng))
        else:
            queries.append(title)
    reserved = _reserved()
    for i, q in enumerate(queries):
        if label_key(q) in reserved:
            queries[i] = str(titles[i])
    return pd.DataFrame(
        {
            "query": queries,
            "job_id": jobs["job_id"].to_numpy(np.int64)[rows],
            "kind": [KINDS[k] for k in kinds],
        }
    )
