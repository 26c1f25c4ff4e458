"""Typed queries: synonyms held out of training, one-edit typos, unknown words, the metrics,
and the report section."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig, ModelConfig, TrainConfig
from ebr.data.esco import load_occupations
from ebr.data.esco_labels import alternative_labels, eval_reserved
from ebr.data.marketplace import Marketplace, generate
from ebr.eval.ranking import FUSION_WEIGHTS
from ebr.eval.report import evaluate_marketplace, report_html, write_report
from ebr.eval.typed import KINDS, typed_queries
from ebr.eval.typed_scores import relevant_jobs, typed_metrics, typed_rows
from ebr.index.query.fusion import HYBRID_EBR_WEIGHT, HYBRID_FUSION
from ebr.model.train import train
from ebr.text import training_vocabulary, words


@pytest.fixture(scope="module")
def market() -> Marketplace:
    return generate(DataConfig(n_jobs=1500, seed=5))


@pytest.fixture(scope="module")
def queries(market: Marketplace) -> pd.DataFrame:
    vocab = training_vocabulary(market.jobs, market.members, market.impressions)
    return typed_queries(market.jobs, market.impressions, load_occupations(), 3, vocabulary=vocab)


def _label(uri: str) -> list[str]:
    occ = load_occupations()
    return words(occ.loc[occ["uri"] == uri, "label"].iloc[0])


def test_alternative_labels_are_esco_synonyms_not_variants() -> None:
    alt = alternative_labels()
    by_label = alt.groupby("label")["alt_label"].agg(set)
    # Real ESCO synonyms that share no word with the preferred label.
    assert "graveyard attendant" in by_label["cemetery attendant"]
    assert "marine biologist" in by_label["biology technician"]
    assert "checkout operator" in by_label["cashier"]
    assert "gasfitter" in by_label["plumber"]
    for pref, label in zip(alt["label"], alt["alt_label"], strict=True):
        assert 1 <= len(label.split()) <= 4, label
        assert not set(words(pref)) <= set(words(label)), (pref, label)  # not 'senior <pref>'
    assert alt["uri"].nunique() > 2000  # most of the 3,000 labelled occupations have some


def test_alt_label_queries_are_reserved_held_out_synonyms(
    market: Marketplace, queries: pd.DataFrame
) -> None:
    alt = queries[queries["kind"] == "alt_label"]
    assert len(alt) > 20
    seen = {" ".join(words(t)) for t in market.jobs["title"]}
    seen |= {" ".join(words(q)) for q in market.impressions["query"].dropna().unique()}
    text = " ".join(" ".join(words(d)) for d in market.jobs["description"].unique())
    known = alternative_labels().groupby("uri")["alt_label"].agg(set)
    for q, uri, rel in zip(alt["query"], alt["occupation_uri"], alt["relevant_uris"], strict=True):
        assert " ".join(words(q)) not in seen, q  # never a training query or title
        assert f" {' '.join(words(q))} " not in f" {text} ", q  # nor inside a description
        assert q in known[uri] and uri in rel and eval_reserved(q)
    # The split is by label text, about half of all labels, the same every call.
    share = alternative_labels()["alt_label"].map(eval_reserved).mean()
    assert 0.4 < share < 0.6


def _one_edit(a: str, b: str) -> bool:
    """b is a with one letter deleted or two adjacent letters swapped."""
    deletions = {a[:i] + a[i + 1 :] for i in range(len(a))}
    swaps = {a[:i] + a[i + 1] + a[i] + a[i + 2 :] for i in range(len(a) - 1)}
    return b != a and b in deletions | swaps


def test_misspelled_and_reordered_forms(queries: pd.DataFrame) -> None:
    typos = queries[queries["kind"] == "misspelled"]
    assert len(typos) > 10
    for q, uri in zip(typos["query"], typos["occupation_uri"], strict=True):
        label, got = _label(uri), q.split()
        diff = [(a, b) for a, b in zip(label, got, strict=True) if a != b]
        assert len(diff) == 1 and len(diff[0][0]) >= 5 and _one_edit(*diff[0]), (label, q)
    shuffled = queries[queries["kind"] == "reordered"]
    for q, uri in zip(shuffled["query"], shuffled["occupation_uri"], strict=True):
        label = _label(uri)
        assert Counter(q.split()) == Counter(label) and q.split() != label


def test_unknown_queries_have_no_known_word(market: Marketplace, queries: pd.DataFrame) -> None:
    vocab = training_vocabulary(market.jobs, market.members, market.impressions)
    unknown = queries[queries["kind"] == "unknown"]
    assert len(unknown) >= 10
    assert all(not vocab.split(q)[0] for q in unknown["query"])
    assert (unknown["relevant_uris"].map(len) == 0).all()
    assert set(unknown["bucket_jobs"]) == {"none"}


def test_title_words_common_queries_and_buckets(market: Marketplace, queries: pd.DataFrame) -> None:
    assert set(KINDS) - {"common"} <= set(queries["kind"])  # no everyday job in 37 here
    for q, rel in queries.loc[queries["kind"] == "title_word", ["query", "relevant_uris"]].values:
        assert all(q in _label(u) for u in rel), q  # every occupation named by the word
    # Head occupations have more jobs than tail ones.
    counts = market.jobs["occupation_uri"].value_counts()
    single = queries[queries["kind"].isin(["misspelled", "reordered"])]
    n = single["occupation_uri"].map(counts)
    assert n[single["bucket_jobs"] == "head"].min() >= n[single["bucket_jobs"] == "tail"].max()
    assert set(queries["bucket_searches"]) == {"head", "torso", "tail", "none"}
    again = typed_queries(market.jobs, market.impressions, load_occupations(), 3)
    assert again[["query", "kind"]].equals(queries[["query", "kind"]])  # seeded


def test_common_queries_name_the_occupation() -> None:
    occ = load_occupations().set_index("label")["uri"]
    names = ["specialist nurse", "veterinary nurse", "bus driver", "taxi driver"]
    jobs = pd.DataFrame(
        {
            "job_id": np.arange(1, 9),
            "title": [n.capitalize() for n in names] * 2,
            "description": ["Cares."] * 8,
            "skills": [["care"]] * 8,
            "occupation_uri": [occ[n] for n in names] * 2,
        }
    )
    imp = pd.DataFrame({"session_id": [1], "query": ["nurse"], "job_id": [1], "outcome": ["apply"]})
    qs = typed_queries(jobs, imp, load_occupations(), 0).set_index("query")
    common = qs[qs["kind"] == "common"]
    assert set(common["relevant_uris"]["registered nurse"]) == {occ[n] for n in names[:2]}
    assert common["relevant_uris"]["bus driver"] == (occ["bus driver"],)  # not the taxi
    assert "truck driver" not in common.index  # the catalogue has no such occupation
    assert bool(common["in_training"]["nurse"])  # a logged query: kept, flagged


def test_typed_metrics_on_a_hand_made_ranking() -> None:
    ranked = np.full((3, 100), -1, dtype=np.int64)
    ranked[0, :4] = [7, 1, 8, 2]  # relevant {1, 2, 3}: hits at ranks 2 and 4
    ranked[1, :100] = np.arange(1000, 1100)  # relevant {5}: never retrieved
    got = typed_metrics(ranked, [{1, 2, 3}, {5}, set()])
    assert got.loc[0].tolist() == pytest.approx([0.2, 2 / 3, 0.5])
    assert got.loc[1].tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert got.loc[2].isna().all()  # nothing relevant: not scored
    # recall@100 divides by min(100, relevant): 100 hits of 150 relevant is perfect recall.
    many = typed_metrics(np.arange(1, 101)[None, :], [set(range(1, 151))])
    assert many.loc[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_report_has_a_typed_section(
    market: Marketplace, queries: pd.DataFrame, tmp_path: Path
) -> None:
    mcfg = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)
    tcfg = TrainConfig(epochs=2, batch_size=128)
    model, _ = train(market.jobs, market.members, market.impressions, mcfg, tcfg)
    tables = (market.jobs, market.members, market.impressions)
    report = evaluate_marketplace(model, mcfg, *tables, tcfg.eval_days, typed=queries)
    typed = report["typed"]
    assert set(typed["methods"]) == {"ebr", "bm25", "hybrid", "ideal"}
    assert set(typed["targets"]) >= {"ebr_p@10_ge_bm25_overall", "hybrid_p@10_ge_best_plus_0.05"}
    for group, vals in typed_rows(typed):
        for method, m in vals.items():
            assert all(0.0 <= m[k] <= 1.0 for k in ("p@10", "recall@100", "mrr")), group
            if group != "kind:unknown" and m["n"]:
                assert m["p@10"] <= vals["ideal"]["p@10"] + 1e-9, (group, method)
    unknown = {m: typed["methods"][m]["by_kind"]["unknown"] for m in ("ebr", "bm25", "hybrid")}
    assert all(u["not_understood"] == 1.0 for u in unknown.values())  # every one says so
    assert typed["methods"]["bm25"]["overall"]["p@10"] > 0.3  # words of the title find it
    assert relevant_jobs(market.jobs, queries.head(1))[0]
    # The fusion sweep: the served fusion and weight reproduce the hybrid row.
    sweep = typed["hybrid_p@10_by_ebr_weight"]
    assert set(sweep) == {"rrf", "score", "score_minmax"}
    assert all(len(v) == len(FUSION_WEIGHTS) for v in sweep.values())
    served = sweep[HYBRID_FUSION][f"{HYBRID_EBR_WEIGHT:g}"]
    assert served == pytest.approx(typed["methods"]["hybrid"]["overall"]["p@10"])
    assert set(report["search"]["hybrid_recall@100_by_ebr_weight"]) == set(sweep)
    json_path, png_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["typed"]["n_queries"] == typed["n_queries"]
    assert "typed queries" in report_html(report, png_path)
