"""The ESCO knowledge base: one article per occupation (its preferred label and description,
from the installed ESCO data), and as evaluation queries the occupation's alternative labels,
which the indexed text never holds ("lab tech" should retrieve "medical laboratory
assistant")."""

from __future__ import annotations

import pandas as pd

from ebr.data.esco import load_occupations
from ebr.data.esco_labels import alternative_labels


def articles() -> pd.DataFrame:
    """article_id (1..n, in ESCO's order), uri, title (the preferred label), text (the
    description)."""
    occ = load_occupations()
    return pd.DataFrame({
        "article_id": occ["occ_idx"].astype("int64") + 1,
        "uri": occ["uri"],
        "title": occ["label"],
        "text": occ["definition"],
    })  # fmt: skip


def queries() -> pd.DataFrame:
    """query (an alternative label), article_id (its occupation's article): labels that name
    one occupation only, and that differ from every preferred label."""
    docs = articles()
    alts = alternative_labels().merge(docs[["uri", "article_id"]], on="uri", how="inner")
    alts["key"] = alts["alt_label"].str.casefold()
    unique = alts.groupby("key")["article_id"].transform("nunique") == 1
    preferred = set(docs["title"].str.casefold())
    alts = alts[unique & ~alts["key"].isin(preferred)].drop_duplicates("key")
    return alts.rename(columns={"alt_label": "query"})[["query", "article_id"]].reset_index(
        drop=True
    )
