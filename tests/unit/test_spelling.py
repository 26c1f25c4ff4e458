"""Spelling correction against the catalogue's words (``ebr.spelling``): misspellings of every
kind found back, known words never touched, digits / other scripts / emoji never corrected."""

from __future__ import annotations

import random

import pytest

from ebr.index.query.terms import TermIndex
from ebr.spelling import Correction, Speller
from ebr.text import words

# Document counts of a small job catalogue; several words sit one edit from another one.
COUNTS = {
    "accountant": 12, "bus": 50, "driver": 77, "drier": 24, "electrician": 18,
    "electrical": 672, "registered": 30, "nurse": 56, "manager": 2191, "manage": 5270,
    "software": 686, "engineer": 1316, "engines": 310, "engine": 266, "chief": 338,
    "chef": 37, "pharmacist": 54, "plumber": 25, "warden": 1002, "street": 900, "welder": 134,
    "pipe": 140, "cook": 40, "care": 300, "caregiver": 9, "senior": 3000, "sales": 800,
    "cart": 5, "card": 50, "cord": 50, "developer": 101, "receptionist": 20, "nursing": 80,
}  # fmt: skip


@pytest.fixture(scope="module")
def speller() -> Speller:
    return Speller.of_counts(COUNTS)


def fixed(speller: Speller, query: str, known: frozenset[str] = frozenset()) -> str:
    return speller.correct(query, known).query


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("acountant", "accountant"),  # deletion
        ("electrican", "electrician"),  # deletion ('electrical' is one substitution away)
        ("managr", "manager"),  # deletion ('manage' is one substitution away, more frequent)
        ("plumbr", "plumber"),
        ("nursse", "nurse"),  # insertion
        ("welderr", "welder"),
        ("nurxe", "nurse"),  # substitution
        ("softwars", "software"),
        ("accountnat", "accountant"),  # transposition
        ("drievr", "driver"),  # transposition ('drier' is one deletion away)
        ("cheif", "chief"),
        ("elctrican", "electrician"),  # two edits
        ("pharmasist", "pharmacist"),
        ("recepcionist", "receptionist"),
        ("ENGINER", "engineer"),  # case and accents fold first (ebr.text.words)
        ("Électrican", "electrician"),
    ],
)
def test_a_misspelled_word_is_found_back(speller: Speller, typed: str, meant: str) -> None:
    got = speller.correct(typed, frozenset())
    assert got == Correction(meant, True, ((typed.casefold().replace("é", "e"), meant),), ())


@pytest.mark.parametrize(
    ("typed", "meant", "changes"),
    [
        ("bus drievr", "bus driver", (("drievr", "driver"),)),
        ("registred nurse", "registered nurse", (("registred", "registered"),)),
        ("Senior  electrican!", "senior electrician", (("electrican", "electrician"),)),
        (
            "sofware enginer",
            "software engineer",
            (("sofware", "software"), ("enginer", "engineer")),
        ),
        ("pipe weldr in Ottawa", "pipe welder in ottawa", (("weldr", "welder"),)),
    ],
)
def test_multi_word_queries_keep_their_other_words(
    speller: Speller, typed: str, meant: str, changes: tuple[tuple[str, str], ...]
) -> None:
    got = speller.correct(typed, frozenset({"in", "ottawa"}))
    assert (got.query, got.corrected, got.changes, got.unresolved) == (meant, True, changes, ())


def test_known_words_are_never_changed(speller: Speller) -> None:
    # 'engines' is one edit from 'engineer'; 'welders' from 'welder'; 'nurses' from 'nurse'.
    for query in ("engines", "street warden", "chef", "drier", "manage"):
        assert speller.correct(query, frozenset()) == Correction(query, False, (), ())
    known = frozenset({"welders", "nurses", "cooks"})
    for query in ("welders", "senior nurses", "Cooks"):
        assert speller.correct(query, known) == Correction(query, False, (), ())
    # Without being known, the same words are corrected.
    assert fixed(speller, "welders") == "welder" and fixed(speller, "cooks") == "cook"


def test_short_words(speller: Speller) -> None:
    assert fixed(speller, "cok") == "cook"  # 3 letters: one edit
    assert fixed(speller, "nrse") == "nurse"  # 4 letters: one edit
    for short in ("rn", "x", "ok"):  # below 3 letters: never corrected
        got = speller.correct(short, frozenset())
        assert not got.corrected and got.unresolved == (short,), got
    for two_edits in ("nrs", "drvr", "pmbr", "plmbxq"):  # over the budget of its length
        got = speller.correct(two_edits, frozenset())
        assert not got.corrected and got.unresolved == (two_edits,), got


