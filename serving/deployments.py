"""Ray Serve ingress (FastAPI) over the request encoder and the index retriever.

    HTTP -> Ingress -> RequestEncoder (Feast profile + request tower) -> Retriever (FAISS slot)

One model version end to end: ``build_app`` resolves the slot alias ONCE and hands the same slot
(and its ``model_version``) to both the encoder and the retriever, so a request embedding of
version N only ever searches vectors that version N's item tower produced, even if the alias
flips while replicas restart. A release is "flip the alias, redeploy".

The encoder (serving/encoder.py) and the retriever (serving/retriever.py) are deployments of
their own; this module holds the HTTP surface: validation, error mapping and the routes.
"""

# No `from __future__ import annotations` here: FastAPI resolves the route signatures of a
# class-based Serve ingress at request time, and string annotations then fail to resolve.
import time
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as UrlPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serving.encoder import unknown_member
from serving.guards import StrictJSONRoute
from serving.schemas import (
    MAX_K,
    MAX_MEMBER_ID,
    ErrorResponse,
    HealthResponse,
    JobHit,
    SearchRequest,
    SearchResponse,
)

app = FastAPI(
    title="EBR job search",
    version="1",
    description="Embedding-based retrieval: search (query and/or member) and JYMBII.",
)
# Every route reads its body through the guards: duplicate keys, depth, size, body timeout.
app.router.route_class = StrictJSONRoute


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default body echoes the input and raw ctx objects; keep loc/msg/type and add
    # one readable line that names each bad field ("k: Input should be less than or equal...").
    detail, parts = [], []
    for e in exc.errors():
        loc, msg = list(e["loc"]), e["msg"]
        if e["type"] == "json_invalid":
            # loc[1] is a character offset, not a field: say where and why parsing stopped.
            msg = f"{msg} at character {loc[-1]}: {e.get('ctx', {}).get('error', 'invalid JSON')}"
            loc = loc[:1]
        detail.append({"loc": loc, "msg": msg, "type": e["type"]})
        parts.append(f"{'.'.join(str(p) for p in loc[1:]) or loc[0]}: {msg}")
    return JSONResponse(status_code=422, content={"detail": detail, "message": "; ".join(parts)})


async def _result(response: DeploymentResponse) -> Any:
    """Await a handle call; an unknown member becomes a 404, anything else propagates."""
    try:
        return await response
    except Exception as exc:
        member = unknown_member(exc)
        if member is None:
            raise
        raise HTTPException(status_code=404, detail=str(member)) from exc


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorResponse, "description": "body not received in time"},
    413: {"model": ErrorResponse, "description": "body too large"},
}


@serve.deployment
@serve.ingress(app)
class Ingress:
    """HTTP API; holds handles to the encoder and retriever (composed in ``build_app``)."""

    def __init__(
        self,
        encoder: DeploymentHandle,
        retriever: DeploymentHandle,
        slot: str,
        model_version: str,
        retrieval: str = "hybrid",
    ) -> None:
        self._encoder = encoder
        self._retriever = retriever
        self._slot = slot
        self._version = model_version
        self._retrieval = retrieval  # /v1/search's default (AppArgs.retrieval)

    async def _respond(
        self,
        vectors: np.ndarray | None,
        k: int,
        start: float,
        filter_json: dict[str, Any] | None = None,
        explain: bool = False,
        understood: dict[str, Any] | None = None,
        text: str | None = None,
        retrieval: str = "ebr",
        personalised: bool = False,
    ) -> SearchResponse:
        call = self._retriever.search.remote(vectors, k, filter_json, text, retrieval, personalised)
        hits, plan = await _result(call)
        used = plan.pop("retrieval")
        info = understood or {}
        notice = None
        if info.get("query_understood") is False:
            unknown = ", ".join(info.get("unknown_words", [])) or "no letters or digits"
            if used == "term":
                what = "term matches alone" if hits[0] else "no term matches either"
            else:
                what = "results for the member alone" if vectors is not None else "no results"
            notice = f"no word of the query is known to the model ({unknown}): {what}"
        return SearchResponse(
            results=[JobHit(**h) for h in hits[0]],
            model_version=self._version,
            slot=self._slot,
            took_ms=round((time.perf_counter() - start) * 1e3, 3),
            plan=plan if explain else None,
            query_understood=info.get("query_understood"),
            unknown_words=info.get("unknown_words", []),
            notice=notice,
            retrieval=used,
        )

    @app.post("/v1/search", response_model=SearchResponse, responses={**_NOT_FOUND, **_BODY_ERRORS})
    async def search(self, body: SearchRequest) -> SearchResponse:
        """Jobs for a free-text query, personalised by ``member_id`` when given; by
        embeddings, terms or both (``retrieval``)."""
        start = time.perf_counter()
        call = self._encoder.encode_request.remote(body.query, body.member_id)
        vectors, understood = await _result(call)
        retrieval = body.retrieval or self._retrieval
        return await self._respond(
            vectors,
            body.k,
            start,
            body.filter,
            body.explain,
            understood,
            body.query,
            retrieval,
            personalised=body.member_id is not None,
        )

    @app.get(
        "/v1/members/{member_id}/recommendations",
        response_model=SearchResponse,
        responses=_NOT_FOUND,
    )
    async def recommendations(
        self,
        member_id: Annotated[int, UrlPath(gt=0, le=MAX_MEMBER_ID)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    ) -> SearchResponse:
        """JYMBII ("jobs you may be interested in"): the member's embedding, no query."""
        start = time.perf_counter()
        vectors = await _result(self._encoder.member_embedding.remote(member_id))
        return await self._respond(vectors, k, start)

    @app.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def healthz(self) -> JSONResponse:
        """200 when both replicas serve the slot and model version this app was built for."""
        slot_info = await self._retriever.info.remote()
        enc_info = await self._encoder.info.remote()
        ok = (
            slot_info["slot"] == self._slot
            and slot_info["model_version"] == self._version == enc_info["model_version"]
        )
        body = HealthResponse(
            ok=ok,
            encoder_model_version=enc_info["model_version"],
            member_interest_version=enc_info["member_interest_version"],
            **slot_info,
        )
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())
