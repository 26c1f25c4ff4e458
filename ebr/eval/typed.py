"""Typed queries: what a person types into the search box, none of it seen in training.

    qs = typed_queries(jobs, impressions, load_occupations(), seed=0)
    section = evaluate_typed(model, mcfg, jobs, qs, vocabulary)   # ebr.eval.typed_scores

The log-based evaluation replays the generator's own query distribution (target titles, their
last two words, skill phrases). These queries come from elsewhere (kinds):

- alt_label:  ESCO alternative labels of the occupation (real synonyms: 'graveyard attendant'
  for cemetery attendant), from the half of the labels ``eval_reserved`` keeps out of training.
- title_word: the occupation label's most distinctive word ('electrician'); relevant: every
  catalogue occupation whose label has that word.
- misspelled: a label of <= 3 words with one deletion or adjacent transposition in a word of
  >= 5 letters ('bus drievr'); reordered: the label's words shuffled ('designer graphic').
- common:     a fixed list of everyday searches (COMMON_QUERIES).
- unknown:    emoji, other scripts, gibberish: no word the model knows. The right answer is
  "not understood" (no known word / BM25 returns nothing), so only that is scored.

A result is relevant when it is a job of a relevant occupation. Queries equal (normalised) to
a logged query, a catalogue title or a skill label, and alternative labels found as a phrase
in a job description, are dropped (common ones are kept and flagged ``in_training``);
``df.attrs["dropped_in_training"]`` counts the drops per kind.

Buckets (head / torso / tail): occupations sorted by their number of catalogue jobs (of
logged searches with an engaged job of the occupation, for ``bucket_searches``) split into
terciles of that mass: head holds the most frequent occupations with the first third of all
jobs. A query with several relevant occupations sums their counts and gets the bucket whose
count threshold the sum reaches (one occupation: its own tercile, ties upwards).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from ebr.data.esco_labels import alternative_labels, eval_reserved, label_key
from ebr.data.pairs import POSITIVE
from ebr.text import Vocabulary, words

KINDS = ("alt_label", "title_word", "misspelled", "reordered", "common", "unknown")
BUCKETS = ("head", "torso", "tail")
METHODS = ("ebr", "bm25", "hybrid")
K = 100  # depth of every ranked list (recall@100)
_STOP = frozenset({"and", "the", "for", "with", "from", "other", "all"})

# Everyday searches -> the label words a relevant occupation has (any one tuple, all its words):
# the check "does the result's title name the occupation asked for".
COMMON_QUERIES: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("accountant", (("accountant",),)),
    ("cashier", (("cashier",),)),
    ("nurse", (("nurse",),)),
    ("registered nurse", (("nurse",),)),
    ("senior burn ward nurse", (("nurse",),)),
    ("electrician", (("electrician",),)),
    ("truck driver", (("truck", "driver"), ("lorry", "driver"))),
    ("bus driver", (("bus", "driver"),)),
    ("warehouse worker", (("warehouse", "worker"), ("warehouse", "operator"))),
    ("graphic designer", (("graphic", "designer"),)),
    ("python developer", (("software", "developer"), ("application", "developer"))),
    ("software developer", (("software", "developer"), ("application", "developer"))),
    ("data analyst", (("data", "analyst"),)),
    ("sales assistant", (("sales", "assistant"), ("shop", "assistant"))),
    ("chef", (("chef",), ("cook",))),
    ("teacher", (("teacher",),)),
    ("receptionist", (("receptionist",),)),
    ("mechanic", (("mechanic",),)),
    ("welder", (("welder",),)),
    ("pharmacist", (("pharmacist",),)),
    ("cleaner", (("cleaner",),)),
    ("project manager", (("project", "manager"),)),
    ("security guard", (("security", "guard"),)),
)
# No word of these is in any training text (checked against the vocabulary when built).
UNKNOWN_QUERIES = (
    "🔧🔧",
    "💼 🚀 ✨",
    "инженер",
    "медсестра",
    "護士",
    "软件工程师",
    "ممرضة",
    "νοσοκόμα",
    "エンジニア",
    "अध्यापक",
    "ช่างไฟฟ้า",
)


def _counts(jobs: pd.DataFrame, impressions: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per catalogue occupation uri: number of jobs, and number of logged searches (sessions
    with a query) with at least one engaged job of that occupation."""
    n_jobs = jobs["occupation_uri"].value_counts()
    engaged = impressions[impressions["query"].notna() & impressions["outcome"].isin(POSITIVE)]
    occ = engaged[["session_id", "job_id"]].merge(jobs[["job_id", "occupation_uri"]], "inner")
    n_search = occ.drop_duplicates(["session_id", "occupation_uri"])["occupation_uri"]
    return n_jobs, n_search.value_counts().reindex(n_jobs.index, fill_value=0)


