"""A corpus release: its articles embedded by the sentence encoder, an immutable index slot
(vectors + BM25 terms, with a live log for upserts and deletes), the Feast embedding table,
and a release record that pins them; ``state.json`` names the live one.

Layout, under ``<workspace>/corpora/<name>/``::

    embeddings/<version>/articles.parquet   article_id, embedding, model_version, event_timestamp
    slots/<name>-<version>-<stamp>/          the slot (ebr.index.build.writer)
    releases/<id>.json                       immutable release records
    releases/state.json                      {"live": <id>, "previous": [...]}

The slot keys its rows by the article id in its ``job_id`` column (the slot format's key) and
keeps ``title`` and ``description`` (the article text) for display and BM25.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import IndexConfig, Workspace, check_version
from ebr.corpus import CorpusSpec
from ebr.io import atomic_write_json, atomic_write_parquet, sha256_file
from ebr.progress import report

BATCH = 256  # articles per encoder call (one progress step)


@dataclass(frozen=True)
class CorpusPaths:
    root: Path

    def embeddings(self, version: str) -> Path:
        return self.root / "embeddings" / version / "articles.parquet"

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def state(self) -> Path:
        return self.releases / "state.json"


def corpus_paths(ws: Workspace, name: str) -> CorpusPaths:
    return CorpusPaths(ws.root / "corpora" / name)


def check_articles(docs: pd.DataFrame, max_chars: int) -> pd.DataFrame:
    """``docs`` as a slot holds them: article_id (unique int >= 1), title (non-empty), text
    (cut to ``max_chars``). Raises ValueError naming the first bad row's id and field."""
    missing = {"article_id", "title", "text"} - set(docs.columns)
    if missing:
        raise ValueError(f"articles lack columns {sorted(missing)}")
    ids = docs["article_id"]
    if not pd.api.types.is_integer_dtype(ids.dtype) or (ids < 1).any() or ids.duplicated().any():
        raise ValueError("article_id must be unique integers >= 1")
    titles = docs["title"].astype("string").str.strip()
    bad = docs.loc[titles.isna() | (titles == ""), "article_id"]
    if len(bad):
        raise ValueError(f"article {int(bad.iloc[0])}: title is empty")
    text = docs["text"].astype("string").fillna("").str.slice(0, max_chars)
    return pd.DataFrame({"article_id": ids.astype("int64"), "title": titles, "text": text})


def embed_texts(texts: list[str]) -> np.ndarray:
    """float32 [n, 384] unit rows of the packaged MiniLM, with progress per batch."""
    from ebr.model.sentence import MINILM_DIM, sentence_vectors

    out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
    for a in range(0, len(texts), BATCH):
        out[a : a + BATCH] = sentence_vectors(texts[a : a + BATCH])
        report("embed", advance=len(texts[a : a + BATCH]), total=len(texts))
    return out


def slot_items(docs: pd.DataFrame) -> pd.DataFrame:
    """Checked articles as slot rows: the id in the slot's key column, the text as the
    description (displayed and indexed for BM25)."""
    return pd.DataFrame({"job_id": docs["article_id"], "title": docs["title"],
                         "description": docs["text"]})  # fmt: skip


def article_text(docs: pd.DataFrame) -> list[str]:
    """What the encoder reads of an article: its title, then its text."""
    return [f"{t}. {x}" for t, x in zip(docs["title"], docs["text"], strict=True)]


def build_corpus(ws: Workspace, spec: CorpusSpec, version: str = "v1") -> dict[str, Any]:
    """Embed ``spec``'s articles, write the embedding table and a new slot, record a release of
    them and make it live; -> the release record."""
    from ebr.index.build.writer import write_slot

    check_version(version)
    paths = corpus_paths(ws, spec.name)
    docs = check_articles(spec.load("articles"), spec.max_text_chars)
    vectors = embed_texts(article_text(docs))
    now = datetime.now(UTC)
    table = pd.DataFrame({
        "article_id": docs["article_id"], "embedding": list(vectors),
        "model_version": version, "event_timestamp": pd.Timestamp(now),
    })  # fmt: skip
    atomic_write_parquet(paths.embeddings(version), table)
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    cfg = IndexConfig(kind=spec.index_kind, tune_on="held_out")
    name = f"{spec.name}-{version}-{stamp}"
    slot = write_slot(paths.slots, name, vectors, slot_items(docs), version, cfg)
    manifest = json.loads((slot / "manifest.json").read_text())
    record = {
        "id": f"{spec.name}-{version}-{stamp}", "corpus": spec.name, "version": version,
        "encoder": spec.encoder, "slot": slot.name,
        "manifest_sha256": sha256_file(slot / "manifest.json"), "articles": len(docs),
        "recall_at_10": manifest.get("recall_at_10"), "created_at": now.isoformat(),
        "embeddings": str(paths.embeddings(version).relative_to(paths.root)),
    }  # fmt: skip
    atomic_write_json(paths.releases / f"{record['id']}.json", record)
    state = read_corpus_state(ws, spec.name)
    previous = ([state["live"]] if state.get("live") else []) + state.get("previous", [])
    atomic_write_json(paths.state, {"live": record["id"], "previous": previous[:10]})
    return record


def read_corpus_state(ws: Workspace, name: str) -> dict[str, Any]:
    """``{"live": id or None, "previous": [...]}``; a ValueError naming a damaged file."""
    path = corpus_paths(ws, name).state
    if not path.is_file():
        return {"live": None, "previous": []}
    try:
        state = json.loads(path.read_text())
        assert isinstance(state, dict) and "live" in state
    except (ValueError, AssertionError):
        raise ValueError(f"{path} is not a corpus state file") from None
    return state


def live_corpus_release(ws: Workspace, name: str) -> dict[str, Any]:
    """The live release record of corpus ``name``; LookupError when none is built yet."""
    rid = read_corpus_state(ws, name)["live"]
    if rid is None:
        raise LookupError(f"corpus {name!r} has no release yet: ebr corpus build --corpus {name}")
    path = corpus_paths(ws, name).releases / f"{rid}.json"
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable corpus release ({err})") from None
    return record


def live_slot_dir(ws: Workspace, name: str) -> tuple[dict[str, Any], Path]:
    """(live release record, its slot folder), the slot checked against the record."""
    record = live_corpus_release(ws, name)
    slot = corpus_paths(ws, name).slots / record["slot"]
    if sha256_file(slot / "manifest.json") != record["manifest_sha256"]:
        raise ValueError(f"slot {slot} changed since release {record['id']}")
    return record, slot


def upsert_articles(ws: Workspace, spec: CorpusSpec, docs: pd.DataFrame) -> dict[str, Any]:
    """Embed ``docs`` and append them to the live slot's log (new ids added, known ones
    replaced): served within a replica's log refresh, kept until the next build."""
    from ebr.index.live.slot import open_live

    docs = check_articles(docs, spec.max_text_chars)
    _, slot_dir = live_slot_dir(ws, spec.name)
    vectors = embed_texts(article_text(docs))
    with open_live(slot_dir) as live:
        lsn = live.upsert(slot_items(docs), vectors)
    return {"corpus": spec.name, "upserted": len(docs), "lsn": lsn}


def delete_articles(ws: Workspace, name: str, article_ids: list[int]) -> dict[str, Any]:
    """Tombstone ``article_ids`` in the live slot's log."""
    from ebr.index.live.slot import open_live

    _, slot_dir = live_slot_dir(ws, name)
    with open_live(slot_dir) as live:
        lsn = live.delete(np.asarray(article_ids, dtype=np.int64))
    return {"corpus": name, "deleted": len(article_ids), "lsn": lsn}
