"""Knowledge-base corpora over HTTP (``ebr.corpus``): the same slot machinery as jobs, its
query embedded by the corpus's sentence encoder in the ingress replica.

    GET  /v1/corpora                     the configured corpora and their live releases
    POST /v1/corpora/{corpus}/search     {"query": "lab tech", "k": 5, "retrieval": "hybrid"}

A corpus loads on its first request (the encoder ~1 s, the slot); its live release is
followed from ``corpora/<name>/releases/state.json`` and its slot's log is tailed, so a new
build or an upserted article serves without a restart. Jobs stay at ``/v1/search``.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures at runtime.
import asyncio
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import HTTPException
from fastapi import Path as UrlPath
from pydantic import BaseModel, ConfigDict, Field

from ebr.config import Workspace
from ebr.corpus import CORPORA, NAME, corpus_spec
from ebr.corpus.build import corpus_paths, live_slot_dir, read_corpus_state
from serving.api import NOT_FOUND, app
from serving.retriever import hit_rows
from serving.schemas import MAX_K, ErrorResponse, Query, Retrieval
from serving.workbench import _ingress

REFRESH_S = 1.0  # how often a loaded corpus looks at its state file and its slot's log


class CorpusSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Query = Field(description="what the user asked, as typed")
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = 5
    retrieval: Retrieval = Field(default="hybrid", description="ebr, term or hybrid")


class Article(BaseModel):
    article_id: int
    title: str
    text: str | None = None
    score: float


class CorpusSearchResponse(BaseModel):
    corpus: str
    release: str
    retrieval: str
    results: list[Article]
    took_ms: float


class LoadedCorpus:
    """One corpus's live release in this process: its slot (read-only, log tailed)."""

    def __init__(self, ws: Workspace, name: str) -> None:
        from ebr.index.live.slot import open_live

        self.name, self.spec = name, corpus_spec(name)
        self.record, slot_dir = live_slot_dir(ws, name)
        self.live = open_live(slot_dir, writable=False)
        self._checked = time.monotonic()
        self._lock = threading.Lock()  # one search at a time: the log tail and the encoder

    def search(self, query: str, k: int, retrieval: str) -> list[dict[str, Any]]:
        with self._lock:
            return self._search(query, k, retrieval)

    def _search(self, query: str, k: int, retrieval: str) -> list[dict[str, Any]]:
        from ebr.index.query.retrieve import retrieve
        from ebr.model.sentence import sentence_vectors

        if time.monotonic() - self._checked >= REFRESH_S:
            self.live.refresh()
            self._checked = time.monotonic()
        vectors = sentence_vectors([query])
        hits = retrieve(self.live.view(), vectors, k, texts=[query], retrieval=retrieval,
                        ebr_weight=self.spec.ebr_weight)  # fmt: skip
        found = hits.job_ids[0] >= 0
        rows = hit_rows(self.live.snapshot, hits, hits.job_ids[0][found], hits.scores[0][found])
        return [{"article_id": r["job_id"], "title": r["title"], "text": r.get("description"),
                 "score": r["score"]} for r in rows]  # fmt: skip


class Corpora:
    """The corpora this replica has loaded, each replaced when its live release changes."""

    def __init__(self, ws: Workspace) -> None:
        self._ws, self._loaded, self._lock = ws, {}, threading.Lock()

    def get(self, name: str) -> LoadedCorpus:
        live = read_corpus_state(self._ws, name)["live"]
        with self._lock:
            held = self._loaded.get(name)
            if held is None or held.record["id"] != live:
                if held is not None:
                    held.live.close()  # its log handle (searches in flight keep working)
                self._loaded[name] = held = LoadedCorpus(self._ws, name)
            return held


def _corpora() -> Corpora:
    ingress = _ingress()
    if getattr(ingress, "_corpora", None) is None:
        ingress._corpora = Corpora(ingress._ws)
    return ingress._corpora  # type: ignore[no-any-return]


@app.get("/v1/corpora")
async def corpora() -> list[dict[str, Any]]:
    """The configured corpora: name, description, live release (null before a build)."""
    ws: Workspace = _ingress()._ws
    out = []
    for name, spec in sorted(CORPORA.items()):
        try:
            live = read_corpus_state(ws, name)["live"]
        except ValueError:
            live = None
        path = str(Path(corpus_paths(ws, name).root).relative_to(ws.root))
        out.append({"corpus": name, "description": spec.description, "live": live, "path": path})
    return out


@app.post(
    "/v1/corpora/{corpus}/search",
    response_model=CorpusSearchResponse,
    responses={**NOT_FOUND, 409: {"model": ErrorResponse}},
)
async def search_corpus(
    corpus: Annotated[str, UrlPath(max_length=32, pattern=f"^{NAME.pattern}$")],
    body: CorpusSearchRequest,
) -> dict[str, Any]:
    """Articles of ``corpus`` for a question, best first (ebr: the corpus's sentence encoder;
    term: BM25 over title and text; hybrid: both, fused)."""
    start = time.perf_counter()
    try:
        corpus_spec(corpus)
    except KeyError as err:
        raise HTTPException(404, str(err).strip("'\"")) from err
    try:
        loaded = await asyncio.to_thread(_corpora().get, corpus)
    except LookupError as err:  # configured, never built
        raise HTTPException(409, f"corpus: {err}") from err
    except (OSError, ValueError) as err:  # a damaged state file, record or slot
        raise HTTPException(409, f"corpus: {corpus} cannot serve ({err})") from err
    results = await asyncio.to_thread(loaded.search, body.query, body.k, body.retrieval)
    took = round((time.perf_counter() - start) * 1e3, 3)
    return {"corpus": corpus, "release": loaded.record["id"], "retrieval": body.retrieval,
            "results": results, "took_ms": took}  # fmt: skip
