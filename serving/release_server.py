"""Ray Serve deployment answering, per release, a whole request: Feast read + request tower +
search of the release's slot, in one call.

Model multiplexing keyed by release id: a replica loads a release (its ``ReleaseEncoder`` and
its ``ReleaseIndex``) on its first request for it, off the event loop, and keeps the
``MAX_RELEASES_PER_REPLICA`` most recently used, so a candidate starts serving without a
redeploy and the release a promotion replaced stays warm while its requests drain.

Encoder and index of a release live in one replica: each hop between Serve deployments cost
~3.3 ms on the 2-core machines (an empty handler behind the proxy answers in ~6.9 ms p50), as
much as the whole request's work (~2.5 ms), so the graph is ingress -> release server.
A request embedding still carries its release id, and an index refuses another release's
(``search_vector``, for callers that embed requests themselves).

Heavy stacks (torch, feast, faiss) are imported inside the replica.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from ebr.config import Workspace
from serving.encoder import ReleaseEncoder
from serving.errors import ReleaseMismatch
from serving.retriever import ReleaseIndex

MAX_RELEASES_PER_REPLICA = 4  # live + two experiment arms + the one a promotion replaced
Hits = tuple[list[list[dict[str, Any]]], dict[str, Any]]


class Release:
    """One release's encoder and index, loaded and checked together."""

    def __init__(
        self, ws: Workspace, store: Any, release_id: str, verify: bool, refresh_s: float
    ) -> None:
        self.id = release_id
        self.encoder = ReleaseEncoder(ws, store, release_id)
        self.index = ReleaseIndex(ws, release_id, verify, refresh_s)

    def search(self, vector_release: str | None, vectors: np.ndarray | None, k: int,
               filter_json: dict[str, Any] | None, text: str | None, retrieval: str,
               personalised: bool) -> Hits:  # fmt: skip
        """The index's search of a request embedding tagged with its release (refused unless
        it is this release's)."""
        if vectors is not None and vector_release != self.id:
            raise ReleaseMismatch(str(vector_release), self.id)
        return self.index.search(vectors, k, filter_json, text, retrieval, personalised)


@serve.deployment
class ReleaseServer:
    """Answers searches and feeds for the release each call names
    (``handle.options(multiplexed_model_id=<release id>)``)."""

    def __init__(self, workspace: str, verify: bool = True, refresh_s: float = 1.0) -> None:
        import faiss
        import torch

        from feature_repo.store import member_profiles, open_store

        # One request per call on a fraction of a core: extra threads only contend (FAISS:
        # 10-20x slower single-query search with 2 OpenMP threads on the 2-core machines).
        faiss.omp_set_num_threads(1)
        torch.set_num_threads(1)
        self._ws = Workspace(Path(workspace))
        self._verify, self._refresh_s = verify, refresh_s
        self._store = open_store(self._ws.feature_repo)
        member_profiles(self._store, [1])  # the first online read is ~0.5 s (lazy init)

    @serve.multiplexed(max_num_models_per_replica=MAX_RELEASES_PER_REPLICA)
    async def release(self, release_id: str) -> Release:
        # Off the event loop (checksums, tower and index loads): the releases already loaded
        # keep answering meanwhile.
        return await asyncio.to_thread(
            Release, self._ws, self._store, release_id, self._verify, self._refresh_s
        )

    async def _current(self) -> Release:
        return await self.release(serve.get_multiplexed_model_id())

    async def search(
        self,
        query: str | None,
        member_id: int | None,
        k: int,
        filter_json: dict[str, Any] | None = None,
        retrieval: str = "hybrid",
    ) -> tuple[list[list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
        """One search: (hits, plan with ``retrieval``, ``understand(query)``). A query the
        model does not understand is dropped from the embedding (the member alone, or no
        vector for an anonymous search: term retrieval then answers, if any)."""
        rel = await self._current()
        understood = rel.encoder.understand(query)
        embed_query = None if understood["query_understood"] is False else query
        vec = None
        if embed_query is not None or member_id is not None:
            vec = rel.encoder.encode(embed_query, member_id)
        hits, plan = rel.search(rel.encoder.release_id, vec, k, filter_json, query, retrieval,
                                member_id is not None)  # fmt: skip
        return hits, plan, understood

    async def recommendations(self, member_id: int, k: int) -> Hits:
        """JYMBII: the member's embedding (batch, else from the profile), no query."""
        rel = await self._current()
        vec = rel.encoder.member_embedding(member_id)
        return rel.search(rel.encoder.release_id, vec, k, None, None, "ebr", True)

    async def search_vector(
        self, vector_release: str | None, vectors: np.ndarray | None, k: int,
        filter_json: dict[str, Any] | None = None, text: str | None = None,
        retrieval: str = "ebr",
    ) -> Hits:  # fmt: skip
        """Search with a request embedding computed elsewhere; it names the release whose
        request tower made it, and any other release than this call's is refused."""
        rel = await self._current()
        return rel.search(vector_release, vectors, k, filter_json, text, retrieval, False)

    async def info(self) -> dict[str, Any]:
        """The release this call names, loaded (and checked) if it was not: encoder and index."""
        rel = await self._current()
        return {"encoder": rel.encoder.info(), "index": rel.index.info()}
