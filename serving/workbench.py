"""The relevance page's routes (on the ingress's app, ``serving.deployments``): the page itself
(static HTML, CSS and JavaScript in ``serving/static``: no build step, nothing from a CDN),
sample members to sign in as, places typed by name for the geo filter, and judgments with
NDCG@10 per release from them (``ebr.eval.judgments``).

    GET  /                                  the page
    GET  /v1/sample-members?n=24            members to pick (headline, city, place)
    GET  /v1/places?name=Berlin             a city by name, for "within R km of"
    GET  /v1/judgments                      the workspace's judgment sets
    GET  /v1/judgments/{set}                a set's judgments
    PUT  /v1/judgments/{set}                mark one result relevant or not
    GET  /v1/judgments/{set}/report         NDCG@10 of each release kept here on the set

The page sends no admin token and no route here needs one; admin actions stay in the CLI and
the admin API. Saving judgments writes the workspace: ``AppArgs.judgments`` turns it off.
"""

# No `from __future__ import annotations`: FastAPI resolves these signatures at runtime.
import asyncio
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import HTTPException, Query
from fastapi import Path as UrlPath
from fastapi.responses import FileResponse

from ebr.config import Workspace
from ebr.eval import judgments as jd
from serving.api import app
from serving.metrics import answered
from serving.page import PageOptions
from serving.schemas import ErrorResponse, JudgmentRequest, Place, Retrieval, SampleMember, SetName

STATIC = Path(__file__).parent / "static"
FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
MAX_SAMPLE = 200


@lru_cache(maxsize=4)
def _members(path: Path, mtime_ns: int) -> list[dict[str, Any]]:
    import pandas as pd

    cols = ["member_id", "headline", "city", "country", "lat", "lon"]
    frame = pd.read_parquet(path, columns=cols).sort_values("member_id")
    step = max(1, len(frame) // MAX_SAMPLE)  # spread over the table, not its first rows
    picked = frame.iloc[::step].head(MAX_SAMPLE)
    return [
        {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for row in picked.to_dict("records")
    ]


def sample_members(ws: Workspace, n: int) -> list[dict[str, Any]]:
    """``n`` members spread over the workspace's member table (the same ones every time)."""
    path = ws.data / "members.parquet"
    if not path.is_file():
        return []
    return _members(path, path.stat().st_mtime_ns)[:n]


class Bound:
    """The ingress of this replica process (one per process, as ``AdmissionMiddleware``), set
    by ``Ingress.__init__``: its ``_ws``, ``_router``, ``_releases``, ``_metrics``,
    ``_retrieval`` and ``_judgments`` (whether saving is on). Module-level routes, not methods:
    Serve's class-based view binds only the ingress class's own methods reliably."""

    ingress: Any = None


def _ingress() -> Any:
    if Bound.ingress is None:
        raise HTTPException(503, "the ingress is starting")
    return Bound.ingress


@app.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type=FILES["index.html"])


@app.get("/static/{name}", include_in_schema=False, responses={404: {"model": ErrorResponse}})
async def static(name: str) -> FileResponse:
    if name not in FILES:  # a fixed list: nothing else under serving/ is reachable
        raise HTTPException(404, f"name: no static file {name!r}")
    return FileResponse(STATIC / name, media_type=FILES[name])


@app.get("/v1/sample-members", response_model=list[SampleMember])
async def members(n: Annotated[int, Query(ge=1, le=MAX_SAMPLE)] = 24) -> list[dict[str, Any]]:
    """Members to search as (the page's picker), each with headline and city."""
    return await asyncio.to_thread(sample_members, _ingress()._ws, n)


@app.get("/v1/places", response_model=Place, responses={404: {"model": ErrorResponse}})
async def places(name: Annotated[str, Query(min_length=1, max_length=100)]) -> dict[str, Any]:
    """The city ``name`` means (GeoNames, 15,000+ people; "Paris, FR" for a country)."""
    from ebr.data.geo import find_city

    found = await asyncio.to_thread(find_city, name)
    if found is None:
        raise HTTPException(404, f"name: no city called {name.strip()!r} is known")
    return found


@app.get("/v1/judgments")
async def judgment_sets() -> list[dict[str, Any]]:
    """The workspace's judgment sets (name, judgments, queries)."""
    return await asyncio.to_thread(jd.list_sets, _ingress()._ws)


@app.get("/v1/judgments/{name}", responses={409: {"model": ErrorResponse}})
async def judgment_set(name: Annotated[SetName, UrlPath()]) -> dict[str, Any]:
    """A set's judgments (empty when nobody has judged in it yet)."""
    items = await _read(name)
    return {"set": name, "judgments": [j.__dict__ for j in items]}


@app.put("/v1/judgments/{name}", responses={403: {"model": ErrorResponse},
                                            409: {"model": ErrorResponse}})  # fmt: skip
async def judge(name: Annotated[SetName, UrlPath()], body: JudgmentRequest) -> dict[str, Any]:
    """Mark ``job_id`` relevant (or not) for the query and member; the latest mark wins."""
    ingress = _ingress()
    if not ingress._judgments:
        raise HTTPException(403, "judgments are off on this server (AppArgs.judgments)")
    try:
        return await asyncio.to_thread(jd.record, ingress._ws, name, body.query,
                                       body.member_id, body.job_id, body.relevant)  # fmt: skip
    except (ValueError, OSError) as err:  # a damaged set file, a full set, a read-only disk
        raise HTTPException(409, str(err)) from err


@app.get("/v1/judgments/{name}/report", responses={409: {"model": ErrorResponse}})
async def judgment_report(
    name: Annotated[SetName, UrlPath()], retrieval: Retrieval | None = None
) -> dict[str, Any]:
    """NDCG@10 on the set's judged queries of every release this replica keeps (live,
    experiment arms, the rollback target), each answering as it serves."""
    items = await _read(name)
    if not items:
        raise HTTPException(409, f"name: judgment set {name!r} has no judgments yet")
    ingress = _ingress()
    how = retrieval or ingress._retrieval
    shown: dict[str, dict[Any, list[int]]] = {}
    for rid in ingress._router.keep():
        shown[rid] = {}
        for query, member in jd.queries(items):
            shown[rid][(query, member)] = await _shown(ingress, rid, query, member, how)
    searches = {rid: (lambda q, m, k, s=s: s[(q, m)]) for rid, s in shown.items()}
    result = jd.report(items, searches)
    return {"set": name, "retrieval": how, **result}


async def _shown(
    ingress: Any, rid: str, query: str | None, member: int | None, how: str
) -> list[int]:
    """The job ids ``rid`` shows for the judged query (errors as the search's answers)."""
    releases = ingress._releases
    if query is None:
        call = lambda: releases.recommendations(rid, member, jd.K, PageOptions())  # noqa: E731
    else:
        call = lambda: releases.search_release(  # noqa: E731
            rid, query, member, jd.K, None, how, PageOptions()
        )
    found = await answered(call, ingress._metrics, rid)
    return [int(h["job_id"]) for h in found[0][0]]


async def _read(name: str) -> list[jd.Judgment]:
    try:
        return await asyncio.to_thread(jd.read_set, _ingress()._ws, name)
    except ValueError as err:
        raise HTTPException(409, str(err)) from err
