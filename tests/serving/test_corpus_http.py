"""The ESCO knowledge base over HTTP on the shared Serve app: built into the platform's
workspace (its release, slot and Feast view), searched at ``/v1/corpora/esco/search`` while
jobs stay at ``/v1/search``; a new build and an upserted article serve without a restart;
bad input is a 4xx naming the field."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.corpus import corpus_spec
from ebr.corpus.build import build_corpus, upsert_articles
from tests.serving.test_page_http import assert_names_field

pytestmark = pytest.mark.slow
ESCO = corpus_spec("esco")


@pytest.fixture(scope="module")
def built(platform_ws: Path) -> dict[str, Any]:
    return build_corpus(Workspace(platform_ws), ESCO)


def _ask(api: httpx.Client, query: str, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/corpora/esco/search", json={"query": query, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _until(check: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def test_alternative_labels_retrieve_their_occupation(api: httpx.Client, built) -> None:  # type: ignore[no-untyped-def]
    docs = ESCO.load("articles").set_index("article_id")
    asked = ESCO.load("queries").sample(40, random_state=3)
    hits = 0
    for query, article in asked.itertuples(index=False):
        body = _ask(api, query, k=10, retrieval="ebr")
        assert body["release"] == built["id"] and body["corpus"] == "esco"
        ids = [a["article_id"] for a in body["results"]]
        assert len(ids) == 10 and len(set(ids)) == 10
        hits += article in ids
        top = body["results"][0]
        assert top["title"] == docs.loc[top["article_id"], "title"]
    assert hits / len(asked) >= 0.6  # recall@10 of the encoder (0.83 on all 9,689 labels)
    listed = api.get("/v1/corpora").json()
    assert {"corpus": "esco", "live": built["id"]}.items() <= listed[0].items()
    jobs = api.post("/v1/search", json={"query": "lab technician", "k": 3}).json()
    assert "job_id" in jobs["results"][0]  # jobs keep their own route


def test_an_upserted_article_serves_without_a_restart(
    api: httpx.Client, built, platform_ws: Path
) -> None:  # type: ignore[no-untyped-def]
    text = "Prompt engineers write and test instructions that steer large language models."
    new = pd.DataFrame({"article_id": [900_001], "title": ["prompt engineer"], "text": [text]})
    before = _ask(api, "prompt engineer for AI chatbots", k=3, retrieval="ebr")["results"]
    assert 900_001 not in [a["article_id"] for a in before]
    upsert_articles(Workspace(platform_ws), ESCO, new)
    _until(
        lambda: (
            _ask(api, "prompt engineer for AI chatbots", k=3, retrieval="ebr")["results"][0][
                "article_id"
            ]
            == 900_001
        ),
        "the upserted article reached the replica",
    )


def test_the_feast_view_holds_the_articles(built, platform_ws: Path) -> None:  # type: ignore[no-untyped-def]
    from feature_repo.store import article_embeddings, open_store, publish_corpus

    out = publish_corpus(platform_ws, "esco", "v1")
    assert out["view"] == "esco_article_embedding_v1" and out["articles"] == built["articles"]
    store = open_store(Path(platform_ws) / "feature_repo")
    got = article_embeddings(store, "esco", "v1", [1, 2, 10**9])
    table = pd.read_parquet(Path(platform_ws) / "corpora" / "esco" / built["embeddings"])
    assert np.allclose(got[1], table["embedding"].iloc[0]) and got[10**9] is None


@pytest.mark.parametrize(
    ("path", "body", "code", "field"),
    [
        ("/v1/corpora/wiki/search", {"query": "x"}, 404, "corpus"),
        ("/v1/corpora/Bad-Name/search", {"query": "x"}, 422, "corpus"),
        ("/v1/corpora/esco/search", {}, 422, "query"),
        ("/v1/corpora/esco/search", {"query": ""}, 422, "query"),
        ("/v1/corpora/esco/search", {"query": "x" * 513}, 422, "query"),
        ("/v1/corpora/esco/search", {"query": "x", "k": 0}, 422, "k"),
        ("/v1/corpora/esco/search", {"query": "x", "k": "5"}, 422, "k"),
        ("/v1/corpora/esco/search", {"query": "x", "retrieval": "dense"}, 422, "retrieval"),
        ("/v1/corpora/esco/search", {"query": "x", "filter": {}}, 422, "filter"),
    ],
)
def test_bad_corpus_requests_name_the_field(
    api: httpx.Client, path: str, body: dict[str, Any], code: int, field: str
) -> None:
    assert_names_field(api.post(path, json=body), code, field)