def _thresholds(counts: pd.Series) -> tuple[float, float]:
    """(head minimum, torso minimum): the counts at which the cumulative mass of occupations
    sorted by count crosses 1/3 and 2/3."""
    c = np.sort(counts.to_numpy(np.float64))[::-1]
    share = np.cumsum(c) / max(c.sum(), 1.0)
    head = c[min(int(np.searchsorted(share, 1 / 3)), len(c) - 1)]
    torso = c[min(int(np.searchsorted(share, 2 / 3)), len(c) - 1)]
    return float(max(head, 1.0)), float(max(torso, 1.0))


def _bucket(total: float, thresholds: tuple[float, float]) -> str:
    return "head" if total >= thresholds[0] else "torso" if total >= thresholds[1] else "tail"


def _misspell(word: str, rng: np.random.Generator) -> str:
    """One deletion or one adjacent transposition at a random position (never a no-op)."""
    for _ in range(20):
        i = int(rng.integers(0, len(word) - 1))
        out = (
            word[:i] + word[i + 1 :]
            if rng.random() < 0.5
            else (word[:i] + word[i + 1] + word[i] + word[i + 2 :])
        )
        if out != word:
            return out
    return word[1:]


def _gibberish(rng: np.random.Generator, n: int) -> list[str]:
    """Consonant-only strings: pronounceable by nobody, a word of no language here."""
    letters = np.array(list("bcdfghjklmnpqrstvwxz"))
    return [
        " ".join("".join(rng.choice(letters, int(rng.integers(5, 9)))) for _ in range(1 + i % 2))
        for i in range(n)
    ]


Row = tuple[str, str, str, tuple[str, ...]]  # query, kind, occupation uri, relevant uris


def _alt_label_rows(uris: set[str], rng: np.random.Generator, per_occupation: int) -> list[Row]:
    """Up to per_occupation reserved alternative labels of each occupation in ``uris``;
    relevant: every occupation in ``uris`` that has the label."""
    alt = alternative_labels()
    alt = alt[alt["uri"].isin(uris) & alt["alt_label"].map(eval_reserved)]
    alt = alt.assign(key=alt["alt_label"].map(label_key)).drop_duplicates(["uri", "key"])
    owners = alt.groupby("key")["uri"].agg(lambda s: tuple(sorted(set(s))))
    rows: list[Row] = []
    for uri, group in alt.groupby("uri", sort=True):
        for i in sorted(rng.permutation(len(group))[:per_occupation]):
            label, key = group["alt_label"].iloc[i], group["key"].iloc[i]
            rows.append((label, "alt_label", str(uri), owners[key]))
    return rows


def _label_rows(
    label_words: dict[str, list[str]], rng: np.random.Generator, vocabulary: Vocabulary
) -> list[Row]:
    """title_word, misspelled and reordered queries from each occupation's label words."""
    df = Counter(w for ws in label_words.values() for w in set(ws))
    rows: list[Row] = []
    for uri, ws in label_words.items():
        content = [w for w in ws if len(w) >= 4 and w not in _STOP]
        if content:  # fewest labels sharing it; ties -> the later word (the head noun)
            word = min(reversed(content), key=lambda w: df[w])
            rel = tuple(u for u, lw in label_words.items() if word in lw)
            rows.append((word, "title_word", uri, rel))
        same = tuple(u for u, lw in label_words.items() if lw == ws)
        long_words = [i for i, w in enumerate(ws) if len(w) >= 5]
        if len(ws) <= 3 and long_words:
            i = int(rng.choice(long_words))
            typo = _misspell(ws[i], rng)
            if typo not in vocabulary.words:  # a real word is not a misspelling
                rows.append((" ".join([*ws[:i], typo, *ws[i + 1 :]]), "misspelled", uri, same))
        if len(set(ws)) >= 2 and len(ws) <= 3:
            order = rng.permutation(len(ws))
            while (order == np.arange(len(ws))).all():
                order = rng.permutation(len(ws))
            rows.append((" ".join(ws[j] for j in order), "reordered", uri, same))
    return rows


