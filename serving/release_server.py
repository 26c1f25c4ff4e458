"""A release's whole request: Feast read + request tower + search of the release's slot.

Releases are loaded on their first request, off the event loop, and the
``MAX_RELEASES_PER_REPLICA`` most recently used stay loaded, so a candidate starts serving
without a redeploy and the release a promotion replaced stays warm while its requests drain.
Where they run is ``AppArgs.release_server``:

- ``"ingress"`` (default): in the ingress replica itself (``LocalReleases``), on one worker
  thread so the event loop keeps accepting (and shedding) requests. No hop: on the 2-core
  machines a hop between Serve deployments cost ~2.7 ms, more than the request's work (~2.2 ms).
- ``"deployment"``: in the ``ReleaseServer`` deployment, called through its handle with Serve
  model multiplexing keyed by release id (``RemoteReleases``), for encoders that need their
  own replicas (a GPU tower, more replicas than ingresses).

A request embedding carries its release id, and an index refuses another release's
(``search_vector``, for callers that embed requests themselves). Heavy stacks (torch, feast,
faiss) are imported inside the replica.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from ebr.config import Workspace
from serving.encoder import ReleaseEncoder
from serving.errors import ReleaseMismatch
from serving.retriever import ReleaseIndex

MAX_RELEASES_PER_REPLICA = 4  # live + two experiment arms + the one a promotion replaced
Hits = tuple[list[list[dict[str, Any]]], dict[str, Any]]
Found = tuple[list[list[dict[str, Any]]], dict[str, Any], dict[str, Any]]
T = TypeVar("T")


class Release:
    """One release's encoder and index, loaded and checked together."""

    def __init__(
        self, ws: Workspace, store: Any, release_id: str, verify: bool, refresh_s: float
    ) -> None:
        self.id = release_id
        self.encoder = ReleaseEncoder(ws, store, release_id)
        self.index = ReleaseIndex(ws, release_id, verify, refresh_s)

    def search_vector(self, vector_release: str | None, vectors: np.ndarray | None, k: int,
                      filter_json: dict[str, Any] | None = None, text: str | None = None,
                      retrieval: str = "ebr", personalised: bool = False) -> Hits:  # fmt: skip
        """The index's search of a request embedding tagged with its release (refused unless
        it is this release's)."""
        if vectors is not None and vector_release != self.id:
            raise ReleaseMismatch(str(vector_release), self.id)
        return self.index.search(vectors, k, filter_json, text, retrieval, personalised)

    def search(self, query: str | None, member_id: int | None, k: int,
               filter_json: dict[str, Any] | None, retrieval: str) -> Found:  # fmt: skip
        """One search: (hits, plan with ``retrieval``, ``understand(query)``). A query the
        model does not understand is dropped from the embedding (the member alone, or no
        vector for an anonymous search: term retrieval then answers, if any)."""
        understood = self.encoder.understand(query)
        embed_query = None if understood["query_understood"] is False else query
        vec = None
        if embed_query is not None or member_id is not None:
            vec = self.encoder.encode(embed_query, member_id)
        hits, plan = self.search_vector(self.encoder.release_id, vec, k, filter_json, query,
                                        retrieval, member_id is not None)  # fmt: skip
        return hits, plan, understood

    def recommendations(self, member_id: int, k: int) -> Hits:
        """JYMBII: the member's embedding (batch, else from the profile), no query."""
        vec = self.encoder.member_embedding(member_id)
        return self.search_vector(self.encoder.release_id, vec, k, None, None, "ebr", True)

    def info(self) -> dict[str, Any]:
        return {"encoder": self.encoder.info(), "index": self.index.info()}


class Loader:
    """What a process serving releases opens once: the Feast store, and one-thread FAISS and
    torch (one request per call on a fraction of a core: extra threads only contend; FAISS
    single-query search was 10-20x slower with 2 OpenMP threads on the 2-core machines)."""

    def __init__(self, workspace: str, verify: bool, refresh_s: float) -> None:
        import faiss
        import torch

        from feature_repo.store import member_profiles, open_store

        faiss.omp_set_num_threads(1)
        torch.set_num_threads(1)
        self.ws = Workspace(Path(workspace))
        self._verify, self._refresh_s = verify, refresh_s
        self._store = open_store(self.ws.feature_repo)
        member_profiles(self._store, [1])  # the first online read is ~0.5 s (lazy init)

    async def load(self, release_id: str) -> Release:
        # Off the event loop (checksums, tower and index loads): the releases already loaded
        # keep answering meanwhile.
        return await asyncio.to_thread(
            Release, self.ws, self._store, release_id, self._verify, self._refresh_s
        )


