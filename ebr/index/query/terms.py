"""Term retrieval: a BM25 index (bm25s) over a slot's job text, stored in the slot.

What a job's text is (``term_text``): the title twice (a boosted field), the skills and the
description, each where the items have that column. Words are the towers' normalised words
(``ebr.text.words``: NFKC, case and accent folding) minus English stopwords and
one-letter words, so 'Café' and 'cafe' are one term for both retrievers.

The snapshot's documents are scored by bm25s from its precomputed sparse matrix (exact: every
document sharing a query term gets its score, so a filter is applied to the scores, never
after a truncated top-k). Documents upserted since the snapshot (the live delta) are scored
here with the same formula (Lucene BM25, bm25s' default) and the snapshot's collection
statistics (document count, average length, document frequencies): their scores compare with
the snapshot's, as a search engine scores a new segment with the index's global statistics.
Compaction rebuilds the index over everything.

    <slot>/terms/           bm25s files (params, vocab, csc matrix)
    <slot>/terms/stats.json document count, average length, k1, b
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.io import atomic_write_json
from ebr.text import words

TERMS_DIR = "terms"
STATS_FILE = "stats.json"


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


_STOP = _stopwords()


def tokens(text: str | None) -> list[str]:
    """Index terms of ``text``: normalised words, no stopwords, no one-letter words."""
    return list(_tokens(text)) if text else []


@lru_cache(maxsize=65_536)  # live-delta documents are scored again by every term search
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(w for w in words(text) if len(w) > 1 and w not in _STOP)


def _skills(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, float):  # null (NaN in a pandas column)
        return ""
    return " ".join(str(s) for s in value)


def term_text(items: pd.DataFrame) -> list[str]:
    """Per row: title twice, skills, description (those of the columns ``items`` has)."""
    n = len(items)
    title = items["title"].astype(str) if "title" in items.columns else pd.Series([""] * n)
    skills = items["skills"].map(_skills) if "skills" in items.columns else pd.Series([""] * n)
    if "description" in items.columns:
        description = items["description"].map(lambda v: v if isinstance(v, str) else "")
    else:
        description = pd.Series([""] * n)
    parts = zip(title.tolist(), skills.tolist(), description.tolist(), strict=True)
    return [" ".join((t, t, s, d)).strip() for t, s, d in parts]


class DocTerms:
    """Term counts of documents outside an index (the live delta), counted once: postings
    term -> (document positions, term frequencies) and document lengths, so a query scores
    them with a few array operations instead of re-reading every text."""

    def __init__(self, texts: Sequence[str]) -> None:
        rows: dict[str, list[int]] = {}
        freqs: dict[str, list[int]] = {}
        self.lengths = np.zeros(len(texts), dtype=np.float32)
        for i, text in enumerate(texts):
            doc = _tokens(text)
            self.lengths[i] = len(doc)
            for term, tf in Counter(doc).items():
                rows.setdefault(term, []).append(i)
                freqs.setdefault(term, []).append(tf)
        self.postings = {
            t: (np.asarray(rows[t], dtype=np.int64), np.asarray(freqs[t], dtype=np.float32))
            for t in rows
        }

    def __len__(self) -> int:
        return len(self.lengths)

    def vocabulary(self, alive: np.ndarray) -> LiveTerms:
        """The terms of the documents at ``alive`` [n] bool."""
        return LiveTerms(self, alive)


class JoinedTerms(DocTerms):
    """``DocTerms`` of consecutive parts (each part's documents after the previous parts'),
    joined without counting anything again: a live slot's delta grows by a table per upsert
    and a view's terms are its tables' terms, each table counted once for the slot
    (``ebr.index.query.search.Delta.terms``). Counting the whole delta again for every view
    (a stream makes one a second) cost the first hybrid query on it ~60 ms at 1,000 delta
    rows. A term's postings are joined when a query asks for it."""

    def __init__(self, parts: Sequence[DocTerms]) -> None:  # no super(): nothing to count
        self._parts = list(parts)
        sizes = [len(p) for p in self._parts]
        self._offsets = np.cumsum([0, *sizes])[:-1].tolist()
        self.lengths = (
            np.concatenate([p.lengths for p in self._parts])
            if self._parts
            else np.zeros(0, dtype=np.float32)
        )
        self._joined: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        # Read as a dict is (``postings.get(term)``): ``get`` below joins the term's parts.
        self.postings = self  # type: ignore[assignment]

    def __contains__(self, term: object) -> bool:
        return isinstance(term, str) and self.get(term) is not None

    def get(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(document positions int64, term frequencies float32) of ``term``, or None."""
        if term in self._joined:
            return self._joined[term]
        pairs = zip(self._parts, self._offsets, strict=True)
        found = [(p.postings[term], off) for p, off in pairs if term in p.postings]
        joined = None
        if found:
            joined = (np.concatenate([rows + off for (rows, _), off in found]),
                      np.concatenate([tfs for (_, tfs), _ in found]))  # fmt: skip
        self._joined[term] = joined
        return joined


class LiveTerms:
    """``term in live_terms``: some document of a ``DocTerms`` at ``alive`` has the term."""

    def __init__(self, docs: DocTerms, alive: np.ndarray) -> None:
        self._docs, self._alive = docs, alive

    def __contains__(self, term: object) -> bool:
        post = self._docs.postings.get(term) if isinstance(term, str) else None
        if post is None:
            return False
        rows = post[0]
        return bool(self._alive[rows[rows < len(self._alive)]].any())


class TermIndex:
    """BM25 over one document collection (row i = document i = slot row i)."""

    def __init__(self, retriever: Any | None, stats: dict[str, float]) -> None:
        self._bm25 = retriever  # None when no document has a term (bm25s needs one)
        self.n_docs = int(stats["n_docs"])
        self.avgdl = float(stats["avgdl"])
        self.k1, self.b = float(stats["k1"]), float(stats["b"])
        self._df = np.zeros(0, dtype=np.int64)  # documents per vocabulary id
        self._vocab: dict[str, int] = {}
        self._last: tuple[str, np.ndarray] | None = None  # ``scores``' last query and result
        if retriever is not None:
            self._df = np.diff(np.asarray(retriever.scores["indptr"]))
            self._vocab = retriever.vocab_dict

    @classmethod
    def build(cls, texts: Sequence[str]) -> TermIndex:
        """Index ``texts`` (one document each, row order kept)."""
        import bm25s

        docs = [tokens(t) for t in texts]
        retriever = bm25s.BM25()  # Lucene BM25, k1 1.5, b 0.75
        avgdl = float(np.mean([len(d) for d in docs])) if docs else 0.0
        stats = {"n_docs": len(docs), "avgdl": avgdl, "k1": retriever.k1, "b": retriever.b}
        if not any(docs):  # nothing to index (no rows, or no row with a term)
            return cls(None, stats)
        retriever.index(docs, show_progress=False)
        return cls(retriever, stats)

    def save(self, path: Path) -> None:
        """Write into ``path`` (a folder inside an atomic slot directory)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._bm25 is not None:
            self._bm25.save(str(path), show_progress=False)
        stats = {"n_docs": self.n_docs, "avgdl": self.avgdl, "k1": self.k1, "b": self.b}
        atomic_write_json(path / STATS_FILE, stats)

    @classmethod
    def load(cls, path: Path) -> TermIndex:
        import bm25s

        path = Path(path)
        stats = json.loads((path / STATS_FILE).read_text())
        if not (path / "params.index.json").is_file():  # an index of no terms
            return cls(None, stats)
        retriever = bm25s.BM25.load(str(path), mmap=True, show_progress=False)
        return cls(retriever, stats)

    def document_frequencies(self) -> dict[str, int]:
        """Every term of the snapshot -> the documents holding it (a fresh dict; the
        catalogue's words for spelling correction, ``ebr.spelling``)."""
        return {t: int(self._df[i]) for t, i in self._vocab.items() if t}

    def _idf(self, term: str) -> float:
        """Lucene idf with the snapshot's statistics (df 0 for a term it never saw)."""
        vid = self._vocab.get(term)
        df = int(self._df[vid]) if vid is not None else 0
        return math.log(1 + (self.n_docs - df + 0.5) / (df + 0.5))

    def coverage(self, query: str, also: frozenset[str] | LiveTerms = frozenset()) -> float:
        """Share of ``query``'s distinct terms this index (or ``also``: the live delta's
        terms) holds; 0 for a query without terms. A term no document has (a misspelling, a
        word the catalogue never uses) cannot be matched by term retrieval at all."""
        terms = list(dict.fromkeys(tokens(query)))
        if not terms:
            return 0.0
        return sum(t in self._vocab or t in also for t in terms) / len(terms)

    def attainable(self, query: str) -> float:
        """The score no document can exceed for ``query``: the sum of its distinct terms'
        idf (each term's Lucene tf factor stays below 1). 1.0 for a query without terms."""
        terms = list(dict.fromkeys(tokens(query)))
        return sum(self._idf(t) for t in terms) if terms else 1.0

    def scores(self, query: str) -> np.ndarray:
        """float32 [n_docs], read-only: BM25 of every snapshot document for ``query`` (0: no
        term). The last query's scores are kept: a signed-in search reads them twice (its
        term list, then its member-led jobs)."""
        last = self._last
        if last is not None and last[0] == query:
            return last[1]
        terms = list(dict.fromkeys(tokens(query)))
        ids = [self._vocab[t] for t in terms if t in self._vocab]
        if not ids or self._bm25 is None:
            out = np.zeros(self.n_docs, dtype=np.float32)
        else:
            out = np.asarray(self._bm25.get_scores(ids), dtype=np.float32)
        out.flags.writeable = False
        self._last = (query, out)  # one tuple, replaced whole: safe for concurrent readers
        return out

    def docs_with(self, term: str) -> np.ndarray:
        """int64 [df], ascending: the rows whose document holds ``term`` (a normalised word)."""
        vid = self._vocab.get(term)
        if vid is None or self._bm25 is None:
            return np.zeros(0, dtype=np.int64)
        indptr = self._bm25.scores["indptr"]
        return np.asarray(self._bm25.scores["indices"][indptr[vid] : indptr[vid + 1]], np.int64)

    def score_texts(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts)]: BM25 of documents outside the index (the live delta), with the
        index's statistics, so the scores compare with ``scores``."""
        return self.score_docs(query, DocTerms(texts))

    def score_docs(self, query: str, docs: DocTerms) -> np.ndarray:
        """``score_texts`` of documents counted once (``DocTerms``): float32 [len(docs)]."""
        out = np.zeros(len(docs), dtype=np.float32)
        den = self.k1 * (1 - self.b) + self.k1 * self.b * docs.lengths / max(self.avgdl, 1e-9)
        for term in dict.fromkeys(tokens(query)):
            post = docs.postings.get(term)
            if post is not None:
                rows, tf = post
                out[rows] += np.float32(self._idf(term)) * tf / (tf + den[rows])
        return out


def top_rows(
    scores: np.ndarray, k: int, eligible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of one score vector with a positive score (a shared term) and, with
    ``eligible`` [n] bool, passing it -> scores float32 [k] (-inf pads), rows int64 [k] (-1
    pads); ties go to the lower row."""
    ok = scores > 0
    if eligible is not None:
        ok &= eligible
    rows = np.flatnonzero(ok)
    out_s = np.full(k, -np.inf, dtype=np.float32)
    out_r = np.full(k, -1, dtype=np.int64)
    if not len(rows):
        return out_s, out_r
    s = scores[rows]
    if len(rows) > k:  # the k best; of equal scores at the cut, the lowest rows (any k agrees)
        kth = -np.partition(-s, k - 1)[k - 1]
        above = np.flatnonzero(s > kth)
        keep = np.concatenate([above, np.flatnonzero(s == kth)[: k - len(above)]])
        rows, s = rows[keep], s[keep]
    order = np.lexsort((rows, -s))
    out_s[: len(order)], out_r[: len(order)] = s[order], rows[order]
    return out_s, out_r
