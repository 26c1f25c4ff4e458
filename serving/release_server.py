"""A release's whole request: Feast read + request tower + search of the release's slot.

Each replica keeps loaded every release a request can reach (the live release, every
experiment arm) and the one a rollback would return to, plus the ``SPARE_RELEASES`` most
recently used others (a warmed candidate): eviction follows the release state, never recency
alone, so an experiment of any size the API accepts (``MAX_ARMS`` arms) serves without reloads.
At start the replica loads the releases it keeps before it reports ready (``preload``).
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
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.loaded_release import DEFAULT_PAGE, Found, Hits, LoadedRelease, Loader
from serving.page import PageOptions
from serving.router import ReleaseRouter
from serving.schemas import MAX_ARMS

if TYPE_CHECKING:
    from ebr.index.query.filters import Filter

log = logging.getLogger(__name__)
SPARE_RELEASES = 2  # loaded beyond those requests can reach: warmed candidates, a drained one
# The most a replica holds: live + every arm the API accepts + the rollback target + spares.
MAX_RELEASES_PER_REPLICA = 1 + MAX_ARMS + 1 + SPARE_RELEASES
STATUS_TIMEOUT_S = 5.0  # how long a health check waits on a release server's answer
T = TypeVar("T")


@dataclass(frozen=True)
class ReleaseStatus:
    """Where one release stands in a replica: ``ready`` (``info`` = its encoder and index
    infos), ``loading``, ``failed`` (``reason``) or ``absent`` (not loaded); ``loads``: how
    many times this replica loaded it (more than once: it was evicted and reloaded)."""

    state: str
    reason: str | None = None
    info: dict[str, Any] | None = None
    loads: int | None = None


def _failure(task: asyncio.Future[Any]) -> BaseException | None:
    if not task.done():
        return None
    return asyncio.CancelledError() if task.cancelled() else task.exception()


class LocalReleases:
    """Releases served in this process (``release_server: ingress``): every release it keeps
    (``retain``) loaded once however many requests wait for it, and one worker thread for the
    requests' work."""

    _keep: tuple[str, ...] | None = None  # set by retain; None (not yet known): evict nothing

    def __init__(self, workspace: str, verify: bool, refresh_s: float) -> None:
        self._loader = Loader(workspace, verify, refresh_s)
        # Least recently used first; a failed load stays (health reports why) until retried.
        self._loaded: OrderedDict[str, asyncio.Task[LoadedRelease]] = OrderedDict()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-work")
        self._busy_since: float | None = None  # monotonic start of the work running now
        self.on_work: Callable[[float], None] | None = None  # each work item's seconds

    async def get(self, release_id: str) -> LoadedRelease:
        task = self._loaded.get(release_id)
        if task is None or _failure(task) is not None:
            task = asyncio.ensure_future(self._loader.load(release_id))
            self._loaded[release_id] = task
            # Evict once it loaded: a load that fails displaces nothing (and is dropped).
            task.add_done_callback(lambda _: self._evict())
        self._loaded.move_to_end(release_id)
        return await asyncio.shield(task)

    def retain(self, keep: Sequence[str]) -> None:
        """Keep ``keep`` (what requests can reach, and the rollback target) loaded for good;
        of the rest, only the ``SPARE_RELEASES`` most recently used, and no failed load."""
        self._keep = tuple(keep)
        self._evict()

    def _evict(self) -> None:
        if self._keep is None:
            return
        others = [r for r in self._loaded if r not in self._keep]  # least recently used first
        failed = [r for r in others if _failure(self._loaded[r]) is not None]
        working = [r for r in others if r not in failed]
        for rid in failed + working[: max(0, len(working) - SPARE_RELEASES)]:
            del self._loaded[rid]  # requests in flight keep their reference

    async def preload(self, keep: Sequence[str]) -> None:
        """Retain ``keep`` and load each of them now (failures stay in ``status``)."""
        self.retain(keep)
        await asyncio.gather(*(self.get(rid) for rid in keep), return_exceptions=True)

    async def status(self, release_id: str) -> ReleaseStatus:
        """Where ``release_id`` stands here, without waiting for a load."""
        task, loads = self._loaded.get(release_id), self._loader.load_counts[release_id]
        if task is None:
            return ReleaseStatus("absent", loads=loads)
        if not task.done():
            return ReleaseStatus("loading", loads=loads)
        if (err := _failure(task)) is not None:
            return ReleaseStatus("failed", str(err) or type(err).__name__, loads=loads)
        return ReleaseStatus("ready", info=task.result().info(), loads=loads)

    def busy_s(self) -> float:
        """Seconds the work running now has run (0 when idle): a stuck worker shows here."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _timed(self, work: Callable[[LoadedRelease], T], rel: LoadedRelease) -> T:
        self._busy_since = since = time.monotonic()
        try:
            return work(rel)
        finally:
            self._busy_since = None
            if self.on_work is not None:
                self.on_work(time.monotonic() - since)

    async def _run(self, release_id: str, work: Callable[[LoadedRelease], T]) -> T:
        rel = await self.get(release_id)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._timed, work, rel)

    async def search_release(self, release_id: str, query: str | None, member_id: int | None,
                             k: int, flt: Filter | None, retrieval: str,
                             options: PageOptions = DEFAULT_PAGE) -> Found:  # fmt: skip
        return await self._run(
            release_id, lambda r: r.answer(query, member_id, k, flt, retrieval, options)
        )

    async def recommendations(self, release_id: str, member_id: int, k: int,
                              options: PageOptions = DEFAULT_PAGE) -> Hits:  # fmt: skip
        return await self._run(release_id, lambda r: r.recommendations(member_id, k, options))

    async def info(self, release_id: str) -> dict[str, Any]:
        return (await self.get(release_id)).info()


class RemoteReleases:
    """Releases served by the ``ReleaseServer`` deployment (``release_server: deployment``),
    each call routed by release id (Serve model multiplexing)."""

    def __init__(self, server: DeploymentHandle) -> None:
        self._server = server

    def _for(self, release_id: str) -> DeploymentHandle:
        return self._server.options(multiplexed_model_id=release_id)

    async def search_release(self, release_id: str, query: str | None, member_id: int | None,
                             k: int, flt: Filter | None, retrieval: str,
                             options: PageOptions = DEFAULT_PAGE) -> Found:  # fmt: skip
        call = self._for(release_id).search_release.remote(
            query, member_id, k, flt, retrieval, options
        )
        return await call  # type: ignore[no-any-return]

    async def recommendations(self, release_id: str, member_id: int, k: int,
                              options: PageOptions = DEFAULT_PAGE) -> Hits:  # fmt: skip
        call = self._for(release_id).recommendations.remote(member_id, k, options)
        return await call  # type: ignore[no-any-return]

    async def info(self, release_id: str) -> dict[str, Any]:
        return await self._for(release_id).info.remote()  # type: ignore[no-any-return]

    def retain(self, keep: Sequence[str]) -> None:
        """The release server keeps releases itself (``ReleaseServer.check_health``)."""

    async def preload(self, keep: Sequence[str]) -> None:
        await asyncio.gather(*(self.info(rid) for rid in keep), return_exceptions=True)

    async def status(self, release_id: str) -> ReleaseStatus:
        """Where ``release_id`` stands on a release server (loads it if it was not)."""
        try:
            info = await asyncio.wait_for(self.info(release_id), STATUS_TIMEOUT_S)
        except TimeoutError:
            return ReleaseStatus("loading")
        except Exception as err:  # noqa: BLE001 - the release's failure, reported by health
            cause = getattr(err, "cause", None) or err
            return ReleaseStatus("failed", str(cause) or type(cause).__name__)
        return ReleaseStatus("ready", info=info)

    def busy_s(self) -> float:
        return 0.0  # the release server's own health check watches its replicas


@serve.deployment
class ReleaseServer:
    """Answers searches and feeds for the release each call names
    (``handle.options(multiplexed_model_id=<release id>)``); ready once the releases the
    workspace's state routes to are loaded."""

    def __init__(self, workspace: str, verify: bool = True, refresh_s: float = 1.0) -> None:
        self._loader = Loader(workspace, verify, refresh_s)
        self._router = ReleaseRouter(self._loader.ws)
        self._preloaded = False

    async def check_health(self) -> None:
        """Serve's health check; the first one (before the replica takes requests) loads
        every release requests can reach, so a restarted replica serves what it served."""
        if not self._preloaded:
            for rid in self._router.keep():
                try:
                    await self.release(rid)
                except Exception as err:  # noqa: BLE001 - answered per request, with reason
                    log.error("release %s did not load: %s", rid, err)
            self._preloaded = True

    @serve.multiplexed(max_num_models_per_replica=MAX_RELEASES_PER_REPLICA)
    async def release(self, release_id: str) -> LoadedRelease:
        return await self._loader.load(release_id)

    async def _current(self) -> LoadedRelease:
        return await self.release(serve.get_multiplexed_model_id())

    async def search_release(self, query: str | None, member_id: int | None, k: int,
                             flt: Filter | None = None, retrieval: str = "hybrid",
                             options: PageOptions = DEFAULT_PAGE) -> Found:  # fmt: skip
        """One search in the release this call names (``LoadedRelease.answer``)."""
        return (await self._current()).answer(query, member_id, k, flt, retrieval, options)

    async def recommendations(self, member_id: int, k: int,
                              options: PageOptions = DEFAULT_PAGE) -> Hits:  # fmt: skip
        return (await self._current()).recommendations(member_id, k, options)

    async def search_vector(
        self, vector_release: str | None, vectors: np.ndarray | None, k: int,
        filter_json: dict[str, Any] | None = None, text: str | None = None,
        retrieval: str = "ebr",
    ) -> Hits:  # fmt: skip
        """Search with a request embedding computed elsewhere; it names the release whose
        request tower made it, and any other release than this call's is refused.
        ``filter_json``: a filter expression, parsed here (``ebr.index.query.filters``)."""
        from ebr.index.query.filters import parse_filter

        rel = await self._current()
        flt = parse_filter(filter_json) if filter_json is not None else None
        return rel.retrieve(vector_release, vectors, k, flt, text, retrieval)

    async def info(self) -> dict[str, Any]:
        """The release this call names, loaded (and checked) if it was not: encoder and index."""
        return (await self._current()).info()
