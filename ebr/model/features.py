"""Featurizers shared by training, Beam batch inference and online serving (no train/serve skew).

Text becomes hashed word uni+bigram ids in fixed-width int64 slots (0 = padding), so records
stack into batches without ragged tensors. Categorical values hash into one shared table with a
field prefix ('city:Berlin'), which lets the two towers meet on the same city/seniority
embedding. Hashing uses crc32, stable across processes (Python's hash() is salted).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import ModelConfig
from ebr.data.geo import unit_xyz
from ebr.model.towers import TowerSpec
from ebr.text import words

# Fixed slot widths per text field (the body uses ModelConfig.max_tokens).
SHORT_TOKENS = 16  # titles, headlines, queries (words + bigrams)
PHRASE_TOKENS = 64  # the same with character trigrams (ModelConfig.subwords)
SKILL_TOKENS = 48  # skill lists
ITEM_CATS = ("company", "industry", "seniority", "employment_type", "city", "country")
REQUEST_CATS = ("seniority", "city", "country", "preferred_employment_type")
ITEM_NUMS = 6  # xyz(3), has_location, remote, active
PROFILE_NUMS = 6  # xyz(3), has_location, open_to_remote, log commute (profile_nums)
REQUEST_NUMS = PROFILE_NUMS + 1  # + has_member
CONTEXT_NUMS = 4  # request time: sin/cos of hour of day and of day of week
MINILM_NUMS = 384  # all-MiniLM-L6-v2 sentence embedding (text_encoder hashed+minilm)


def _minilm(cfg: ModelConfig) -> bool:
    return cfg.text_encoder == "hashed+minilm"


def _sentence(text: str | None, cfg: ModelConfig) -> list[np.ndarray]:
    """[float32 [384]] MiniLM vector of ``text`` when the config uses it, else []."""
    if not _minilm(cfg):
        return []
    from ebr.model.sentence import sentence_vectors

    return [sentence_vectors([text])[0]]


def warm_texts(texts: Sequence[str | None], cfg: ModelConfig) -> None:
    """Embed a batch's distinct texts in one MiniLM call (the per-record calls then hit the
    memo instead of running the encoder one string at a time)."""
    if _minilm(cfg):
        from ebr.model.sentence import sentence_vectors

        sentence_vectors(list({t for t in texts if isinstance(t, str) and t}))


def request_spec(cfg: ModelConfig) -> TowerSpec:
    """Request-tower inputs: query only, or query + profile + interest + context; the query's
    MiniLM vector (384 nums) with text_encoder hashed+minilm."""
    sentence = MINILM_NUMS if _minilm(cfg) else 0
    if cfg.request_inputs == "query":
        return TowerSpec(texts=("query",), n_cats=0, n_nums=sentence, skip="query")
    interest = 1 + cfg.interest_dim if cfg.interest_dim else 0  # has_interest flag + vector
    return TowerSpec(
        texts=("query", "headline", "skills"),
        n_cats=len(REQUEST_CATS),
        n_nums=REQUEST_NUMS + CONTEXT_NUMS + interest + sentence,
        skip="query",
    )


HISTORY_TOKENS = 64  # hashed n-gram slots of the member-interest history text
MEMBER_SPEC = TowerSpec(  # the member-interest model's member tower (ebr.model.interest)
    texts=("headline", "skills", "history"), n_cats=len(REQUEST_CATS), n_nums=PROFILE_NUMS
)


def interest_specs(cfg: ModelConfig) -> tuple[TowerSpec, TowerSpec]:
    """(member spec, item spec) of the member-interest model."""
    return MEMBER_SPEC, item_spec(cfg)


def item_spec(cfg: ModelConfig) -> TowerSpec:
    """Item-tower inputs: title, description, skills; company, industry, seniority, ...; geo;
    the title's MiniLM vector with text_encoder hashed+minilm."""
    nums = ITEM_NUMS + (MINILM_NUMS if _minilm(cfg) else 0)
    return TowerSpec(
        texts=("title", "body", "skills"), n_cats=len(ITEM_CATS), n_nums=nums, skip="title"
    )


def trigrams(word: str) -> list[str]:
    """Character trigrams of ``<word>`` marked ``#`` so none collides with a word: 'nurse' ->
    #<nu #nur #urs #rse #se>. A misspelling keeps most of them ('nusre' shares #<nu, #se>)."""
    w = f"<{word}>"
    return [f"#{w[i : i + 3]}" for i in range(len(w) - 2)]


