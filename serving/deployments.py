"""Ray Serve ingress (FastAPI): routes each request to one release, then to that release's
request encoder and index.

    HTTP -> Ingress -> route (live release, or the request's experiment arm)
                    -> the release: Feast feature service + request tower + the release's
                       slot, in the ingress replica or a ReleaseServer deployment
                       (``serving.release_server``)

Several releases serve side by side (``serving.router``; each kept loaded per release id,
``serving.release_server``): a request is pinned to one release, so no response mixes versions
while an admin call promotes, rolls back or starts an experiment. Every response
names its release (and arm); every answered request is counted on ``/metrics`` and written to
the impression log (``ebr.release.impressions``). Beyond ``max_inflight`` requests in flight,
a request gets a 503 with ``Retry-After`` at once instead of queueing without bound.

Health (``serving.health``): ``GET /healthz`` is readiness ("serves what it served before":
200 ``ok`` / ``degraded`` with ``problems``, 503 ``loading`` / ``down``), ``GET /livez`` and
Serve's ``check_health`` are liveness. The replica loads every release it keeps before its
first health check passes, so Serve routes nothing to it before then; a side log, a bad state
file or a damaged slot log degrades health with a reason and never fails a request.

Admin routes (``/admin/...``) need ``Authorization: Bearer <token>`` (``AppArgs``).

Size: the ingress deployment's routes (search, feeds, admin, health, metrics) share its router,
admission and impression log; the release work is ``serving.release_server``.
"""

# No `from __future__ import annotations` here: FastAPI resolves the route signatures of a
# class-based Serve ingress at request time, and string annotations then fail to resolve.
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Header, HTTPException, Query, Response
from fastapi import Path as UrlPath
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from ebr.config import Workspace
from ebr.ids import MIN_ID
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.impressions import ImpressionLog, impression_dir
from ebr.release.record import check_release_id
from serving import corpora as _corpora_routes  # noqa: F401 - its routes join the app
from serving.api import BODY_ERRORS, NOT_FOUND, IngressRoute, admin_token, app, authorize
from serving.keeper import Keeper
from serving.metrics import (
    CONTENT_TYPE,
    Admission,
    AdmissionMiddleware,
    ServingMetrics,
    answered,
)
from serving.page import PageOptions
from serving.release_server import LocalReleases, RemoteReleases
from serving.router import BadStateFile, ReleaseRouter, Route
from serving.schemas import (
    MAX_K,
    MAX_MEMBER_ID,
    AppArgs,
    ErrorResponse,
    ExperimentRequest,
    HealthResponse,
    JobHit,
    LivenessResponse,
    PromoteRequest,
    ReleaseId,
    ReleasesResponse,
    ReleaseView,
    RollbackRequest,
    SearchRequest,
    SearchResponse,
)
from serving.workbench import Bound


def written(response: SearchResponse) -> Response:
    """``response`` as the JSON ``response_model=SearchResponse`` documents, written by pydantic
    at once: FastAPI would validate the model it was just built as again, then encode it
    (~65 us a search of 10, of a ~1 ms fixed HTTP cost). A NaN is written as null.

    ``Server-Timing`` (W3C) says where the server's time went: ``answer``, the release's own
    work; ``ingress``, the request in the ingress from admission to this response
    (``took_ms``: the answer plus the hop to the release's worker and back, and the response
    built). What a client sees beyond ``ingress`` is the HTTP front and the network."""
    timing = f"ingress;dur={response.took_ms}"
    if response._answer_ms is not None:
        timing = f"answer;dur={response._answer_ms}, {timing}"
    return Response(response.model_dump_json(), media_type="application/json",
                    headers={"server-timing": timing})  # fmt: skip