def typed_queries(
    jobs: pd.DataFrame,
    impressions: pd.DataFrame,
    occupations: pd.DataFrame,
    seed: int,
    per_occupation: int = 2,
    vocabulary: Vocabulary | None = None,
) -> pd.DataFrame:
    """The typed-query set of one catalogue (see the module docstring for every kind).

    Args:
        jobs: the catalogue (``job_id``, ``title``, ``occupation_uri``).
        impressions: the logged searches (``session_id``, ``query``, ``job_id``, ``outcome``).
        occupations: ESCO occupations (``uri``, ``label``), e.g. ``load_occupations()``.
        per_occupation: at most this many alt_label queries per catalogue occupation (one
            title_word, misspelled and reordered query each, so no kind dominates the mean).
        vocabulary: the words the model knows; unknown queries with a known word are
            dropped. Default: the words of the jobs' titles, descriptions and skills and of
            the logged queries.

    Returns: one row per distinct (kind, query): query, kind, occupation_uri (the occupation
    the query was made from; '' for unknown), relevant_uris (tuple of catalogue occupations),
    bucket_jobs, bucket_searches ('none' for unknown), in_training (bool).
    """
    if per_occupation < 1:
        raise ValueError(f"per_occupation must be >= 1, got {per_occupation}")
    rng = np.random.default_rng(seed)
    n_jobs, n_search = _counts(jobs, impressions)
    occ = occupations[occupations["uri"].isin(n_jobs.index)].sort_values("uri")
    labels = dict(zip(occ["uri"], occ["label"], strict=True))
    label_words = {u: words(lab) for u, lab in labels.items()}
    skills = [s for ss in jobs["skills"] if ss is not None for s in ss]
    seen = {label_key(t) for t in [*jobs["title"].unique(), *labels.values(), *set(skills)]}
    seen |= {label_key(q) for q in impressions["query"].dropna().unique()}
    # A synonym must not hide in a description either (descriptions are a training input).
    text = " " + " \n ".join(label_key(t) for t in jobs["description"].unique()) + " "
    if vocabulary is None:
        vocabulary = Vocabulary.of(
            [*jobs["title"], *jobs["description"], *skills, *impressions["query"].dropna()]
        )
    rows = _alt_label_rows(set(labels), rng, per_occupation)
    rows += _label_rows(label_words, rng, vocabulary)
    for query, alternatives in COMMON_QUERIES:
        rel = tuple(
            u
            for u, lw in label_words.items()
            if any(all(w in lw for w in need) for need in alternatives)
        )
        if rel:  # an occupation the catalogue lacks cannot be found
            rows.append((query, "common", max(rel, key=lambda u: n_jobs[u]), rel))
    unknown = [*UNKNOWN_QUERIES, *_gibberish(rng, 9)]
    rows += [(q, "unknown", "", ()) for q in unknown if not vocabulary.split(q)[0]]

    out = pd.DataFrame(rows, columns=["query", "kind", "occupation_uri", "relevant_uris"])
    out = out.drop_duplicates(["kind", "query"]).reset_index(drop=True)
    out["in_training"] = [
        label_key(q) in seen or (kind == "alt_label" and f" {label_key(q)} " in text)
        for q, kind in zip(out["query"], out["kind"], strict=True)
    ]
    dropped = out["in_training"] & ~out["kind"].isin(["common", "unknown"])
    out.attrs["dropped_in_training"] = out.loc[dropped, "kind"].value_counts().to_dict()
    out = out[~dropped].reset_index(drop=True)
    for col, counts in (("bucket_jobs", n_jobs), ("bucket_searches", n_search)):
        th = _thresholds(counts)
        out[col] = [
            _bucket(float(sum(counts[u] for u in rel)), th) if rel else "none"
            for rel in out["relevant_uris"]
        ]
    return out
