"""Term retrieval (ebr.index.query.terms): BM25 over a slot's job text, and its live-delta
scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.index.query.terms import DocTerms, JoinedTerms, TermIndex, term_text, tokens, top_rows

ITEMS = pd.DataFrame(
    {
        "title": ["Registered nurse", "Accountant", "Café manager", "Nurse assistant", "Driver"],
        "skills": [["patient care"], ["bookkeeping", "tax"], None, ["care"], ["driving"]],
        "description": ["Care for patients", "Keep the books", "Run the cafe", None, "Drive"],
    }
)
QUERIES = ["nurse", "CAFE manager", "nurse care", "the", "", "zzz unknown", "tax accountant"]


def test_tokens_share_the_towers_normalisation_without_stopwords() -> None:
    assert tokens("The Café MANAGER of a bar") == ["cafe", "manager", "bar"]
    assert tokens("ＮＵＲＳＥ") == ["nurse"]
    assert tokens(None) == [] and tokens("a an the") == []


def test_term_text_boosts_the_title_and_reads_the_columns_there_are() -> None:
    text = term_text(ITEMS)
    assert text[0].startswith("Registered nurse Registered nurse patient care")
    assert term_text(ITEMS[["title"]]) == [f"{t} {t}" for t in ITEMS["title"]]
    assert term_text(ITEMS[["description"]])[0] == "Care for patients"


@pytest.mark.parametrize("query", QUERIES)
def test_delta_scores_use_the_snapshot_statistics(query: str) -> None:
    """A document scored outside the index (a live upsert) gets exactly the score bm25s
    gives it inside: the delta's results merge with the snapshot's on one scale."""
    texts = term_text(ITEMS)
    index = TermIndex.build(texts)
    np.testing.assert_allclose(index.score_texts(query, texts), index.scores(query), rtol=1e-5)


@pytest.mark.parametrize("query", QUERIES)
def test_documents_counted_once_score_like_their_texts(query: str) -> None:
    """``DocTerms`` (the live delta's term counts, kept per view) scores every document as
    its text does, and ``vocabulary`` sees only the documents it is given."""
    texts = term_text(ITEMS)
    index, docs = TermIndex.build(texts[:2]), DocTerms(texts)
    assert len(docs) == len(texts)
    np.testing.assert_allclose(
        index.score_docs(query, docs), [index.score_texts(query, [t])[0] for t in texts], rtol=1e-6
    )
    alive = np.array([False, False, True, True])  # shorter than the documents: a view's size
    live = docs.vocabulary(alive)
    assert "cafe" in live and "nurse" in live and "driver" not in live
    assert "accountant" not in live and 7 not in live
    assert index.coverage("nurse driver", live) == 0.5


@pytest.mark.parametrize("cuts", [(), (2,), (1, 3), (0, 2, 5), (5,)])
def test_joined_terms_are_the_terms_of_the_joined_texts(cuts: tuple[int, ...]) -> None:
    """A view's delta terms joined from its tables' counts (``JoinedTerms``, empty parts
    included) score, cover and list every term as counting all the texts at once does."""
    texts = term_text(ITEMS)
    bounds = [0, *cuts, len(texts)]
    joined = JoinedTerms([DocTerms(texts[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)])
    whole, index = DocTerms(texts), TermIndex.build(texts[:2])
    assert len(joined) == len(whole)
    np.testing.assert_array_equal(joined.lengths, whole.lengths)
    for term in {*whole.postings, "zzz"}:
        want, got = whole.postings.get(term), joined.postings.get(term)
        assert (got is None) == (want is None) and (term in joined.postings) == (want is not None)
        if want is not None:
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    for query in QUERIES:
        np.testing.assert_allclose(index.score_docs(query, joined), index.score_docs(query, whole))
    alive = np.array([False, True, True])
    assert ("cafe" in joined.vocabulary(alive)) and ("nurse" not in joined.vocabulary(alive))


def test_only_documents_sharing_a_term_score() -> None:
    index = TermIndex.build(term_text(ITEMS))
    s = index.scores("nurse")
    assert set(np.flatnonzero(s > 0)) == {0, 3}
    assert not index.scores("zzz").any() and not index.scores("").any()


def test_top_rows_respects_eligibility_and_pads() -> None:
    scores = np.array([0.5, 0.0, 2.0, 1.0, 1.0], dtype=np.float32)
    s, r = top_rows(scores, 3)
    assert r.tolist() == [2, 3, 4] and s[0] == 2.0
    s, r = top_rows(scores, 4, eligible=np.array([True, True, False, True, True]))
    assert r.tolist() == [3, 4, 0, -1] and s[-1] == -np.inf  # row 1 shares no term
    s, r = top_rows(scores, 2, eligible=np.zeros(5, bool))
    assert r.tolist() == [-1, -1]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    index = TermIndex.build(term_text(ITEMS))
    index.save(tmp_path / "terms")
    again = TermIndex.load(tmp_path / "terms")
    for q in QUERIES:
        np.testing.assert_array_equal(again.scores(q), index.scores(q))
    assert again.n_docs == 5


def test_top_rows_breaks_ties_at_the_cut_by_row_whatever_k() -> None:
    scores = np.array([1.0, 2.0, 1.0, 1.0, 2.0, 1.0], dtype=np.float32)
    for k in range(1, 7):
        _, r = top_rows(scores, k)
        assert r.tolist() == [1, 4, 0, 2, 3, 5][:k]


@pytest.mark.parametrize("titles", [[], ["a"], ["a", "the", "!!"]])
def test_a_collection_without_terms_indexes_and_scores_zero(tmp_path: Path, titles) -> None:
    index = TermIndex.build(term_text(pd.DataFrame({"title": titles})))
    index.save(tmp_path / "terms")
    for ix in (index, TermIndex.load(tmp_path / "terms")):
        assert ix.n_docs == len(titles) and not ix.scores("nurse").any()
        # A live upsert into such a slot is still found by its words.
        scored = ix.score_texts("nurse", ["nurse", "driver"])
        assert scored[0] > 0 and scored[1] == 0


def test_coverage_is_the_share_of_query_terms_some_document_has() -> None:
    index = TermIndex.build(term_text(ITEMS))
    assert index.coverage("nurse") == 1.0
    assert index.coverage("nusre care") == 0.5  # a misspelling no document has
    assert index.coverage("the a") == 0.0 and index.coverage("") == 0.0
    assert index.coverage("zookeeper nurse", also=frozenset({"zookeeper"})) == 1.0


@pytest.mark.parametrize("query", QUERIES)
def test_no_document_scores_above_the_attainable_score(query: str) -> None:
    index = TermIndex.build(term_text(ITEMS))
    best = index.attainable(query)
    assert best > 0 and (index.scores(query) < best).all()
    # A document repeating every query term many times comes close, never over.
    flood = " ".join([query] * 200)
    assert index.score_texts(query, [flood])[0] < best


def test_docs_with_lists_each_terms_rows_ascending() -> None:
    """``docs_with`` (the ranker's term coverage searches it) gives exactly the rows whose text
    holds the term, ascending; nothing for a term no row has."""
    rng = np.random.default_rng(3)
    vocab = ["nurse", "care", "data", "engineer", "night", "senior", "ward", "python"]
    texts = [" ".join(rng.choice(vocab, int(rng.integers(1, 6)))) for _ in range(400)]
    index = TermIndex.build(texts)
    for term in vocab:
        rows = index.docs_with(term)
        assert (np.diff(rows) > 0).all()
        assert rows.tolist() == [i for i, t in enumerate(texts) if term in t.split()]
    assert len(index.docs_with("zebra")) == 0