@serve.deployment
@serve.ingress(app)
class Ingress:
    """HTTP API: routes each request to a release and calls the release server (composed in
    ``build_app``); admin routes change what serves."""

    def __init__(self, server: DeploymentHandle | None, args: AppArgs) -> None:
        """``server``: the release server deployment, or None (this replica serves the
        releases itself); ``args``: the app's validated settings, ``workspace`` resolved."""
        self._releases: LocalReleases | RemoteReleases = (
            RemoteReleases(server)
            if server is not None
            else LocalReleases(args.workspace, args.verify_slot, args.log_refresh_s)
        )
        self._ws = Workspace(Path(args.workspace))
        self._retrieval = args.retrieval  # /v1/search's default
        self._judgments = args.judgments  # the relevance page may save judgments
        self._router = ReleaseRouter(self._ws, args.state_poll_s)
        self._token = admin_token(args.admin_token_env, args.admin_token_file)
        IngressRoute.admin_token = self._token  # checked before an admin body is read
        self._metrics = ServingMetrics()
        budget = None if args.queue_budget_ms is None else args.queue_budget_ms / 1e3
        self._admission = Admission(self._metrics, args.max_inflight, budget)
        if isinstance(self._releases, LocalReleases):  # the work's time, for the budget
            self._releases.on_work = self._admission.served
        AdmissionMiddleware.admission = self._admission  # one ingress per replica process
        self._log = ImpressionLog(impression_dir(self._ws))
        self._keeper = Keeper(self._router, self._releases, self._log, self._metrics)
        Bound.ingress = self  # the relevance page's routes (serving.workbench)

    async def check_health(self) -> None:
        """Serve's health check. The first one (before Serve routes anything here) waits for
        the releases this replica keeps to load; later ones are liveness (``/livez``)."""
        await self._keeper.check_health()

    # ---- plumbing: one release per request, errors as HTTP answers, counted ----

    def _route(self, member_id: int | None, request_key: str | None, release: str | None) -> Route:
        """The release named (422 naming ``release`` unless this replica keeps it), else the
        live release or the request's experiment arm."""
        if release is None:
            return self._router.route(member_id, request_key)
        try:
            return self._router.pinned(release)
        except ValueError as err:
            raise HTTPException(422, str(err)) from err

    async def _call(self, route: Route, call: Callable[[], Awaitable[Any]]) -> Any:
        return await answered(call, self._metrics, route.release)

    async def _served(
        self, name: str, route: Route, work: Callable[[], Awaitable[SearchResponse]]
    ) -> SearchResponse:
        return await self._admission.observed(name, route.release, route.arm, work)  # type: ignore[no-any-return]

    def _respond(
        self,
        route: Route,
        kind: str,
        found: tuple[list[list[dict[str, Any]]], dict[str, Any]],
        start: float,
        body: SearchRequest | None = None,
        understood: dict[str, Any] | None = None,
        member_id: int | None = None,
        explain: bool = False,
    ) -> SearchResponse:
        """The response (and its impression log record) for ``found`` = (hits, plan)."""
        hits, plan = found
        used = plan.pop("retrieval")
        info = understood or {}
        notice = None
        if info.get("query_understood") is False:
            unknown = ", ".join(info.get("unknown_words", [])) or "no letters or digits"
            if used == "term":
                what = "term matches alone" if hits[0] else "no term matches either"
            else:
                what = "results for the member alone" if member_id is not None else "no results"
            notice = f"no word of the query is known to the model ({unknown}): {what}"
        release = self._router.info(route.release)
        request_id = uuid.uuid4().hex
        results = [JobHit(**h) for h in hits[0]]
        answer_ms = plan.pop("answer_ms", None)  # the Server-Timing header's (``written``)
        self._log.offer({
            "request_id": request_id, "kind": kind, "release": route.release, "arm": route.arm,
            "experiment": route.experiment, "member_id": member_id,
            "request_key": body.request_key if body else None,
            "query": body.query if body else None, "job_ids": [h.job_id for h in results],
            "corrected_query": info.get("corrected_query"),
        })  # fmt: skip
        # (offer, not append: a side log never fails the request it records)
        response = SearchResponse(
            results=results,
            model_version=release.version,
            slot=release.slot.name,
            took_ms=round((time.perf_counter() - start) * 1e3, 3),
            plan=plan if (body is not None and body.explain) or explain else None,
            query_understood=info.get("query_understood"),
            unknown_words=info.get("unknown_words", []),
            corrected_query=info.get("corrected_query"),
            notice=notice,
            retrieval=used,
            release=route.release,
            arm=route.arm,
            experiment=route.experiment,
            request_id=request_id,
        )
        response._answer_ms = answer_ms
        return response

    # ---- read routes ----

    @app.post("/v1/search", response_model=SearchResponse, responses={**NOT_FOUND, **BODY_ERRORS})
    async def search(self, body: SearchRequest) -> Response:
        """Jobs for a free-text query, personalised by ``member_id`` when given; by
        embeddings, terms or both (``retrieval``); answered by the live release or the
        request's experiment arm (by ``member_id``, else ``request_key``)."""
        route = self._route(body.member_id, body.request_key, body.release)

        async def work() -> SearchResponse:
            start = time.perf_counter()
            retrieval = body.retrieval or self._retrieval
            options = PageOptions(body.max_per_company, body.max_per_city, body.candidates,
                                  body.explain, body.rank)  # fmt: skip
            hits, plan, understood = await self._call(route, lambda: self._releases.search_release(
                route.release, body.query, body.member_id, body.k, body.parsed_filter,
                retrieval, options,
            ))  # fmt: skip
            return self._respond(
                route, "search", (hits, plan), start, body, understood, body.member_id
            )

        return written(await self._served("search", route, work))

    @app.get(
        "/v1/members/{member_id}/recommendations",
        response_model=SearchResponse,
        responses={**NOT_FOUND, 503: {"model": ErrorResponse}},
    )
    async def recommendations(
        self,
        member_id: Annotated[int, UrlPath(ge=MIN_ID, le=MAX_MEMBER_ID)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        max_per_company: Annotated[int | None, Query(ge=1, le=MAX_K)] = None,
        max_per_city: Annotated[int | None, Query(ge=1, le=MAX_K)] = None,
        explain: bool = False,
        release: Annotated[ReleaseId | None, Query()] = None,
    ) -> Response:
        """JYMBII ("jobs you may be interested in"): the member's embedding, no query; ranked
        and crowded as the release (or the caps given) says; ``release``: answered by that
        release (one kept here) outside any experiment."""
        route = self._route(member_id, None, release)
        options = PageOptions(max_per_company, max_per_city, None, explain)

        async def work() -> SearchResponse:
            start = time.perf_counter()
            found = await self._call(
                route,
                lambda: self._releases.recommendations(route.release, member_id, k, options),
            )
            return self._respond(route, "recommendations", found, start, member_id=member_id,
                                 explain=explain)  # fmt: skip

        return written(await self._served("recommendations", route, work))

    @app.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def healthz(self) -> JSONResponse:
        """Readiness: 200 ``ok`` or ``degraded`` (requests are answered; ``problems`` says
        what is wrong), 503 ``loading`` (releases still loading) or ``down`` (the live
        release cannot serve). See ``serving.health``."""
        body = await self._keeper.health()
        code = 200 if body.status in ("ok", "degraded") else 503
        return JSONResponse(status_code=code, content=body.model_dump())

    @app.get(
        "/livez", response_model=LivenessResponse, responses={503: {"model": LivenessResponse}}
    )
    async def livez(self) -> JSONResponse:
        """Liveness: 200 ``alive``, 503 ``stuck`` when a restart of this replica would help
        (its release worker stuck on one request, its side log's writer gone)."""
        body = self._keeper.liveness()
        return JSONResponse(status_code=200 if body.status == "alive" else 503,
                            content=body.model_dump())  # fmt: skip

    @app.get("/v1/releases", response_model=ReleasesResponse)
    async def releases(self) -> ReleasesResponse:
        """The live release, the running experiment and every release requests may reach."""
        state = self._router.state()
        views = []
        for rid in self._router.serving():
            info = self._router.info(rid)
            views.append(ReleaseView(
                release=rid, model_version=info.version, slot=info.slot.name,
                member_interest_version=info.interest_version, role=st.role(state, rid),
            ))  # fmt: skip
        return ReleasesResponse(live=state["live"], experiment=state["experiment"], serving=views)

    @app.get("/metrics", response_class=Response)
    async def metrics(self) -> Response:
        """Prometheus text: requests by route / release / arm / status, latency histograms,
        refusals by reason, shed requests, requests in flight; the request path's health
        (impression-log drops, state file, slot-log problems, ready)."""
        await self._keeper.health()  # the health numbers as of this scrape
        return Response(content=self._metrics.render(), media_type=CONTENT_TYPE)

    # ---- admin routes (bearer token) ----

    def _authorize(self, authorization: str | None) -> None:
        authorize(self._token, authorization)

    async def _warm(self, release_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load (and check) ``release_id``, which the caller named, where releases run:
        (encoder, index) infos; 404 for an unknown release, 409 naming why it cannot serve."""
        info = await answered(
            lambda: self._releases.info(release_id), self._metrics, release_id, named=True
        )
        return info["encoder"], info["index"]

    async def _change(self, change: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Apply a state change (ebr.release), then route by it at once."""
        try:
            event = await asyncio.to_thread(change)
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise HTTPException(409, str(err).strip("'\"")) from err
        self._reload()
        await self._keeper.sync()  # the new state's releases kept (and loaded) at once
        return event

    def _reload(self) -> dict[str, Any]:
        try:
            return self._router.reload()
        except BadStateFile as err:  # the last good state keeps serving; /healthz says so
            raise HTTPException(409, f"{err}; still routing by the last good state") from err

    @app.post("/admin/releases/{release_id}/warm")
    async def warm(
        self, release_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Load a release in the encoder and the retriever before it takes traffic."""
        self._authorize(authorization)
        try:
            check_release_id(release_id)
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
        enc_info, slot_info = await self._warm(release_id)
        return {"encoder": enc_info, "index": slot_info}

    @app.post("/admin/promote")
    async def promote(
        self, body: PromoteRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Make a release live: warmed first, then switched; requests in flight finish on
        the release they started with."""
        self._authorize(authorization)
        await self._warm(body.release)
        return await self._change(lambda: ops.promote(self._ws, body.release))

    @app.post("/admin/rollback")
    async def rollback(
        self, body: RollbackRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Make the previous live release (or ``to``) live again."""
        self._authorize(authorization)
        try:
            target = st.rollback_target(st.read_state(self._ws), body.to)
        except ValueError as err:
            raise HTTPException(409, str(err)) from err
        await self._warm(target)
        return await self._change(lambda: ops.rollback(self._ws, target))

    @app.post("/admin/experiments")
    async def start_experiment(
        self, body: ExperimentRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Split traffic between releases by arm (each arm's release warmed first)."""
        self._authorize(authorization)
        # Kept from the first warm on: warming more arms than spares must not evict the first.
        with self._keeper.holding([a.release for a in body.arms]):
            for arm in body.arms:
                await self._warm(arm.release)
            specs = [(a.arm, a.release, a.weight) for a in body.arms]
            return await self._change(
                lambda: ops.start_experiment(self._ws, body.name, specs, body.salt)
            )

    @app.delete("/admin/experiments")
    async def stop_experiment(
        self, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """End the running experiment: every request gets the live release again."""
        self._authorize(authorization)
        return await self._change(lambda: st.stop_experiment(self._ws))

    @app.post("/admin/reload")
    async def reload(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Re-read releases/state.json now (changed by the CLI or a Flyte task)."""
        self._authorize(authorization)
        state = self._reload()
        await self._keeper.sync()
        return {"live": state["live"], "experiment": state["experiment"]}