class LocalReleases:
    """Releases served in this process (``release_server: ingress``): an LRU of loaded
    releases, each loaded once however many requests wait for it, and one worker thread
    for the requests' work."""

    def __init__(self, workspace: str, verify: bool, refresh_s: float) -> None:
        self._loader = Loader(workspace, verify, refresh_s)
        self._loaded: OrderedDict[str, asyncio.Task[Release]] = OrderedDict()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-work")

    async def get(self, release_id: str) -> Release:
        task = self._loaded.get(release_id)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(self._loader.load(release_id))
            self._loaded[release_id] = task
            while len(self._loaded) > MAX_RELEASES_PER_REPLICA:
                self._loaded.popitem(last=False)  # in-flight users keep their reference
        self._loaded.move_to_end(release_id)
        return await asyncio.shield(task)

    async def _run(self, release_id: str, work: Callable[[Release], T]) -> T:
        rel = await self.get(release_id)
        return await asyncio.get_running_loop().run_in_executor(self._worker, work, rel)

    async def search(self, release_id: str, query: str | None, member_id: int | None, k: int,
                     filter_json: dict[str, Any] | None, retrieval: str) -> Found:  # fmt: skip
        return await self._run(
            release_id, lambda r: r.search(query, member_id, k, filter_json, retrieval)
        )

    async def recommendations(self, release_id: str, member_id: int, k: int) -> Hits:
        return await self._run(release_id, lambda r: r.recommendations(member_id, k))

    async def info(self, release_id: str) -> dict[str, Any]:
        return (await self.get(release_id)).info()


class RemoteReleases:
    """Releases served by the ``ReleaseServer`` deployment (``release_server: deployment``),
    each call routed by release id (Serve model multiplexing)."""

    def __init__(self, server: DeploymentHandle) -> None:
        self._server = server

    def _for(self, release_id: str) -> DeploymentHandle:
        return self._server.options(multiplexed_model_id=release_id)

    async def search(self, release_id: str, query: str | None, member_id: int | None, k: int,
                     filter_json: dict[str, Any] | None, retrieval: str) -> Found:  # fmt: skip
        call = self._for(release_id).search.remote(query, member_id, k, filter_json, retrieval)
        return await call  # type: ignore[no-any-return]

    async def recommendations(self, release_id: str, member_id: int, k: int) -> Hits:
        return await self._for(release_id).recommendations.remote(member_id, k)  # type: ignore[no-any-return]

    async def info(self, release_id: str) -> dict[str, Any]:
        return await self._for(release_id).info.remote()  # type: ignore[no-any-return]


@serve.deployment
class ReleaseServer:
    """Answers searches and feeds for the release each call names
    (``handle.options(multiplexed_model_id=<release id>)``)."""

    def __init__(self, workspace: str, verify: bool = True, refresh_s: float = 1.0) -> None:
        self._loader = Loader(workspace, verify, refresh_s)

    @serve.multiplexed(max_num_models_per_replica=MAX_RELEASES_PER_REPLICA)
    async def release(self, release_id: str) -> Release:
        return await self._loader.load(release_id)

    async def _current(self) -> Release:
        return await self.release(serve.get_multiplexed_model_id())

    async def search(self, query: str | None, member_id: int | None, k: int,
                     filter_json: dict[str, Any] | None = None,
                     retrieval: str = "hybrid") -> Found:  # fmt: skip
        return (await self._current()).search(query, member_id, k, filter_json, retrieval)

    async def recommendations(self, member_id: int, k: int) -> Hits:
        return (await self._current()).recommendations(member_id, k)

    async def search_vector(
        self, vector_release: str | None, vectors: np.ndarray | None, k: int,
        filter_json: dict[str, Any] | None = None, text: str | None = None,
        retrieval: str = "ebr",
    ) -> Hits:  # fmt: skip
        """Search with a request embedding computed elsewhere; it names the release whose
        request tower made it, and any other release than this call's is refused."""
        rel = await self._current()
        return rel.search_vector(vector_release, vectors, k, filter_json, text, retrieval)

    async def info(self) -> dict[str, Any]:
        """The release this call names, loaded (and checked) if it was not: encoder and index."""
        return (await self._current()).info()