@lru_cache(maxsize=200_000)
def _hash_text(text: str, buckets: int, subwords: bool = False) -> tuple[int, ...]:
    """Hashed ids in [1, buckets) of the normalised words (``ebr.text``): unigrams,
    bigrams, then (``subwords``) each word's character trigrams; cached because texts repeat."""
    ws = words(text)
    grams = ws + [f"{a} {b}" for a, b in zip(ws, ws[1:], strict=False)]
    if subwords:
        grams += [g for w in ws for g in trigrams(w)]
    return tuple(1 + zlib.crc32(g.encode()) % (buckets - 1) for g in grams)


def text_ids(text: str | None, width: int, buckets: int, subwords: bool = False) -> np.ndarray:
    """int64 [width]: hashed n-gram ids of ``text``, truncated / zero-padded (words first, so
    truncation drops trigrams before words)."""
    out = np.zeros(width, dtype=np.int64)
    if isinstance(text, str) and text:  # None or NaN (a null in a pandas column): no words
        ids = _hash_text(text, buckets, subwords)[:width]
        out[: len(ids)] = ids
    return out


def phrase_ids(text: str | None, cfg: ModelConfig) -> np.ndarray:
    """int64 [16 | 64]: a title, query or headline; with ``cfg.subwords`` its trigrams too."""
    width = PHRASE_TOKENS if cfg.subwords else SHORT_TOKENS
    return text_ids(text, width, cfg.hash_buckets, cfg.subwords)


def cat_id(field: str, value: Any, buckets: int) -> int:
    """Stable id of a categorical value in the shared table; id 0 means 'missing' (None, "",
    or NaN, which is how a pandas column holds a null)."""
    if not _present(value) or value == "":
        return 0
    return 1 + zlib.crc32(f"{field}:{value}".encode()) % (buckets - 1)


def _skills_text(skills: Any) -> str:
    if isinstance(skills, str):
        return skills
    if not _present(skills):  # null: None, or NaN in a pandas column
        return ""
    return " ".join(str(s) for s in skills)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def location_nums(lat: Any, lon: Any) -> np.ndarray:
    """float32 [4]: xyz on the unit sphere + has_location 1, or zeros when the location is
    null (records.py: both or neither), so the towers learn "unknown" instead of a place."""
    if not (_present(lat) and _present(lon)):
        return np.zeros(4, dtype=np.float32)
    return np.append(unit_xyz(float(lat), float(lon)), 1.0).astype(np.float32)


