"""Text normalisation shared by both towers, and the vocabulary a model was trained on.

Query text and catalogue text go through the same ``words``: Unicode NFKC (fullwidth
``ｓｏｆｔｗａｒｅ`` -> ``software``, ligatures, compatibility forms), removal of format characters
(zero-width spaces and joiners, soft hyphens, bidi marks), case folding and accent folding
(``Café`` -> ``cafe``), then runs of letters and digits in any script. A word the model never
saw in training has an untrained hashed embedding, so ``Vocabulary.split`` tells serving whether
a query carries any signal at all (``vocab.txt`` beside the towers).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

VOCAB_FILE = "vocab.txt"
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" is \w but not a word


@lru_cache(maxsize=200_000)
def normalize(text: str) -> str:
    """NFKC, no format characters, case- and accent-folded (the form both towers read)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    folded = unicodedata.normalize("NFKD", text.casefold())
    return unicodedata.normalize("NFC", "".join(c for c in folded if not unicodedata.combining(c)))


def words(text: str | None) -> list[str]:
    """The normalised words of ``text`` in order ([] for None or text without letters)."""
    if not text:
        return []
    return _WORD.findall(normalize(text))


@dataclass(frozen=True)
class Vocabulary:
    """The normalised words a model saw in training (any text input of either tower)."""

    words: frozenset[str]

    @classmethod
    def of(cls, texts: Iterable[str | None]) -> Vocabulary:
        out: set[str] = set()
        for text in texts:
            out.update(words(text))
        return cls(frozenset(out))

    def split(self, text: str | None) -> tuple[list[str], list[str]]:
        """(known words, unknown words) of ``text``, each in order without repeats."""
        seen = list(dict.fromkeys(words(text)))
        return [w for w in seen if w in self.words], [w for w in seen if w not in self.words]

    def save(self, path: Path) -> None:
        """One word per line, sorted (write into an atomic directory: no temp file here)."""
        Path(path).write_text("".join(f"{w}\n" for w in sorted(self.words)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(frozenset(w for w in lines if w))


def training_vocabulary(
    jobs: pd.DataFrame, members: pd.DataFrame, impressions: pd.DataFrame
) -> Vocabulary:
    """Every word of the training inputs: job titles, descriptions and skills, member
    headlines and skills, and logged queries."""

    def skill_text(col: pd.Series) -> list[str]:
        return [" ".join(s) for s in col if s is not None and not isinstance(s, float)]

    texts: list[str | None] = []
    for frame, cols in ((jobs, ("title", "description")), (members, ("headline",))):
        for col in cols:
            if col in frame.columns:
                texts.extend(v for v in frame[col].tolist() if isinstance(v, str))
    for frame in (jobs, members):
        if "skills" in frame.columns:
            texts.extend(skill_text(frame["skills"]))
    if "query" in impressions.columns:
        texts.extend(q for q in impressions["query"].dropna().unique().tolist())
    return Vocabulary.of(texts)
