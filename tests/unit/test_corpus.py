"""Corpora through the jobs' machinery (``ebr.corpus``): a corpus is a spec plus one small
module (this file's ``tiny_articles`` / ``tiny_queries`` are one), built into a slot and a
release, evaluated as a RAG retriever, and changed through the slot's live log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.corpus import CORPORA, CorpusSpec, corpus_spec
from ebr.corpus.build import (
    build_corpus,
    check_articles,
    delete_articles,
    live_corpus_release,
    live_slot_dir,
    upsert_articles,
)
from ebr.corpus.evaluate import evaluate_corpus, ranks_of, scores

TOPICS = {
    "pastry chef": "Pastry chefs bake cakes, bread and desserts in restaurant kitchens.",
    "tax advisor": "Tax advisors prepare income tax returns and advise clients on tax law.",
    "crane operator": "Crane operators lift heavy loads on construction sites with cranes.",
    "veterinary nurse": "Veterinary nurses care for sick animals and assist vets in surgery.",
    "software tester": "Software testers find bugs by running test cases against programs.",
    "sommelier": "Sommeliers select wines and recommend them to restaurant guests.",
    "lifeguard": "Lifeguards watch swimmers at pools and beaches and rescue people.",
    "locksmith": "Locksmiths install, repair and open locks, keys and safes.",
}


def tiny_articles() -> pd.DataFrame:
    return pd.DataFrame({"article_id": range(1, len(TOPICS) + 1), "title": list(TOPICS),
                         "text": list(TOPICS.values())})  # fmt: skip


def tiny_queries() -> pd.DataFrame:
    asked = ["wedding cake baker", "accountant for tax returns", "animal care assistant",
             "wine waiter", "QA engineer", "swimming pool rescuer"]  # fmt: skip
    return pd.DataFrame({"query": asked, "article_id": [1, 2, 4, 6, 5, 7]})


TINY = CorpusSpec("tiny", "eight job articles", f"{__name__}:tiny_articles",
                  f"{__name__}:tiny_queries")  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("corpus"))
    build_corpus(ws, TINY)
    return ws


def test_a_build_records_a_live_release_of_its_slot_and_embeddings(ws: Workspace) -> None:
    record, slot = live_slot_dir(ws, "tiny")
    assert record["articles"] == 8 and record["encoder"] == "minilm" and slot.is_dir()
    table = pd.read_parquet(ws.root / "corpora" / "tiny" / record["embeddings"])
    assert table["article_id"].tolist() == list(range(1, 9))
    norms = np.linalg.norm(np.stack(table["embedding"].to_numpy()), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_paraphrased_questions_find_their_article(ws: Workspace) -> None:
    result = evaluate_corpus(ws, TINY)
    assert result["queries"] == 6
    ebr = result["retrievals"]["ebr"]
    assert ebr["recall@10"] == 1.0 and ebr["recall@1"] >= 4 / 6  # MiniLM knows the synonyms
    # BM25 only matches shared words: it misses what the encoder finds
    assert result["retrievals"]["term"]["recall@1"] < ebr["recall@1"]


def test_the_live_log_adds_replaces_and_removes_articles(ws: Workspace) -> None:
    from ebr.index.live.slot import open_live
    from ebr.index.query.retrieve import retrieve
    from ebr.model.sentence import sentence_vectors

    text = "Beekeepers tend hives of honey bees and harvest honey."
    new = pd.DataFrame({"article_id": [9], "title": ["beekeeper"], "text": [text]})
    assert upsert_articles(ws, TINY, new)["upserted"] == 1

    def top(question: str) -> int:
        _, slot = live_slot_dir(ws, "tiny")
        view = open_live(slot, writable=False).view()
        hits = retrieve(view, sentence_vectors([question]), 1, texts=[question], retrieval="ebr")
        return int(hits.job_ids[0][0])

    assert top("apiarist honey production") == 9
    delete_articles(ws, "tiny", [9])
    assert top("apiarist honey production") != 9


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"article_id": [1], "title": ["x"]}), "lack columns"),
        (pd.DataFrame({"article_id": [1, 1], "title": ["a", "b"], "text": ["", ""]}), "unique"),
        (pd.DataFrame({"article_id": [0], "title": ["a"], "text": [""]}), ">= 1"),
        (pd.DataFrame({"article_id": [3], "title": ["  "], "text": ["t"]}), "article 3: title"),
        (pd.DataFrame({"article_id": [4], "title": [None], "text": ["t"]}), "article 4: title"),
    ],
)
def test_bad_articles_are_refused_naming_what(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_articles(frame, 100)


def test_a_corpus_is_configuration_and_names_are_checked(tmp_path: Path) -> None:
    assert corpus_spec("esco") is CORPORA["esco"]
    with pytest.raises(KeyError, match="configured: esco"):
        corpus_spec("wiki")
    for bad in ("", "Esco", "1kb", "a-b", "x" * 33):
        with pytest.raises(ValueError, match="corpus name"):
            CorpusSpec(bad, "d", "m:f")
    with pytest.raises(LookupError, match="no release yet"):
        live_corpus_release(Workspace(tmp_path), "esco")


def test_esco_articles_hold_out_the_labels_used_as_queries() -> None:
    docs, asked = CORPORA["esco"].load("articles"), CORPORA["esco"].load("queries")
    assert len(docs) > 3000 and len(asked) > 5000
    assert asked["article_id"].isin(docs["article_id"]).all()
    titles = set(docs["title"].str.casefold())
    assert not asked["query"].str.casefold().isin(titles).any()  # no query is a preferred label
    text = dict(zip(docs["article_id"], docs["title"] + " " + docs["text"], strict=True))
    held = sum(q.casefold() in text[a].casefold() for q, a in asked.itertuples(index=False))
    assert held / len(asked) < 0.2  # most labels appear nowhere in their article


def test_ranks_and_scores_by_hand() -> None:
    found = np.array([[5, 2, 9], [1, 4, 3], [7, 8, 6]])
    ranks = ranks_of(found, np.array([2, 1, 4]))
    assert ranks.tolist() == [2, 1, 0]
    assert scores(ranks) == {"recall@1": round(1 / 3, 4), "recall@10": round(2 / 3, 4),
                             "mrr@10": round((0.5 + 1) / 3, 4)}  # fmt: skip