def job_tensors(job: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Item-tower inputs of one job record (a row of jobs.parquet).

    Returns title (``phrase_ids``), body int64 [max_tokens], skills int64 [48], cats int64 [6],
    nums float32 [6]. Nullable fields (records.py) featurize as "missing", never raise.
    """
    b = cfg.hash_buckets
    return {
        "title": phrase_ids(job["title"], cfg),
        "body": text_ids(job.get("description"), cfg.max_tokens, b),
        "skills": text_ids(_skills_text(job.get("skills")), SKILL_TOKENS, b),
        "cats": np.array(
            [cat_id(f, job.get(f), cfg.cat_buckets) for f in ITEM_CATS], dtype=np.int64
        ),
        "nums": np.concatenate(
            [
                location_nums(job.get("lat"), job.get("lon")),
                [float(bool(job["remote"])), float(bool(job.get("active", True)))],
                *_sentence(job["title"], cfg),
            ]
        ).astype(np.float32),
    }


def context_nums(when: Any) -> np.ndarray:
    """float32 [4]: sin/cos of the hour of day and of the day of week of ``when`` (UTC).

    ``None`` (a batch embedding with no request time) gives zeros, a point off both circles.
    """
    if when is None:
        return np.zeros(CONTEXT_NUMS, dtype=np.float32)
    t = pd.Timestamp(when)
    hour = 2 * np.pi * (t.hour + t.minute / 60) / 24
    dow = 2 * np.pi * t.dayofweek / 7
    return np.array([np.sin(hour), np.cos(hour), np.sin(dow), np.cos(dow)], dtype=np.float32)


def _interest(member: Mapping[str, Any], cfg: ModelConfig) -> np.ndarray:
    """float32 [1 + interest_dim]: has_interest flag + the member's looked-up interest vector."""
    vec = member.get("interest")
    if vec is None:
        return np.zeros(1 + cfg.interest_dim, dtype=np.float32)
    vec = np.asarray(vec, dtype=np.float32).ravel()
    if vec.shape != (cfg.interest_dim,):
        raise ValueError(
            f"member interest embedding has {vec.shape[0]} dims, the model expects "
            f"{cfg.interest_dim}"
        )
    return np.concatenate([[1.0], vec]).astype(np.float32)


def request_tensors(
    query: str | None, member: Mapping[str, Any] | None, cfg: ModelConfig, when: Any = None
) -> dict[str, np.ndarray]:
    """Request-tower inputs: optional query text + optional member record + request time.

    ``member`` is a profile record, optionally with ``interest`` (float [interest_dim], the
    member-interest model's batch embedding, looked up, never recomputed here). Returns query
    (``phrase_ids``), and for the composite tower headline (``phrase_ids``), skills int64 [48],
    cats int64 [4], nums float32 [11 (+ 1 + interest_dim)]. A missing member yields zeros (the
    anonymous search case).
    """
    b = cfg.hash_buckets
    if cfg.request_inputs == "query":
        return {
            "query": phrase_ids(query, cfg),
            "cats": np.zeros(0, dtype=np.int64),
            "nums": np.concatenate([np.zeros(0), *_sentence(query, cfg)]).astype(np.float32),
        }
    m = member or {}
    if member is not None:
        profile, has_member = profile_nums(member), [1.0]
    else:
        profile, has_member = np.zeros(PROFILE_NUMS, dtype=np.float32), [0.0]
    nums: list[Any] = [profile, has_member, context_nums(when)]
    if cfg.interest_dim:
        nums.append(_interest(m, cfg))
    nums.extend(_sentence(query, cfg))
    return {
        "query": phrase_ids(query, cfg),
        "headline": phrase_ids(m.get("headline"), cfg),
        "skills": text_ids(_skills_text(m.get("skills")), SKILL_TOKENS, b),
        "cats": profile_cats(m, cfg),
        "nums": np.concatenate(nums).astype(np.float32),
    }


def profile_nums(member: Mapping[str, Any]) -> np.ndarray:
    """float32 [6] numeric profile features: xyz of the home city + has_location,
    open_to_remote, log commute. Every field is nullable (an online profile may lack any):
    a null location is zeros with has_location 0, a null flag false, a null commute 0.

    Shared by the request tower and the member-interest tower (the same member, the same
    features)."""
    commute: Any = member.get("max_commute_km")
    remote: Any = member.get("open_to_remote")
    extra = [
        float(_present(remote) and bool(remote)),
        float(np.log1p(float(commute) if _present(commute) else 0.0) / 5.0),
    ]
    return np.concatenate([location_nums(member.get("lat"), member.get("lon")), extra]).astype(
        np.float32
    )


def profile_cats(member: Mapping[str, Any], cfg: ModelConfig) -> np.ndarray:
    """int64 [4] ids of the member's REQUEST_CATS values (0 where missing)."""
    return np.array(
        [cat_id(f, member.get(f), cfg.cat_buckets) for f in REQUEST_CATS], dtype=np.int64
    )


def member_records(members: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """member_id -> profile record (the same fields Feast serves online)."""
    return {int(r["member_id"]): r for r in members.to_dict("records")}


def stack(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-record tensors into a batch: each key -> [n, ...]."""
    if not rows:
        raise ValueError("cannot stack an empty list of records")
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def job_batch(records: Sequence[Mapping[str, Any]], cfg: ModelConfig) -> dict[str, np.ndarray]:
    warm_texts([r["title"] for r in records], cfg)
    return stack([job_tensors(r, cfg) for r in records])


def request_batch(
    queries: Sequence[str | None],
    members: Sequence[Mapping[str, Any] | None],
    cfg: ModelConfig,
    whens: Sequence[Any] | None = None,
) -> dict[str, np.ndarray]:
    if len(queries) != len(members):
        raise ValueError(f"{len(queries)} queries but {len(members)} members")
    if whens is not None and len(whens) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(whens)} request times")
    times = whens if whens is not None else [None] * len(queries)
    warm_texts(queries, cfg)
    return stack(
        [request_tensors(q, m, cfg, t) for q, m, t in zip(queries, members, times, strict=True)]
    )
