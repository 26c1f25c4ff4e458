"""Ray Serve deployments: request encoder, index retriever, and the FastAPI ingress.

    HTTP -> Ingress -> RequestEncoder (Feast profile + request tower) -> Retriever (FAISS slot)

One model version end to end: ``build_app`` resolves the slot alias ONCE and hands the same slot
(and its ``model_version``) to both the encoder and the retriever, so a request embedding of
version N only ever searches vectors that version N's item tower produced, even if the alias
flips while replicas restart. A release is "flip the alias, redeploy".

Heavy stacks (torch, faiss, feast) are imported inside the replica constructors: the ingress
replica and the driver never pay for them.
"""

# No `from __future__ import annotations` here: FastAPI resolves the route signatures of a
# class-based Serve ingress at request time, and string annotations then fail to resolve.
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as UrlPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from ebr.config import Workspace
from serving.schemas import (
    MAX_K,
    MAX_MEMBER_ID,
    ErrorResponse,
    HealthResponse,
    JobHit,
    SearchRequest,
    SearchResponse,
)


class UnknownMember(LookupError):
    """A member id with no profile in the Feast online store (HTTP 404)."""

    def __init__(self, member_id: int) -> None:
        # args holds only the id so the error pickles across the handle call unchanged.
        super().__init__(member_id)
        self.member_id = member_id

    def __str__(self) -> str:
        return f"unknown member_id {self.member_id}"


