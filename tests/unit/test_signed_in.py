"""Member-aware evaluation (ebr.eval.signed_in): personal fit on hand-made pages, the members
panel, the served signed-in path (query-led, weight 0 = anonymous), the section's shape, the
logged searches split by intent and the report wiring."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig, ModelConfig, TrainConfig
from ebr.data.esco import load_occupations
from ebr.data.marketplace import Marketplace, generate
from ebr.eval.bm25 import BM25Baseline
from ebr.eval.report import evaluate_marketplace, report_html, write_report
from ebr.eval.signed_in import GEO_WEIGHTS, METRICS, WEIGHTS, evaluate_signed_in
from ebr.eval.signed_in_members import draw_members, personal_fit, session_intents
from ebr.eval.signed_in_path import MODES, Catalogue, Served, Spelling, personal_cosines, serve
from ebr.eval.typed import typed_queries
from ebr.index.query.fusion import GEO_WEIGHT, PERSONAL_DEPTH, PERSONAL_WEIGHT
from ebr.model.infer import encode_jobs
from ebr.model.towers import TwoTower
from ebr.model.train import train
from ebr.text import Vocabulary, training_vocabulary, words

HAS_SPELLING = importlib.util.find_spec("ebr.spelling") is not None
needs_spelling = pytest.mark.skipif(not HAS_SPELLING, reason="ebr.spelling not there yet")
MCFG = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)
TCFG = TrainConfig(epochs=2, batch_size=128)


@pytest.fixture(scope="module")
def market() -> Marketplace:
    return generate(DataConfig(n_jobs=1500, seed=5))


@pytest.fixture(scope="module")
def vocab(market: Marketplace) -> Vocabulary:
    return training_vocabulary(market.jobs, market.members, market.impressions)


@pytest.fixture(scope="module")
def queries(market: Marketplace, vocab: Vocabulary) -> pd.DataFrame:
    return typed_queries(market.jobs, market.impressions, load_occupations(), 3, vocabulary=vocab)


@pytest.fixture(scope="module")
def model(market: Marketplace) -> TwoTower:
    return train(market.jobs, market.members, market.impressions, MCFG, TCFG)[0]


@pytest.fixture(scope="module")
def cat(market: Marketplace, model: TwoTower) -> Catalogue:
    vecs = encode_jobs(model.item, market.jobs.to_dict("records"), MCFG)
    return Catalogue.of(market.jobs, vecs, BM25Baseline(market.jobs))


def _serve(
    market: Marketplace, model: TwoTower, cat: Catalogue, vocab: Vocabulary, texts: list[str],
    depth: int = PERSONAL_DEPTH,
) -> Served:  # fmt: skip
    panel = draw_members(market.members, 3, seed=1)
    when = pd.Timestamp(market.impressions["ts"].max())
    return serve(model, MCFG, cat, texts, vocab, panel, market.members, None, when, depth)


def _hand_made() -> tuple[Catalogue, pd.DataFrame]:
    """Four jobs around a member in Lyon (45.76 N, 4.84 E): 1 in Lyon, 2 ~500 km north, 3
    remote ~500 km north, 4 ~20 km away."""
    jobs = pd.DataFrame(
        {
            "job_id": [1, 2, 3, 4],
            "title": ["Nurse", "Nurse", "Nurse", "Nurse"],
            "description": ["Cares."] * 4,
            "skills": [["care"]] * 4,
            "lat": [45.76, 50.26, 50.26, 45.94],
            "lon": [4.84, 4.84, 4.84, 4.84],
            "remote": [False, False, True, False],
            "seniority": ["entry", "director", "mid", "mid"],
        }
    )
    cat = Catalogue.of(jobs, np.eye(4, dtype=np.float32), BM25Baseline(jobs))
    member = {"lat": 45.76, "lon": 4.84, "max_commute_km": 30.0, "seniority": "mid"}
    panel = pd.DataFrame([{**member, "open_to_remote": o} for o in (False, True, False, True)])
    return cat, panel


def test_personal_fit_counts_the_commute_radius_and_remote_only_when_accepted() -> None:
    cat, panel = _hand_made()
    top = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [2, -1, -1, -1], [-1, -1, -1, -1]])
    got = personal_fit(cat, top, panel)
    # Lyon and 20 km count, 500 km does not, remote only for the member open to it.
    assert got["fit"].tolist()[:3] == pytest.approx([2 / 4, 3 / 4, 0.0])
    # |mid - entry| + |mid - director| + |mid - mid| * 2 = 1 + 3 + 0 + 0, over 4 jobs.
    assert got["seniority_gap"].tolist()[:3] == pytest.approx([1.0, 1.0, 3.0])
    assert got.loc[3].isna().all()  # nothing returned: not judged
    wider = panel.assign(max_commute_km=600.0)
    assert personal_fit(cat, top, wider)["fit"].tolist()[:3] == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="3 result lists for 4 members"):
        personal_fit(cat, top[:3], panel)


def test_personal_cosines_are_each_candidates_dot_product() -> None:
    cat, _ = _hand_made()  # job i's vector is the unit vector e_(i-1)
    req = np.array([[0.0, 0.6, 0.8, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    got = personal_cosines(cat, np.array([[3, 2, -1], [4, 1, 2]]), req)
    np.testing.assert_allclose(got, [[0.8, 0.6, 0.0], [0.0, 1.0, 0.0]], rtol=1e-6)


def test_members_are_drawn_across_cities_and_occupations(market: Marketplace) -> None:
    panel = draw_members(market.members, 6, seed=0)
    assert len(panel) == 6 and panel["member_id"].is_unique
    assert (panel["city"] + panel["country"]).is_unique
    occupation = [
        " ".join(words(h)[1:] if s != "mid" else words(h))  # the seniority prefix is one word
        for h, s in zip(panel["headline"], panel["seniority"], strict=True)
    ]
    assert len(set(occupation)) == 6
    assert draw_members(market.members, 6, seed=0).equals(panel)  # seeded
    assert not draw_members(market.members, 6, seed=1)["member_id"].equals(panel["member_id"])
    with pytest.raises(ValueError, match="n must be in"):
        draw_members(market.members, 0, seed=0)


def test_session_intents_default_to_profile() -> None:
    held = pd.DataFrame({"session_id": [1, 1, 2, 3], "intent": [None, "adjacent", None, "profile"]})
    sessions = pd.Series([1, 2, 3, 4])
    assert session_intents(held, sessions).tolist() == ["adjacent", "profile", "profile", "profile"]
    old = held.drop(columns="intent")  # an old world's log
    assert session_intents(old, sessions).tolist() == ["profile"] * 4


def test_weight_zero_is_the_anonymous_ranking(
    market: Marketplace, model: TwoTower, cat: Catalogue, vocab: Vocabulary, queries: pd.DataFrame
) -> None:
    texts = queries["query"].tolist()
    served = _serve(market, model, cat, vocab, texts)
    led = served.understood[served.rep]
    assert led.sum() > 0.8 * len(led)  # most typed queries have a known word
    for mode in ("ebr", "term"):
        anon = served.anonymous[mode][served.rep]
        assert np.array_equal(served.signed_in(mode, 0.0)[led], anon[led]), mode
    # Hybrid fuses PERSONAL_DEPTH-deep lists (min-max over more candidates); at the anonymous
    # depth the query-led hybrid is the anonymous one, with the member-led jobs it lacked
    # slotted in by their own BM25 part (a job the fused list cut at its depth may outrank
    # its tail): without them, the anonymous order.
    shallow = _serve(market, model, cat, vocab, texts, depth=100)
    anon = shallow.anonymous["hybrid"][shallow.rep][led]
    got = shallow.signed_in("hybrid", 0.0)[led]
    slotted = 0
    for row, a in zip(got, anon, strict=True):
        kept = row[np.isin(row, a) & (row >= 0)]
        np.testing.assert_array_equal(kept, a[: len(kept)])
        slotted += int((~np.isin(row, a) & (row >= 0)).sum())
    assert slotted < 0.2 * anon.size  # the query's own list still leads
    # A member's weight changes pages, and pulls the member's nearest candidates up.
    moved = served.signed_in("hybrid", 0.5)
    assert (moved[led][:, :10] != served.anonymous["hybrid"][served.rep][led][:, :10]).any()


def test_signed_in_results_are_query_led_candidates(
    market: Marketplace, model: TwoTower, cat: Catalogue, vocab: Vocabulary, queries: pd.DataFrame
) -> None:
    texts = queries["query"].tolist()
    served = _serve(market, model, cat, vocab, texts)
    led = served.understood[served.rep]
    for mode in MODES:
        candidates = served.candidates[mode][0]
        led_ids = served.led[mode][0][served.rep]
        n = led_ids.shape[1]
        assert np.array_equal(candidates[:, :n], led_ids)  # the query-led list first
        if mode == "term":  # keyword matches only
            assert candidates.shape[1] == n
        else:  # then the member-aware list's jobs it lacked, at its floor
            extra = candidates[led][:, n:]
            assert (extra >= 0).any()
            for row, lead in zip(extra, led_ids[led], strict=True):
                assert not np.isin(row[row >= 0], lead).any()
        for w in (0.3, 1.0):
            got = served.signed_in(mode, w)
            for row, pool in zip(got[led], candidates[led], strict=True):
                assert set(row[row >= 0].tolist()) <= set(pool[pool >= 0].tolist()), mode
        # At weight 1 the member orders the query's candidates: by cosine alone without the
        # commute decay, by cosine + GEO_WEIGHT * decay with it.
        best = served.signed_in(mode, 1.0, k=10, geo_weight=0.0)[led][:5]
        personal = served.personal[mode][led][:5]
        geo_best = served.signed_in(mode, 1.0, k=10)[led][:5]
        geo_personal = personal + GEO_WEIGHT * served.geo[mode][led][:5]
        assert ((served.geo[mode] >= 0) & (served.geo[mode] <= 1)).all()
        for row, p, c in zip(geo_best, geo_personal, candidates[led][:5], strict=True):
            by = {int(j): float(v) for j, v in zip(c, p, strict=True) if j >= 0}
            assert [by[int(j)] for j in row if j >= 0] == sorted(
                (by[int(j)] for j in row if j >= 0), reverse=True
            )
            assert by[int(row[0])] == pytest.approx(max(by.values()))
        pool = candidates[led][:5]
        for row, p, c in zip(best, personal, pool, strict=True):
            by_cos = {int(j): float(v) for j, v in zip(c, p, strict=True) if j >= 0}
            got_cos = [by_cos[int(j)] for j in row if j >= 0]
            assert got_cos == sorted(got_cos, reverse=True)
            assert got_cos[0] == pytest.approx(max(by_cos.values()))
    # Queries with no known word: no EBR vector, so the query leads nowhere; serving answers
    # with the member alone (ebr, hybrid) or BM25 (term: nothing shares a word).
    unknown = ~led
    assert unknown.any()
    assert (served.signed_in("term", PERSONAL_WEIGHT)[unknown] < 0).all()
    assert (served.signed_in("ebr", PERSONAL_WEIGHT)[unknown][:, :10] >= 0).all()
    assert (served.anonymous["ebr"][~served.understood] < 0).all()


def _check_block(block: dict) -> None:
    for path in ("anonymous", "signed_in"):
        for m in METRICS:
            v = block[path][m]
            assert v is None or (0.0 <= v <= (4.0 if m == "seniority_gap" else 1.0)), (path, m)
    for m in METRICS:
        a, s, r = block["anonymous"][m], block["signed_in"][m], block["ratio"][m]
        assert r is None or r == pytest.approx(s / a), m


@needs_spelling
def test_signed_in_section(
    market: Marketplace, model: TwoTower, vocab: Vocabulary, queries: pd.DataFrame
) -> None:
    when = pd.Timestamp(market.impressions["ts"].max())
    section = evaluate_signed_in(
        model, MCFG, market.jobs, market.members, queries, vocab, when=when, n_members=4
    )
    assert len(section["members"]) == 4 and section["weight"] == PERSONAL_WEIGHT
    assert section["spelling"]["available"] and section["spelling"]["changed"] > 0
    assert set(section["overall"]) == set(MODES)
    for block in section["overall"].values():
        _check_block(block)
        known = (queries["kind"] != "unknown").sum()
        assert block["anonymous"]["n"] == block["signed_in"]["n"] == 4 * known
    kinds = set(queries["kind"])
    assert set(section["by_kind"]) == kinds
    for blocks in section["by_kind"].values():
        for block in blocks.values():
            _check_block(block)
    unknown = section["by_kind"]["unknown"]
    assert (
        unknown["term"]["anonymous"]["empty"] == 1.0 and unknown["ebr"]["anonymous"]["p@10"] is None
    )
    # The sweep: every weight; the served weight reproduces the overall hybrid row.
    sweep = section["weight_sweep"]
    assert list(sweep) == [f"{w:g}" for w in WEIGHTS]
    served = sweep[f"{PERSONAL_WEIGHT:g}"]
    assert served["p@10"] == pytest.approx(section["overall"]["hybrid"]["signed_in"]["p@10"])
    assert served["fit_ratio"] == pytest.approx(section["overall"]["hybrid"]["ratio"]["fit"])
    # The member's weight buys personal fit: more at 0.7 than at 0.
    assert sweep["0.7"]["fit"] > sweep["0"]["fit"]
    # The commute decay's sweep: the served weight is the overall row; the decay buys fit.
    geo = section["geo_sweep"]
    assert section["geo_weight"] == GEO_WEIGHT and list(geo) == [f"{g:g}" for g in GEO_WEIGHTS]
    assert geo[f"{GEO_WEIGHT:g}"]["p@10"] == pytest.approx(served["p@10"])
    assert geo["0.5"]["fit"] > geo["0"]["fit"]
    mis = section["misspelled"]
    assert mis["n"] == (queries["kind"] == "misspelled").sum() > 10
    assert mis["corrected_exactly"] >= 0.8 * mis["n"]  # one-edit typos of catalogue words
    for mode in MODES:
        for cell in mis["p@10"][mode].values():
            assert set(cell) == {"misspelled", "correct", "uncorrected", "ratio"}
    assert (
        mis["p@10"]["term"]["anonymous"]["uncorrected"]
        < mis["p@10"]["term"]["anonymous"]["correct"]
    )
    for ex in mis["examples"]:
        assert ex["query"] != ex["correct"] and len(words(ex["query"])) == len(words(ex["correct"]))
    assert set(section["targets"]) == {
        "hybrid_signed_in_p@10_ratio_ge_0.95",
        "hybrid_signed_in_fit_ratio_ge_1.5",
        "misspelled_p@10_ge_0.9x_correct",
        "anonymous_hybrid_p@10_ge_0.85",
        "anonymous_ebr_p@10_ge_term",
    }


@needs_spelling
def test_spelling_matches_serving_known_words(market: Marketplace, vocab: Vocabulary) -> None:
    spelling = Spelling.of(market.jobs, vocab)
    assert spelling is not None
    word = next(w for w in sorted(vocab.words) if len(w) >= 8 and w.isalpha())
    typo = word[:3] + word[4:]  # a letter left out
    fixes = spelling.correct([f"{word} {typo}", "the and of", "zzqxv"])
    assert fixes[0].query.split()[0] == word  # a known word is never corrected
    assert not fixes[1].corrected  # stopwords are known to the term index
    assert fixes[2].unresolved == ("zzqxv",)


def test_report_splits_logged_searches_by_intent(
    market: Marketplace, model: TwoTower, queries: pd.DataFrame, tmp_path: Path
) -> None:
    tables = (market.jobs, market.members, market.impressions)
    assert "intent" in market.impressions.columns  # the intent world
    report = evaluate_marketplace(model, MCFG, *tables, TCFG.eval_days, typed=queries)
    split = report["search"]["methods_by_intent"]
    assert {"all", "profile", "exploring"} <= set(split)
    assert split["profile"]["sessions"] + split["exploring"]["sessions"] == split["all"]["sessions"]
    assert split["exploring"]["sessions"] > 0
    methods = {"ebr", "bm25", "hybrid", *(f"signed_in_{m}" for m in MODES)}
    assert set(split["all"]["recall@100"]) == methods
    ebr_all = report["search"]["methods"]["ebr"]["recall@100"]
    assert split["all"]["recall@100"]["ebr"] == pytest.approx(ebr_all)  # the report's ebr
    for group in split.values():
        assert all(0.0 <= v <= 1.0 for v in group["recall@100"].values())
    assert "signed_in" in report
    json_path, png_path = write_report(report, tmp_path)
    page = report_html(report, png_path)
    assert "signed-in typed queries" in page and "logged searches by intent" in page
    assert "misspelled vs correctly spelled" in page or not HAS_SPELLING
    # An old world's log has no intent: every session is profile-consistent.
    old = market.impressions.drop(columns="intent")
    again = evaluate_marketplace(model, MCFG, market.jobs, market.members, old, TCFG.eval_days)
    split = again["search"]["methods_by_intent"]
    assert split["profile"]["sessions"] == split["all"]["sessions"]
    assert split["exploring"] == {
        "sessions": 0, "recall@100": dict.fromkeys(split["all"]["recall@100"]),
    }  # fmt: skip
