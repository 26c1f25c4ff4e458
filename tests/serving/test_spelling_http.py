"""Typo tolerance over HTTP (``serving.query_spelling``): a misspelled query answers what its
correct spelling answers and says what it searched (``corrected_query``), in every retrieval
mode, anonymous and signed in; a query with nothing to correct it to still answers 200 with
the not-understood notice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.index.live.slot import open_live
from ebr.index.query.slot import load_slot
from ebr.model.artifact import load_vocabulary
from ebr.release.impressions import read_impressions
from ebr.release.state import live_release
from ebr.spelling import Speller
from ebr.text import words
from ebr.versions import version_paths

pytestmark = pytest.mark.slow
MODES = ("ebr", "term", "hybrid")
GIBBERISH = ("qzxvjw", "xqzvbnmw qwxzjvk", "zzqxv pzzkq 🚑")


def _search(api: httpx.Client, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _ids(body: dict[str, Any]) -> list[int]:
    return [h["job_id"] for h in body["results"]]


@pytest.fixture(scope="module")
def misspelled(platform_ws: Path) -> list[tuple[str, str]]:
    """(typo, title) pairs: a common title with one of its words missing a letter, a typo
    neither the model's vocabulary nor the slot's terms know and the catalogue's speller
    takes back to the word (what the served speller must do too)."""
    slot = load_slot(live_release(Workspace(platform_ws)).paths.slot, verify=False)
    assert slot.terms is not None, "the platform's slot has a term index"
    df = slot.terms.document_frequencies()
    vocab = load_vocabulary(version_paths(Workspace(platform_ws), slot.model_version).model)
    known = vocab.words if vocab is not None else frozenset()
    speller = Speller.of_counts(df)
    out: list[tuple[str, str]] = []
    for title in slot.items["title"].value_counts().index:
        ws = words(title)
        for i, word in enumerate(ws):
            if len(word) < 6 or not word.isalpha():
                continue
            typo = word[: len(word) // 2] + word[len(word) // 2 + 1 :]  # a letter left out
            if typo in df or typo in known or speller.closest(typo) != word:
                continue
            out.append((" ".join([*ws[:i], typo, *ws[i + 1 :]]), " ".join(ws)))
            break
        if len(out) == 4:
            break
    assert len(out) >= 3, out
    return out


def test_a_misspelled_query_answers_what_its_spelling_answers(
    api: httpx.Client, misspelled: list[tuple[str, str]]
) -> None:
    for typo, title in misspelled:
        for mode in MODES:
            right = _search(api, query=title, k=10, retrieval=mode)
            wrong = _search(api, query=typo, k=10, retrieval=mode)
            assert right["corrected_query"] is None, right
            assert wrong["corrected_query"] == title, (typo, wrong)
            assert wrong["results"] and _ids(wrong) == _ids(right), (typo, mode)
            assert wrong["query_understood"] is True and wrong["retrieval"] == mode
            assert wrong["notice"] is None and wrong["unknown_words"] == right["unknown_words"]


def test_signed_in_and_uppercase_misspellings(
    api: httpx.Client, platform_ws: Path, misspelled: list[tuple[str, str]]
) -> None:
    members = pd.read_parquet(platform_ws / "data" / "members.parquet")["member_id"]
    spread = members.iloc[:: max(len(members) // len(misspelled), 1)][: len(misspelled)]
    for (typo, title), member in zip(misspelled, spread, strict=True):
        right = _search(api, query=title, member_id=int(member), k=10)
        wrong = _search(api, query=typo.upper() + "!", member_id=int(member), k=10)
        assert wrong["corrected_query"] == title, wrong
        assert _ids(wrong) == _ids(right), (typo, member)


def test_a_query_with_no_plausible_correction_is_not_understood_not_an_error(
    api: httpx.Client, platform_ws: Path
) -> None:
    member = int(pd.read_parquet(platform_ws / "data" / "members.parquet")["member_id"].iloc[0])
    for query in GIBBERISH:
        for mode in MODES:
            body = _search(api, query=query, k=10, retrieval=mode)
            assert body["corrected_query"] is None and body["query_understood"] is False, body
            assert body["results"] == [] and "no word of the query is known" in body["notice"]
        signed_in = _search(api, query=query, member_id=member, k=5)
        assert signed_in["corrected_query"] is None and len(signed_in["results"]) == 5
        assert "results for the member alone" in signed_in["notice"]


def test_the_impression_log_carries_the_corrected_query(
    api: httpx.Client, platform_ws: Path, misspelled: list[tuple[str, str]]
) -> None:
    typo, title = misspelled[0]
    wrong = _search(api, query=typo, k=3)
    right = _search(api, query=title, k=3)
    wanted = {wrong["request_id"]: title, right["request_id"]: None}
    deadline = time.monotonic() + 30
    while True:
        log = read_impressions(Workspace(platform_ws))
        rows = log[log["request_id"].isin(list(wanted))] if len(log) else log
        if len(rows) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(rows) == 2, "the two searches were not logged within 30 s"
    for _, row in rows.iterrows():
        assert row["query"] in (typo, title)
        got = row["corrected_query"]
        assert (None if pd.isna(got) else got) == wanted[row["request_id"]], row.to_dict()


def test_a_word_of_a_job_posted_live_is_not_corrected(
    api: httpx.Client, platform_ws: Path, misspelled: list[tuple[str, str]]
) -> None:
    """A new word one edit from a catalogue word is corrected until a live job holds it."""
    slot_path = live_release(Workspace(platform_ws)).paths.slot
    title = misspelled[0][1]
    word = max(words(title), key=len)
    new = word + word[-1]  # one letter more: corrected to ``word`` while no job has it
    before = _search(api, query=new, k=3, retrieval="term")
    assert before["corrected_query"] == word, before
    with open_live(slot_path) as writer:
        snap = writer.snapshot
        row = snap.items.iloc[[1]].copy()
        new_id = int(snap.job_ids.max()) + 2000
        row["job_id"], row["title"] = new_id, f"{new} specialist"
        writer.upsert(row.reset_index(drop=True), np.asarray(snap.vectors[[1]]))
        try:
            deadline = time.monotonic() + 15
            body: dict[str, Any] = {}
            while time.monotonic() < deadline:
                body = _search(api, query=new, k=3, retrieval="term")
                if body["corrected_query"] is None:
                    break
                time.sleep(0.3)
            assert body["corrected_query"] is None, body
            assert _ids(body)[0] == new_id, body
        finally:
            writer.delete([new_id])
