"""The relevance page in a real headless Chromium (Debian's chromium + chromium-driver, driven
by Selenium) against a real Serve app: a typed query with a geo filter shows only eligible
jobs, two releases side by side with rank shifts, a result's score breakdown, a judgment
saved in the workspace and NDCG@10 per release, and the API's own message for bad input.

The app serves a copy of the platform with an experiment of two arms: the live release (ranked)
and a second release of the same version without the ranker (retrieval order)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ebr.data.geo import find_city, haversine_km
from ebr.eval import judgments as jd
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.ranking import RankingSpec
from tests.browser import chromium
from tests.serving_process import Server

pytestmark = pytest.mark.slow
WAIT_S = 60.0


@pytest.fixture(scope="module")
def served(platform_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from feature_repo.store import copy_workspace

    ws = copy_workspace(platform_ws, tmp_path_factory.mktemp("page") / "ws")
    live = st.read_state(ws)["live"]
    plain = ops.provision(ws, "v1", ranking=RankingSpec(None)).id  # retrieval order
    ops.start_experiment(ws, "ranked-vs-plain", [("ranked", live, 0.5), ("plain", plain, 0.5)])
    server = Server(ws)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    yield driver
    driver.quit()


def _open(browser: Any, server: Server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"http://127.0.0.1:{server.port}/")
    WebDriverWait(browser, WAIT_S).until(  # members and releases loaded
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#member option")) > 1
            and len(d.find_elements(By.CSS_SELECTOR, "#release-b option")) > 2
        )
    )


def _fill(browser: Any, field: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def _submit_and_wait(browser: Any, columns: int = 1) -> list[Any]:
    """Submit; -> the result columns once ``columns`` of them (or an error) are shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("document.querySelector('#columns').replaceChildren()")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "section.column")) >= columns
            or d.find_element(By.ID, "error").is_displayed()
        )
    )
    return browser.find_elements(By.CSS_SELECTOR, "section.column")


def _select(browser: Any, field: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, field)).select_by_value(value)


def _common_city(ws: Path) -> tuple[str, str]:
    jobs = pd.read_parquet(ws / "data" / "jobs.parquet", columns=["city", "country", "active"])
    top = jobs[jobs["active"]].groupby(["city", "country"]).size().idxmax()
    return str(top[0]), str(top[1])


def test_a_typed_query_with_a_geo_filter_shows_only_eligible_jobs(
    served: Server, browser: Any, platform_ws: Path
) -> None:
    from selenium.webdriver.common.by import By

    city, country = _common_city(platform_ws)
    place = find_city(f"{city}, {country}")
    assert place is not None
    _open(browser, served)
    _fill(browser, "query", "manager")
    _fill(browser, "km", "50")
    _fill(browser, "place", f"{city}, {country}")
    (col,) = _submit_and_wait(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    hits = col.find_elements(By.CSS_SELECTOR, "ol.results > li")
    assert hits, "the catalogue's most common city has jobs within 50 km"
    lat = [float(h.get_attribute("data-lat")) for h in hits]
    lon = [float(h.get_attribute("data-lon")) for h in hits]
    assert (haversine_km(lat, lon, place["lat"], place["lon"]) <= 50 + 1e-6).all()


def test_two_releases_side_by_side_with_rank_shifts_and_a_breakdown(
    served: Server, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    state = served.client.get("/v1/releases").json()
    roles = {v["role"]: v["release"] for v in state["serving"]}
    ranked, plain = state["live"], roles["arm:plain"]  # the live release is the ranked arm
    _open(browser, served)
    member = browser.find_elements(By.CSS_SELECTOR, "#member option")[2].get_attribute("value")
    _select(browser, "member", member)
    _fill(browser, "query", "engineer")
    _select(browser, "release-a", plain)
    _select(browser, "release-b", ranked)
    first, second = _submit_and_wait(browser, columns=2)
    assert first.get_attribute("data-release") == plain
    assert second.get_attribute("data-release") == ranked
    shifts = [s.text for s in second.find_elements(By.CSS_SELECTOR, ".shift")]
    assert len(shifts) == 10 and all(s == "=" or s == "new" or s[0] in "▲▼" for s in shifts)
    assert any(s != "=" for s in shifts), "the ranker reorders retrieval's page"
    # Why: the ranked release's breakdown names the ranker's features with contributions.
    why = second.find_element(By.CSS_SELECTOR, "details.why")
    why.find_element(By.TAG_NAME, "summary").click()
    text = why.text
    assert "ranker score" in text and "retrieval rank" in text and "crowding" in text
    plan = second.find_element(By.CSS_SELECTOR, "details.plan")
    plan.find_element(By.TAG_NAME, "summary").click()
    assert '"funnel"' in plan.text and '"rank"' in plan.text  # per-stage timings


def test_a_judgment_is_saved_and_scored_per_release(
    served: Server, browser: Any, platform_ws: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, served)
    _fill(browser, "set", "browser-test")
    _fill(browser, "query", "  Sales   Manager ")
    (col,) = _submit_and_wait(browser)
    first = col.find_element(By.CSS_SELECTOR, "ol.results > li")
    job_id = int(first.get_attribute("data-job-id"))
    first.find_element(By.CSS_SELECTOR, ".judge .yes").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "NDCG@10" in d.find_element(By.ID, "ndcg").text)
    line = browser.find_element(By.ID, "ndcg").text
    assert 'set "browser-test"' in line and "1 queries" in line
    for arm in served.client.get("/v1/releases").json()["serving"]:
        assert arm["release"] in line  # one figure per release the server keeps
    saved = jd.read_set(served.ws, "browser-test")
    assert [(j.query, j.member_id, j.job_id, j.relevant) for j in saved] == [
        ("sales manager", None, job_id, True)
    ]
    assert "on" in first.find_element(By.CSS_SELECTOR, ".judge .yes").get_attribute("class")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"place": "Qwxzyplo", "km": "20", "query": "nurse"}, "HTTP 404: name: no city called"),
        ({"query": "x" * 600}, "HTTP 422: query: String should have at most 512 characters"),
        ({"km": "20", "query": "nurse"}, "within: give both the km and a city"),
    ],
    ids=["unknown city", "query too long", "radius without a city"],
)
def test_a_bad_input_shows_the_message_not_a_blank_page(
    served: Server, browser: Any, fields: dict[str, str], message: str
) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, served)
    for name, value in fields.items():
        _fill(browser, name, value)
    assert _submit_and_wait(browser) == []
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and message in error.text, error.text


def test_the_feed_tab_shows_a_members_recommendations(served: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, served)
    browser.find_element(By.ID, "tab-feed").click()
    assert _submit_and_wait(browser) == []  # no member: the page says so
    assert "member: pick a member" in browser.find_element(By.ID, "error").text
    member = browser.find_elements(By.CSS_SELECTOR, "#member option")[1].get_attribute("value")
    _select(browser, "member", member)
    (col,) = _submit_and_wait(browser)
    assert len(col.find_elements(By.CSS_SELECTOR, "ol.results > li")) == 10
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_the_page_sends_no_admin_token() -> None:
    static = Path(__file__).resolve().parents[2] / "serving" / "static"
    text = "".join(p.read_text().lower() for p in static.iterdir())
    assert "authorization" not in text and "/admin" not in text and "bearer" not in text