def test_digits_other_scripts_and_emoji_are_not_corrected(speller: Speller) -> None:
    for word in ("nurse24", "2nd", "a320", "медсестра", "护士", "νοσοκόμα"):
        got = speller.correct(f"senior {word}", frozenset())
        assert got == Correction(f"senior {word}", False, (), tuple(words(word))), got
    # An emoji is no word at all: neither corrected nor reported.
    assert speller.correct("nurse 🚑", frozenset()) == Correction("nurse 🚑", False, (), ())
    assert speller.correct("🚑🚒", frozenset()) == Correction("🚑🚒", False, (), ())
    # A misspelled word next to one is still corrected; the digits word stays as typed.
    got = speller.correct("registred nurse 24h 🚑", frozenset())
    assert got.query == "registered nurse 24h" and got.unresolved == ("24h",)


def test_gibberish_and_empty_queries(speller: Speller) -> None:
    for query in ("xqzvbnmw", "qwxzjvk pzzkq", "zzzzzzzzzzzz"):
        got = speller.correct(query, frozenset())
        assert not got.corrected and got.query == query and got.unresolved, got
    for query in ("", "   ", "?!", "--"):
        assert speller.correct(query, frozenset()) == Correction(query, False, (), ())
    # A repeated unknown word is reported once.
    assert speller.correct("xqzv xqzv", frozenset()).unresolved == ("xqzv",)


def test_ties_go_to_the_likelier_typo_then_the_more_frequent_word() -> None:
    cards = Speller.of_counts({"cart": 5, "card": 50, "cord": 50, "carder": 900, "cat": 800})
    assert fixed(cards, "carx") == "card"  # card 50 > cart 5, both a substitution
    assert fixed(cards, "cad") == "card"  # letters left out beat a more frequent substitution
    # Equal counts and kinds: the alphabetically first (card, cord), in any insertion order.
    assert fixed(cards, "cxrd") == "card"
    assert fixed(Speller.of_counts({"cord": 50, "card": 50}), "cxrd") == "card"
    # A closer word beats a likelier kind of typo: 'cardr' is one letter from 'carder'.
    assert fixed(cards, "cardr") == "carder"


def test_spaces_typed_inside_or_left_out(speller: Speller) -> None:
    assert speller.correct("elec trician", frozenset()).changes == (
        ("elec trician", "electrician"),
    )
    assert fixed(speller, "engine er") == "engineer"  # 'engine' known, 'er' not
    assert fixed(speller, "care giver") == "caregiver"
    assert fixed(speller, "care sales") == "care sales"  # both known: kept
    got = speller.correct("busdriver", frozenset())
    assert got.query == "bus driver" and got.changes == (("busdriver", "bus driver"),)
    assert fixed(speller, "streetwarden nurse") == "street warden nurse"


def test_deterministic_whatever_the_insertion_order(speller: Speller) -> None:
    items = list(COUNTS.items())
    random.Random(3).shuffle(items)
    other = Speller.of_counts(dict(items))
    queries = ["bus drievr", "electrican", "carx", "cxrd", "xqzv", "busdriver", "teh"]
    for q in queries:
        assert speller.correct(q, frozenset()) == other.correct(q, frozenset()), q
        assert speller.correct(q, frozenset()) == speller.correct(q, frozenset()), q


def test_an_empty_dictionary_corrects_nothing() -> None:
    for empty in (Speller.of_counts({}), Speller.of_texts([]), Speller.of_texts([None, ""])):
        assert len(empty) == 0
        assert empty.correct("electrican", frozenset()) == Correction(
            "electrican", False, (), ("electrican",)
        )
        assert empty.correct("nurse", frozenset({"nurse"})) == Correction("nurse", False, (), ())


def test_of_texts_counts_documents_and_keeps_letter_words() -> None:
    texts = ["Registered Nurse, nurse", "Nurse aide", "Bus driver 24h", "Café 3D", None]
    sp = Speller.of_texts(texts)
    assert "nurse" in sp and "cafe" in sp and "driver" in sp
    assert "24h" not in sp and "3d" not in sp  # digits: never a suggestion
    assert sp.correct("registred nurce", frozenset()).query == "registered nurse"
    # document counts: 'nurse' (2 texts) beats 'nursy' (1) at one substitution each
    tie = Speller.of_texts(["nurse", "nurse", "nursy nursy nursy"])
    assert tie.correct("nursx", frozenset()).query == "nurse"


def test_of_counts_refuses_bad_counts_and_skips_unusable_words() -> None:
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="nurse"):
            Speller.of_counts({"nurse": bad})  # type: ignore[dict-item]
    sp = Speller.of_counts({"Nurse": 3, "nurse": 0, "x": 9, "3d": 5, "медсестра": 4})
    assert len(sp) == 0


def test_term_index_document_frequencies_feed_a_speller() -> None:
    texts = ["Registered nurse", "Nurse assistant", "Electrician", "Electrical engineer 3D"]
    index = TermIndex.build(texts)
    df = index.document_frequencies()
    assert df["nurse"] == 2 and df["electrician"] == 1 and df["3d"] == 1
    assert "" not in df and all(isinstance(v, int) for v in df.values())
    assert TermIndex.build(["", None or ""]).document_frequencies() == {}
    sp = Speller.of_counts(df)
    assert sp.correct("electrican nurce", frozenset()).query == "electrician nurse"
