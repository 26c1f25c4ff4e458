"""Releases behind HTTP on the session's app (one live release, no admin token configured):
responses name their release, /v1/releases and /metrics report them, the impression log
records each served request, admin routes are closed without a token, and a request embedding
of one release is refused by another release's index, whether releases run in the ingress or
in a ReleaseServer deployment (which answers like the ingress)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ebr.config import Workspace
from ebr.release.impressions import read_impressions
from ebr.release.state import read_state

pytestmark = pytest.mark.slow


def test_responses_and_releases_route_name_the_live_release(
    api: httpx.Client, platform_ws: Path
) -> None:
    live = read_state(Workspace(platform_ws))["live"]
    body = api.post("/v1/search", json={"query": "nurse", "k": 3}).json()
    assert body["release"] == live and body["arm"] is None and body["experiment"] is None
    releases = api.get("/v1/releases").json()
    assert releases["live"] == live and releases["experiment"] is None
    (view,) = releases["serving"]
    assert view["release"] == live and view["role"] == "live"
    assert view["slot"] == body["slot"] and view["member_interest_version"] == "v1"


def test_metrics_count_requests_by_release_and_status(api: httpx.Client, platform_ws: Path) -> None:
    live = read_state(Workspace(platform_ws))["live"]

    def served() -> float:
        text = api.get("/metrics").text
        prefix = f'ebr_requests_total{{arm="",release="{live}",route="search",status="200"}}'
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = served()
    for _ in range(3):
        assert api.post("/v1/search", json={"query": "data engineer", "k": 2}).status_code == 200
    assert served() == before + 3
    text = api.get("/metrics").text
    assert "ebr_request_seconds_bucket" in text and "ebr_inflight_requests" in text


def test_each_served_request_is_in_the_impression_log(api: httpx.Client, platform_ws: Path) -> None:
    body = api.post("/v1/search", json={"query": "warehouse", "k": 4}).json()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # written by the ingress's group commit (~0.2 s)
        log = read_impressions(Workspace(platform_ws))
        row = log[log["request_id"] == body["request_id"]]
        if len(row):
            break
        time.sleep(0.3)
    assert len(row) == 1
    assert list(row.iloc[0]["job_ids"]) == [h["job_id"] for h in body["results"]]
    assert row.iloc[0]["release"] == body["release"] and row.iloc[0]["query"] == "warehouse"


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("post", "/admin/promote", {"release": "rel-v1-20261130T000000000000"}),
        ("post", "/admin/rollback", {}),
        ("post", "/admin/experiments", {"name": "x", "arms": []}),
        ("delete", "/admin/experiments", None),
        ("post", "/admin/reload", None),
        ("post", "/admin/releases/rel-v1-20261130T000000000000/warm", None),
    ],
)
def test_admin_routes_are_closed_without_a_configured_token(
    api: httpx.Client, method: str, path: str, body: dict | None
) -> None:
    headers = {"Authorization": "Bearer anything"}
    resp = api.request(method.upper(), path, json=body, headers=headers)
    if resp.status_code == 422:  # a body the schema refuses never reaches the handler either
        return
    assert resp.status_code == 403 and "no admin token" in resp.text, resp.text


def _unit_query() -> np.ndarray:
    vec = np.zeros((1, 64), dtype=np.float32)
    vec[0, 0] = 1.0
    return vec


def test_an_embedding_of_another_release_is_refused_in_the_ingress(platform_ws: Path) -> None:
    """``release_server: ingress`` (the default): the ingress's own releases refuse it."""
    import asyncio

    from serving.errors import ReleaseMismatch
    from serving.release_server import LocalReleases

    live = read_state(Workspace(platform_ws))["live"]
    releases = LocalReleases(str(platform_ws), verify=True, refresh_s=1.0)
    rel = asyncio.run(releases.get(live))
    other = "rel-v9-20261130T000000000000"
    with pytest.raises(ReleaseMismatch, match=f"release {other} cannot search release {live}"):
        rel.retrieve(other, _unit_query(), 5)
    with pytest.raises(ReleaseMismatch, match=f"release {other} cannot search release {live}"):
        rel.retrieve(other, None, 5, None, "nurse", "term", True, _unit_query())
    hits, _ = rel.retrieve(live, _unit_query(), 5)
    assert len(hits[0]) == 5  # its own release's embedding is searched
    hits, plan = rel.retrieve(live, _unit_query(), 5, None, "nurse", "hybrid", True,
                                   _unit_query())  # fmt: skip
    assert len(hits[0]) == 5 and "personal_weight" in plan  # signed in: reordered by the member


@pytest.fixture(scope="module")
def remote_app(api: httpx.Client, platform_ws: Path) -> Iterator[str]:
    """The app with ``release_server: deployment`` beside the session's, under /remote."""
    from ray import serve

    from serving.app import build_app

    args = {"workspace": str(platform_ws), "release_server": "deployment"}
    serve.run(build_app(args), name="ebr-remote", route_prefix="/remote", blocking=False)
    deadline = time.monotonic() + 120
    while api.get("/remote/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the deployment-placed app did not start"
        time.sleep(0.5)
    yield "ebr-remote"
    serve.delete("ebr-remote")


def test_a_release_server_deployment_answers_like_the_ingress(
    api: httpx.Client, remote_app: str
) -> None:
    for body in ({"query": "nurse", "k": 5}, {"query": "warehouse", "member_id": 1, "k": 5}):
        here, there = api.post("/v1/search", json=body), api.post("/remote/v1/search", json=body)
        assert here.status_code == there.status_code == 200, there.text
        ids = [[h["job_id"] for h in r.json()["results"]] for r in (here, there)]
        assert ids[0] == ids[1] and len(ids[0]) == 5
    feed = api.get("/remote/v1/members/1/recommendations", params={"k": 3})
    assert feed.status_code == 200 and len(feed.json()["results"]) == 3


def test_an_embedding_of_another_release_is_refused_by_the_release_server(
    remote_app: str, platform_ws: Path
) -> None:
    from ray import serve

    from serving.errors import ReleaseMismatch, raised

    live = read_state(Workspace(platform_ws))["live"]
    server = serve.get_deployment_handle("ReleaseServer", app_name=remote_app)
    other = "rel-v9-20261130T000000000000"
    with pytest.raises(Exception) as err:
        server.options(multiplexed_model_id=live).search_vector.remote(
            other, _unit_query(), 5
        ).result()
    mismatch = raised(err.value, ReleaseMismatch)
    assert mismatch is not None and mismatch.index_release == live, err.value
    assert f"release {other} cannot search release {live}" in str(mismatch)
    call = server.options(multiplexed_model_id=live).search_vector.remote(live, _unit_query(), 5)
    hits, _ = call.result()
    assert len(hits[0]) == 5  # its own release's embedding is searched
