"""Featurizers shared by training, Beam batch inference and online serving (no train/serve skew).

Text becomes hashed word uni+bigram ids in fixed-width int64 slots (0 = padding), so records
stack into batches without ragged tensors. Categorical values hash into one shared table with a
field prefix ('city:Berlin'), which lets the two towers meet on the same city/seniority
embedding. Hashing uses crc32, stable across processes (Python's hash() is salted).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ebr.config import ModelConfig
from ebr.data.geo import unit_xyz

_WORD = re.compile(r"[a-z0-9]+")

# Fixed slot widths per text field (the body uses ModelConfig.max_tokens).
SHORT_TOKENS = 16  # titles, headlines, queries
SKILL_TOKENS = 48  # skill lists
ITEM_CATS = ("company", "industry", "seniority", "employment_type", "city", "country")
REQUEST_CATS = ("seniority", "city", "country", "preferred_employment_type")
ITEM_NUMS = 5  # xyz(3), remote, active
REQUEST_NUMS = 6  # xyz(3), open_to_remote, log commute, has_member


@lru_cache(maxsize=200_000)
def _hash_text(text: str, buckets: int) -> tuple[int, ...]:
    """Hashed unigram + bigram ids in [1, buckets); cached because descriptions repeat."""
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return tuple(1 + zlib.crc32(g.encode()) % (buckets - 1) for g in grams)


def text_ids(text: str | None, width: int, buckets: int) -> np.ndarray:
    """int64 [width]: hashed n-gram ids of ``text``, truncated / zero-padded."""
    out = np.zeros(width, dtype=np.int64)
    if text:
        ids = _hash_text(text, buckets)[:width]
        out[: len(ids)] = ids
    return out


def cat_id(field: str, value: Any, buckets: int) -> int:
    """Stable id of a categorical value in the shared table; id 0 means 'missing'."""
    if value is None or value == "":
        return 0
    return 1 + zlib.crc32(f"{field}:{value}".encode()) % (buckets - 1)


def _skills_text(skills: Any) -> str:
    if skills is None:
        return ""
    return " ".join(str(s) for s in skills)


def job_tensors(job: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Item-tower inputs of one job record (a row of jobs.parquet).

    Returns title int64 [16], body int64 [max_tokens], skills int64 [48], cats int64 [6],
    nums float32 [5].
    """
    b = cfg.hash_buckets
    xyz = unit_xyz(float(job["lat"]), float(job["lon"]))
    return {
        "title": text_ids(job["title"], SHORT_TOKENS, b),
        "body": text_ids(job["description"], cfg.max_tokens, b),
        "skills": text_ids(_skills_text(job["skills"]), SKILL_TOKENS, b),
        "cats": np.array([cat_id(f, job[f], cfg.cat_buckets) for f in ITEM_CATS], dtype=np.int64),
        "nums": np.concatenate(
            [xyz, [float(bool(job["remote"])), float(bool(job.get("active", True)))]]
        ).astype(np.float32),
    }


def request_tensors(
    query: str | None, member: Mapping[str, Any] | None, cfg: ModelConfig
) -> dict[str, np.ndarray]:
    """Request-tower inputs: optional query text + optional member profile record.

    Returns query int64 [16], headline int64 [16], skills int64 [48], cats int64 [4],
    nums float32 [6]. A missing member yields zeros (the 'anonymous search' case).
    """
    b = cfg.hash_buckets
    m = member or {}
    if member is not None:
        xyz = unit_xyz(float(m["lat"]), float(m["lon"]))
        extra = [
            float(bool(m.get("open_to_remote"))),
            float(np.log1p(float(m.get("max_commute_km") or 0.0)) / 5.0),
            1.0,
        ]
    else:
        xyz, extra = np.zeros(3, dtype=np.float32), [0.0, 0.0, 0.0]
    return {
        "query": text_ids(query, SHORT_TOKENS, b),
        "headline": text_ids(m.get("headline"), SHORT_TOKENS, b),
        "skills": text_ids(_skills_text(m.get("skills")), SKILL_TOKENS, b),
        "cats": np.array(
            [cat_id(f, m.get(f), cfg.cat_buckets) for f in REQUEST_CATS], dtype=np.int64
        ),
        "nums": np.concatenate([xyz, extra]).astype(np.float32),
    }


def stack(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-record tensors into a batch: each key -> [n, ...]."""
    if not rows:
        raise ValueError("cannot stack an empty list of records")
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def job_batch(records: Sequence[Mapping[str, Any]], cfg: ModelConfig) -> dict[str, np.ndarray]:
    return stack([job_tensors(r, cfg) for r in records])


def request_batch(
    queries: Sequence[str | None],
    members: Sequence[Mapping[str, Any] | None],
    cfg: ModelConfig,
) -> dict[str, np.ndarray]:
    if len(queries) != len(members):
        raise ValueError(f"{len(queries)} queries but {len(members)} members")
    return stack([request_tensors(q, m, cfg) for q, m in zip(queries, members, strict=True)])