def unknown_member(exc: BaseException) -> UnknownMember | None:
    """The ``UnknownMember`` inside ``exc``, or None.

    A replica's exception reaches the caller wrapped in ``RayTaskError``; the original is its
    ``cause``. Walk the chain rather than rely on Ray's dual-class wrapper keeping attributes.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # bounded: wrappers never nest deeper than a few levels
        if seen is None:
            return None
        if isinstance(seen, UnknownMember) and not isinstance(seen, RayTaskError):
            return seen
        seen = seen.cause if isinstance(seen, RayTaskError) else seen.__cause__
    return None


def request_tower_dir(ws: Workspace, model_version: str) -> Path:
    """``models/<version>`` for the slot's version; fail loudly if that model is not there.

    Serving another version's request tower against this slot would return plausible-looking
    but meaningless neighbours, so there is no fallback.
    """
    path = ws.models / model_version
    if not (path / "request_tower.pt").is_file():
        raise FileNotFoundError(
            f"the served slot was built with model {model_version!r} but {path} has no "
            "request_tower.pt; requests must be embedded by the same model version as the slot"
        )
    return path


@serve.deployment
class Retriever:
    """Holds one index slot (snapshot + replayed live log) and answers filtered top-k searches."""

    def __init__(self, slot_dir: str, verify: bool = True, refresh_s: float = 1.0) -> None:
        import faiss

        from ebr.index.attributes import AttributeTable
        from ebr.index.live import open_live

        # One query per call on a fraction of a core: OpenMP threads only contend (measured
        # 10-20x slower single-query search with 2 threads on the 2-core machines).
        faiss.omp_set_num_threads(1)
        # Read-only: the writer (a pipeline) owns the log; a restart replays what it acked.
        self._live = open_live(Path(slot_dir), verify=verify, writable=False)
        self._slot = self._live.snapshot
        self._attrs = AttributeTable.from_items(self._slot.items)
        self._refresh_s = refresh_s
        self._refreshed = time.monotonic()

    def _refresh(self) -> None:
        # Upserts and deletes reach the slot's log from a writer process (a pipeline); tail it
        # at most every refresh_s so a query sees acknowledged writes within that delay.
        if time.monotonic() - self._refreshed >= self._refresh_s:
            self._live.refresh()
            self._refreshed = time.monotonic()

    def search(
        self, vectors: np.ndarray, k: int, filter_json: dict[str, Any] | None = None
    ) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
        """Top-k live jobs per request vector that pass the filter.

        Args:
            vectors: float32 [q, d] unit request embeddings of the slot's model version.
            k: results per request (1..100, validated by the ingress).
            filter_json: a filter expression (validated by the ingress; see ebr.index.filters).

        Returns:
            q lists of up to k hits (display columns + ``score``), best first, and the plan.
        """
        from ebr.index.filters import parse_filter
        from ebr.index.search import search_live

        self._refresh()
        flt = parse_filter(filter_json) if filter_json is not None else None
        hits = search_live(self._live, self._attrs, vectors, k, flt)
        import pandas as pd

        delta = hits.delta_items
        out = []
        for row_scores, row_ids in zip(hits.scores, hits.job_ids, strict=True):
            ids = row_ids[row_ids >= 0]
            newer = np.isin(ids, delta["job_id"])  # an upsert supersedes the snapshot row
            table = pd.concat([self._slot.rows(ids[~newer]), delta[delta["job_id"].isin(ids)]])
            records = table.set_index("job_id", drop=False).loc[ids].to_dict("records")
            for record, score in zip(records, row_scores[row_ids >= 0], strict=True):
                record["score"] = float(score)
            out.append(records)
        return out, hits.plan

    def info(self) -> dict[str, Any]:
        """Slot name, model version, size and measured recall@10 (for /healthz)."""
        m = self._slot.manifest
        return {
            "slot": self._slot.name,
            "model_version": self._slot.model_version,
            "item_count": int(m["item_count"]),
            "recall_at_10": m.get("recall_at_10"),
        }


@serve.deployment
class RequestEncoder:
    """Embeds (query, member) requests with the request tower of one model version."""

    def __init__(self, workspace: str, model_version: str) -> None:
        import torch

        from ebr.model.artifact import check_lineage, load_request_tower
        from feature_repo.store import member_profiles, open_store

        # A replica gets a fraction of a core; intra-op threads would only contend.
        torch.set_num_threads(1)
        ws = Workspace(Path(workspace))
        self._tower, self._cfg, meta = load_request_tower(request_tower_dir(ws, model_version))
        if meta.get("version") != model_version:
            raise ValueError(
                f"{ws.models / model_version} says version {meta.get('version')!r}, "
                f"expected {model_version!r}"
            )
        self._version = model_version
        # The member-interest version this model was co-trained with; refuse any other.
        recorded = meta.get("lineage", {}).get("member_interest")
        self._interest = check_lineage(
            meta, None if recorded is None else ws.interest_models / recorded["version"]
        )
        self._store = open_store(ws.feature_repo)
        # Warm up: the first forward pass and the first online read are ~0.5 s (lazy init);
        # pay it here, before the replica reports ready, not on the first user's request.
        self.encode("warm up", None)
        member_profiles(self._store, [1])

    def _profile(self, member_id: int) -> dict[str, Any]:
        """Profile + looked-up member-interest embedding (None until the batch run embeds a
        new member: the tower then sees has_interest = 0, as in training)."""
        from feature_repo.store import member_interest, member_profiles

        profile = member_profiles(self._store, [member_id]).get(member_id)
        if profile is None:
            raise UnknownMember(member_id)
        if self._interest is not None:
            vec = member_interest(self._store, [member_id], self._interest).get(member_id)
            profile["interest"] = vec
        return profile

    def encode(self, query: str | None, member_id: int | None) -> np.ndarray:
        """float32 [1, dim] unit embedding of one request (now as its time context); raises
        ``UnknownMember``."""
        from ebr.model.infer import encode_requests

        member = None if member_id is None else self._profile(member_id)
        now = datetime.now(UTC)
        return encode_requests(self._tower, [query], [member], self._cfg, whens=[now])

    def member_embedding(self, member_id: int) -> np.ndarray:
        """float32 [1, dim] JYMBII embedding: the batch one from Feast, else the profile's.

        A member who joined after the last batch run has a profile but no batch embedding yet;
        encoding the profile online is what the batch job would have produced.
        """
        from feature_repo.store import member_embeddings

        vec = member_embeddings(self._store, [member_id], self._version).get(member_id)
        if vec is None:
            return self.encode(None, member_id)
        vec = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        if vec.shape[1] != self._cfg.dim:
            raise ValueError(
                f"member_embedding_{self._version} for member {member_id} has dim "
                f"{vec.shape[1]}, model {self._version} has dim {self._cfg.dim}"
            )
        return vec

    def info(self) -> dict[str, Any]:
        return {
            "model_version": self._version,
            "member_interest_version": self._interest,
            "dim": self._cfg.dim,
        }


app = FastAPI(
    title="EBR job search",
    version="1",
    description="Embedding-based retrieval: search (query and/or member) and JYMBII.",
)


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
    ) -> None:
        self._encoder = encoder
        self._retriever = retriever
        self._slot = slot
        self._version = model_version

    async def _respond(
        self,
        vectors: np.ndarray,
        k: int,
        start: float,
        filter_json: dict[str, Any] | None = None,
        explain: bool = False,
    ) -> SearchResponse:
        hits, plan = await _result(self._retriever.search.remote(vectors, k, filter_json))
        return SearchResponse(
            results=[JobHit(**h) for h in hits[0]],
            model_version=self._version,
            slot=self._slot,
            took_ms=round((time.perf_counter() - start) * 1e3, 3),
            plan=plan if explain else None,
        )

    @app.post("/v1/search", response_model=SearchResponse, responses=_NOT_FOUND)
    async def search(self, body: SearchRequest) -> SearchResponse:
        """Jobs for a free-text query, personalised by ``member_id`` when given."""
        start = time.perf_counter()
        vectors = await _result(self._encoder.encode.remote(body.query, body.member_id))
        return await self._respond(vectors, body.k, start, body.filter, body.explain)

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
