"""Typo tolerance on the request path: a release's query words that neither its request tower
nor its slot knows are corrected against the slot's catalogue words (``ebr.spelling``) before
the query is embedded and term-searched, so a misspelled query finds what its correct
spelling finds, and the response says what was searched (``corrected_query``).

The speller's dictionary is the slot's term index (every word of the jobs' titles, skills and
descriptions, with its document count), built once per release load: ~0.2 s and ~20 MB at
the demo's 20k jobs (7,175 words). A slot built before term indexes gets no speller: its
queries are searched as typed (the model's vocabulary carries no frequencies to rank
candidates by).
"""

from __future__ import annotations

from ebr.index.query.terms import LiveTerms, tokens
from ebr.spelling import Speller
from serving.encoder import ReleaseEncoder
from serving.retriever import ReleaseIndex


class KnownWords:
    """``word in known``: the word is searchable as typed: the request tower saw it in
    training, a job of the slot (snapshot or live delta) holds it as a term, or term
    retrieval ignores it (a stopword). Each source is asked only when the ones before do not
    know the word: a query of words the model knows pays one set lookup per word."""

    def __init__(self, encoder: ReleaseEncoder, index: ReleaseIndex) -> None:
        vocab = encoder._vocab  # read-only: the words the tower was trained on
        self._vocab = vocab.words if vocab is not None else frozenset()
        self._index = index
        self._live: LiveTerms | None = None

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str):
            return False
        if word in self._vocab or not tokens(word):  # no tokens: a stopword or one letter
            return True
        terms = self._index.slot.terms
        if terms is not None and terms.coverage(word) > 0:
            return True
        if self._live is None:  # the live delta's terms (counted once per published view)
            _, delta, _ = self._index.live._current()  # read-only: the published view
            self._live = delta.terms(self._index.slot.items).vocabulary(delta.alive)
        return word in self._live


class QuerySpeller:
    """One release's spelling correction (``LoadedRelease.answer`` runs it first)."""

    def __init__(self, encoder: ReleaseEncoder, index: ReleaseIndex) -> None:
        self._encoder, self._index = encoder, index
        terms = index.slot.terms
        self.speller = None if terms is None else Speller.of_counts(terms.document_frequencies())

    def correct(self, query: str | None) -> tuple[str | None, str | None]:
        """(what to search, the corrected query or None when nothing was corrected)."""
        if query is None or self.speller is None:
            return query, None
        fixed = self.speller.correct(query, KnownWords(self._encoder, self._index))
        return (fixed.query, fixed.query) if fixed.corrected else (query, None)
