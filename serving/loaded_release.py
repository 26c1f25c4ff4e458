"""One release loaded in a process: its request encoder and index, checked together, and the
``Loader`` that opens them (``serving.release_server`` keeps them per replica).

A search, HTTP to FAISS, names each step by what it adds: ``Ingress.search`` (the route,
``serving.deployments``: validate, route to the live release or an arm) -> ``search_release``
(``serving.release_server``: pin the release, run on its worker) -> ``LoadedRelease.answer``
(spelling, understand, encode the request) -> ``serve_page`` (``serving.page``: retrieve N
candidates, rank them with the release's ranker, crowd, backfill, explain) ->
``ReleaseIndex.candidates`` (tail the slot log) -> ``ebr.index.query.retrieve`` (plan: ebr /
term / hybrid, signed-in rerank) -> ``search_view`` (probe the snapshot with the filter, merge
the delta) -> FAISS ``index.search``.

Loading names why a release cannot serve: ``UnknownRelease`` (no record) or
``ReleaseUnavailable`` (a modified record, files gone or changed, a corrupt slot log), never
a bare error. Heavy stacks (torch, feast, faiss) are imported when a release loads.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebr.config import Workspace
from ebr.release.record import RECORD_FILE, Release, read_release, record_dir
from serving.encoder import ReleaseEncoder
from serving.errors import ReleaseMismatch, ReleaseUnavailable, UnknownRelease
from serving.page import PageOptions, serve_page
from serving.query_spelling import QuerySpeller
from serving.ranking import RankStage
from serving.retriever import ReleaseIndex

if TYPE_CHECKING:
    from ebr.index.query.filters import Filter

Hits = tuple[list[list[dict[str, Any]]], dict[str, Any]]
DEFAULT_PAGE = PageOptions()  # the release's defaults
Found = tuple[list[list[dict[str, Any]]], dict[str, Any], dict[str, Any]]


class LoadedRelease:
    """One release's encoder and index, loaded and checked together from its record
    (``release``, read once by the ``Loader``)."""

    def __init__(
        self, ws: Workspace, store: Any, release: Release, verify: bool, refresh_s: float
    ) -> None:
        self.id, self.release = release.id, release
        self.encoder = ReleaseEncoder(ws, store, release)
        self.index = ReleaseIndex(release, verify, refresh_s)
        self.stage = RankStage(release, store)  # ranker, popularity; crowding defaults
        ranker_columns = []
        if self.stage.ranker is not None:
            from ebr.rank.candidates import ITEM_COLUMNS, ItemColumns, slot_columns

            self.stage.warm(self.index.slot.job_ids, slot_columns(self.index.slot).company)
            ranker_columns.append((ITEM_COLUMNS, ItemColumns.of))
        # The streamed rows' derived columns (and the ranker's), before any request.
        self.index.live.view().delta.warm(self.index.slot.items, *ranker_columns)
        self.speller = QuerySpeller(self.encoder, self.index)  # typo tolerance
        self.threads: dict[str, Any] = {}  # its process's thread pools (Loader: after the load)

    def retrieve(self, vector_release: str | None, vectors: np.ndarray | None, k: int,
                 flt: Filter | None = None, text: str | None = None,
                 retrieval: str = "ebr", personalised: bool = False,
                 personal: np.ndarray | None = None, place: Any = None) -> Hits:  # fmt: skip
        """The index's retrieval for request embeddings (``vectors`` and, signed in, the
        member-aware ``personal``) tagged with their release (refused unless it is this
        release's)."""
        if (vectors is not None or personal is not None) and vector_release != self.id:
            raise ReleaseMismatch(str(vector_release), self.id)
        return self.index.retrieve(vectors, k, flt, text, retrieval, personalised,
                                   personal, place)  # fmt: skip

    def answer(self, query: str | None, member_id: int | None, k: int,
               flt: Filter | None, retrieval: str,
               options: PageOptions = DEFAULT_PAGE) -> Found:  # fmt: skip
        """One search: (hits, plan with ``retrieval``, ``understand(query)``). A query the
        model does not understand is dropped from the embedding (the member alone, or no
        vector for an anonymous search: term retrieval then answers, if any). A misspelled
        query is searched corrected (``understand``'s ``corrected_query``; ``ebr.spelling``).
        The page follows retrieval's stages (``serving.page``: rank, crowd, explain). The
        plan's ``answer_ms`` is this call's own time (the ingress sends it in the
        ``Server-Timing`` header beside its own, ``took_ms``)."""
        start = time.perf_counter()
        query, corrected_query = self.speller.correct(query)  # what both retrievals search
        understood = {**self.encoder.understand(query), "corrected_query": corrected_query}
        embed_query = None if understood["query_understood"] is False else query
        enc = None
        if embed_query is not None or member_id is not None:
            # Signed in with a query: the query alone finds the candidates, the member
            # reorders them.
            led = embed_query is not None and member_id is not None
            enc = self.encoder.request(embed_query, member_id, led)
        hits, plan = serve_page(self.index, self.stage, enc, k, flt, query, retrieval, options)
        plan["answer_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        return hits, plan, understood

    def recommendations(self, member_id: int, k: int,
                        options: PageOptions = DEFAULT_PAGE) -> Hits:  # fmt: skip
        """JYMBII: the member's embedding (batch, else from the profile), no query; ranked
        and crowded as the release says (``serving.page``)."""
        if not (self.stage.ranker is not None or self.stage.pin.max_per_company
                or self.stage.pin.max_per_city or options.explain
                or options.max_per_company or options.max_per_city):  # fmt: skip
            vec = self.encoder.member_embedding(member_id)
            return self.retrieve(self.encoder.release_id, vec, k, None, None, "ebr", True)
        enc = self.encoder.feed(member_id)
        return serve_page(self.index, self.stage, enc, k, None, None, "ebr", options)

    def info(self) -> dict[str, Any]:
        return {"encoder": self.encoder.info(), "index": self.index.info(),
                "ranking": self.stage.info(), "threads": self.threads}  # fmt: skip


def one_thread() -> None:
    """FAISS's OpenMP, torch and the BLAS libraries at one thread each, as a replica runs one
    request per call on a fraction of a core (FAISS single-query search was 10-20x slower with
    2 OpenMP threads on the 2-core machines; ``torch.set_num_threads`` does not reach FAISS's
    OpenMP, nor numpy's BLAS)."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # every BLAS and OpenMP pool loaded now, for this process


def thread_counts() -> dict[str, Any]:
    """The threads each pool of this process runs with, read (threadpoolctl), not assumed."""
    import faiss
    import torch
    from threadpoolctl import threadpool_info

    pools: dict[str, list[int]] = {}
    for pool in threadpool_info():
        pools.setdefault(f"{pool['user_api']}:{pool['internal_api']}", []).append(
            int(pool["num_threads"])
        )
    return {"faiss_omp": faiss.omp_get_max_threads(), "torch": torch.get_num_threads(),
            "pools": {name: sorted(set(n)) for name, n in sorted(pools.items())}}  # fmt: skip


class Loader:
    """What a process serving releases opens once: the Feast store, and one-thread FAISS,
    torch and BLAS (``one_thread``: one request per call on a fraction of a core, extra
    threads only contend)."""

    def __init__(self, workspace: str, verify: bool, refresh_s: float) -> None:
        from feature_repo.store import member_profiles, open_store

        one_thread()
        self.ws = Workspace(Path(workspace))
        self._verify, self._refresh_s = verify, refresh_s
        self._store = open_store(self.ws.feature_repo)
        member_profiles(self._store, [1])  # the first online read is ~0.5 s (lazy init)
        self.load_counts: Counter[str] = Counter()  # loads started per release (health shows)

    async def load(self, release_id: str) -> LoadedRelease:
        # Off the event loop (checksums, tower and index loads): the releases already loaded
        # keep answering meanwhile.
        self.load_counts[release_id] += 1
        return await asyncio.to_thread(self._load, release_id)

    def _load(self, release_id: str) -> LoadedRelease:
        """The release, or an error that says why not: ``UnknownRelease`` (no record),
        ``ReleaseUnavailable`` (a modified record, files gone or changed, a corrupt log)."""
        try:
            release = read_release(self.ws, release_id)
        except FileNotFoundError:
            where = record_dir(self.ws, release_id) / RECORD_FILE
            raise UnknownRelease(release_id, f"it is not recorded (no {where})") from None
        except (OSError, ValueError) as err:  # edited (checksum), unreadable, other format
            raise ReleaseUnavailable(release_id, str(err)) from None
        try:
            loaded = LoadedRelease(self.ws, self._store, release, self._verify, self._refresh_s)
        except (OSError, ValueError) as err:  # tower or slot files gone, a corrupt slot log
            raise ReleaseUnavailable(release_id, f"{type(err).__name__}: {err}") from None
        one_thread()  # pools the release's libraries loaded (a ranker's OpenMP, another BLAS)
        # Read once here (~2.5 ms): health checks and scrapes report it from the event loop.
        loaded.threads = thread_counts()
        return loaded
