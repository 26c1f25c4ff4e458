"""Ray Serve deployment holding one index slot (snapshot + replayed live log).

Heavy stacks (faiss) are imported inside the replica constructor: the ingress replica and the
driver never pay for them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve


@serve.deployment
class Retriever:
    """Holds one index slot (snapshot + replayed live log) and answers filtered top-k searches."""

    def __init__(self, slot_dir: str, verify: bool = True, refresh_s: float = 1.0) -> None:
        import faiss

        from ebr.index.live.slot import open_live

        # One query per call on a fraction of a core: OpenMP threads only contend (measured
        # 10-20x slower single-query search with 2 threads on the 2-core machines).
        faiss.omp_set_num_threads(1)
        # Read-only: the writer (a pipeline) owns the log; a restart replays what it acked.
        self._live = open_live(Path(slot_dir), verify=verify, writable=False)
        self._slot = self._live.snapshot
        self._live.attributes()  # build the filter index now, not on the first filtered query
        self._refresh_s = refresh_s
        self._refreshed = time.monotonic()

    def _refresh(self) -> None:
        # Upserts and deletes reach the slot's log from a writer process (a pipeline); tail it
        # at most every refresh_s so a query sees acknowledged writes within that delay.
        if time.monotonic() - self._refreshed >= self._refresh_s:
            self._live.refresh()
            self._refreshed = time.monotonic()

    def search(
        self,
        vectors: np.ndarray | None,
        k: int,
        filter_json: dict[str, Any] | None = None,
        text: str | None = None,
        retrieval: str = "ebr",
        personalised: bool = False,
    ) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
        """Top-k live jobs for one request that pass the filter.

        Args:
            vectors: float32 [1, d] unit request embedding of the slot's model version, or
                None when the request has nothing the model understands.
            k: results per request (1..100, validated by the ingress).
            filter_json: a filter expression (validated by the ingress; see
                ebr.index.query.filters).
            text: the query text (term and hybrid retrieval), None without a query.
            retrieval: ``ebr``, ``term`` or ``hybrid`` (``ebr.index.query.search``). What a request
                can use: no text (or a slot without a term index) -> ebr; no vector -> term;
                neither -> no results.
            personalised: the request names a member: hybrid weights the EBR list (which
                carries the member) ``HYBRID_EBR_WEIGHT_MEMBER`` instead of
                ``HYBRID_EBR_WEIGHT``.

        Returns:
            One list of up to k hits (display columns + ``score``), best first, and the plan
            (with ``retrieval``, the one used).
        """
        from ebr.index.query.filters import parse_filter
        from ebr.index.query.fusion import HYBRID_EBR_WEIGHT, HYBRID_EBR_WEIGHT_MEMBER

        self._refresh()
        flt = parse_filter(filter_json) if filter_json is not None else None
        if text is None or not text.strip() or self._slot.terms is None:
            retrieval = "ebr"  # no query text, or a slot built before term indexes
        elif vectors is None:
            retrieval = "term"
        if vectors is None and retrieval == "ebr":
            return [[]], {"retrieval": None}
        texts = [text] if text is not None else None
        weight = HYBRID_EBR_WEIGHT_MEMBER if personalised else HYBRID_EBR_WEIGHT
        hits = self._live.query(
            vectors, k, flt, texts=texts, retrieval=retrieval, ebr_weight=weight
        )
        import pandas as pd

        delta = hits.delta_items
        out = []
        for row_scores, row_ids in zip(hits.scores, hits.job_ids, strict=True):
            ids = row_ids[row_ids >= 0]
            newer = np.isin(ids, delta["job_id"])  # an upsert supersedes the snapshot row
            table = pd.concat([self._slot.rows(ids[~newer]), delta[delta["job_id"].isin(ids)]])
            records = table.set_index("job_id", drop=False).loc[ids].to_dict("records")
            for record, score in zip(records, row_scores[row_ids >= 0], strict=True):
                # One null policy: a null display field is None in the response, never NaN.
                for key, value in record.items():
                    if isinstance(value, float) and value != value:
                        record[key] = None
                record["score"] = float(score)
            out.append(records)
        return out, {"retrieval": retrieval, **hits.plan}

    def info(self) -> dict[str, Any]:
        """Slot name, model version, size and measured recall@10 (for /healthz)."""
        m = self._slot.manifest
        return {
            "slot": self._slot.name,
            "model_version": self._slot.model_version,
            "item_count": int(m["item_count"]),
            "recall_at_10": m.get("recall_at_10"),
        }
