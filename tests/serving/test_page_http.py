"""The relevance page's routes over HTTP (``serving.workbench``) on the shared Serve app: the
page and its files, sample members, places by name, judgments and NDCG@10 per release, a
request pinned to a release; every bad input a 4xx whose message names the field."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ebr.config import Workspace
from ebr.eval import judgments as jd

pytestmark = pytest.mark.slow


def test_the_page_and_its_files_are_served(api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "https://" not in page.text  # nothing from a CDN
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = api.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    for name in ("app.py", "..%2Fworkbench.py", "index.htm"):
        r = api.get(f"/static/{name}")
        assert r.status_code == 404


def test_sample_members_and_places(api: httpx.Client, platform_ws: Path) -> None:
    members = api.get("/v1/sample-members", params={"n": 5}).json()
    assert len(members) == 5 and len({m["member_id"] for m in members}) == 5
    assert all(m["headline"] and m["city"] and m["lat"] is not None for m in members)
    berlin = api.get("/v1/places", params={"name": "berlin"}).json()
    assert berlin["country"] == "DE" and berlin["lat"] == pytest.approx(52.52, abs=0.1)
    assert api.get("/v1/places", params={"name": "Paris, US"}).json()["country"] == "US"


@pytest.mark.parametrize(
    ("path", "params", "code", "field"),
    [
        ("/v1/places", {"name": "Qwxzyplo"}, 404, "name"),
        ("/v1/places", {"name": ""}, 422, "name"),
        ("/v1/places", {}, 422, "name"),
        ("/v1/places", {"name": "x" * 101}, 422, "name"),
        ("/v1/sample-members", {"n": 0}, 422, "n"),
        ("/v1/sample-members", {"n": "many"}, 422, "n"),
        ("/v1/judgments/bad%20name", {}, 422, "name"),
        ("/v1/judgments/.hidden/report", {}, 422, "name"),
        ("/v1/judgments/nobody-judged/report", {}, 409, "name"),
        ("/v1/judgments/x/report", {"retrieval": "bm42"}, 422, "retrieval"),
        ("/v1/members/1/recommendations", {"release": "rel-v1-20990101T000000000000"}, 422,
         "release"),
        ("/v1/members/1/recommendations", {"release": "live"}, 422, "release"),
    ],
)  # fmt: skip
def test_bad_reads_name_the_field(
    api: httpx.Client, path: str, params: dict[str, object], code: int, field: str
) -> None:
    assert_names_field(api.get(path, params=params), code, field)


def assert_names_field(r: httpx.Response, code: int, field: str) -> None:
    """``r`` is a ``code`` whose one-line message starts with the bad field's name."""
    assert r.status_code == code, r.text
    body = r.json()
    message = body.get("message") or body["detail"]
    assert isinstance(message, str) and message.startswith(field), message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "nurse", "relevant": True}, "job_id"),
        ({"query": "nurse", "job_id": 1, "relevant": "yes"}, "relevant"),
        ({"query": "nurse", "job_id": "1", "relevant": True}, "job_id"),
        ({"query": "nurse", "job_id": 0, "relevant": True}, "job_id"),
        ({"job_id": 1, "relevant": True}, "at least one of 'query' or 'member_id'"),
        ({"query": "nurse", "job_id": 1, "relevant": True, "grade": 3}, "grade"),
        ({"query": "n" * 600, "job_id": 1, "relevant": True}, "query"),
        ({"member_id": -4, "job_id": 1, "relevant": True}, "member_id"),
    ],
)
def test_bad_judgments_name_the_field_and_save_nothing(
    api: httpx.Client, platform_ws: Path, body: dict[str, object], field: str
) -> None:
    r = api.put("/v1/judgments/http-bad", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["message"], r.json()
    assert jd.read_set(Workspace(platform_ws), "http-bad") == []


def test_judgments_are_saved_without_a_token_and_scored(
    api: httpx.Client, platform_ws: Path
) -> None:
    live = api.get("/v1/releases").json()["live"]
    shown = api.post("/v1/search", json={"query": "manager", "k": 10}).json()["results"]
    assert len(shown) >= 2
    for hit, relevant in ((shown[0], True), (shown[1], False), (shown[0], True)):
        r = api.put("/v1/judgments/http-set", json={"query": " Manager", "job_id": hit["job_id"],
                                                    "relevant": relevant})  # fmt: skip
        assert r.status_code == 200, r.text
    assert r.json() == {"set": "http-set", "judgments": 2, "queries": 1}
    assert {s["name"] for s in api.get("/v1/judgments").json()} >= {"http-set"}
    report = api.get("/v1/judgments/http-set/report").json()
    # the live release shows the relevant job first: a perfect NDCG@10
    assert report["queries"] == 1 and report["releases"][live]["ndcg@10"] == 1.0
    assert report["releases"][live]["judged@10"] == pytest.approx(0.2)


def test_a_request_pinned_to_a_kept_release_is_answered_by_it(api: httpx.Client) -> None:
    live = api.get("/v1/releases").json()["live"]
    body = api.post("/v1/search", json={"query": "manager", "release": live}).json()
    assert body["release"] == live and body["arm"] is None and body["experiment"] is None
    r = api.post("/v1/search", json={"query": "manager",
                                     "release": "rel-v1-20990101T000000000000"})  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"].startswith("release: "), r.text
