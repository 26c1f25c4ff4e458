"""A release's index: its slot (snapshot + replayed live log), opened read-only, and the
response rows of its hits (``serving.release_server`` holds one per release).

Heavy stacks (faiss) are imported when a release loads: the ingress never pays for them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ebr.index.query.slot import MANIFEST_FILE
from ebr.io import sha256_file
from serving.errors import ReleaseUnavailable

if TYPE_CHECKING:
    from ebr.index.live.slot import LiveSlot
    from ebr.index.query.filters import Filter
    from ebr.index.query.retrieve import LiveView
    from ebr.index.query.search import Hits
    from ebr.index.query.slot import Slot
    from ebr.release.record import Release


class ReleaseIndex:
    """One release's slot, opened read-only (the writer, a pipeline, owns its log)."""

    def __init__(self, release: Release, verify: bool, refresh_s: float) -> None:
        from ebr.index.live.slot import open_live

        release_id, slot_dir = release.id, release.paths.slot
        if not (slot_dir / MANIFEST_FILE).is_file():
            raise ReleaseUnavailable(release_id, f"its slot {slot_dir.name} is gone")
        if sha256_file(slot_dir / MANIFEST_FILE) != release.slot.manifest_sha256:
            raise ReleaseUnavailable(release_id, f"slot {slot_dir.name} changed since release")
        self.release_id, self.version = release_id, release.version
        self.live: LiveSlot = open_live(slot_dir, verify=verify, writable=False)
        self.slot = self.live.snapshot
        if self.slot.model_version != self.version:
            raise ReleaseUnavailable(release_id, f"slot holds {self.slot.model_version} vectors")
        self.live.attributes()  # build the filter index now, not on the first filtered query
        self._refresh_s, self._refreshed = refresh_s, time.monotonic()
        self.slot.records(self.slot.job_ids[:1])  # convert the display columns now, once

    def refresh(self) -> None:
        # Upserts and deletes reach the slot's log from a writer process; tail it at most
        # every refresh_s so a query sees acknowledged writes within that delay.
        if time.monotonic() - self._refreshed >= self._refresh_s:
            self.live.refresh()
            self._refreshed = time.monotonic()

    def retrieve(
        self,
        vectors: np.ndarray | None,
        k: int,
        flt: Filter | None,
        text: str | None,
        retrieval: str,
        personalised: bool,
        personal: np.ndarray | None = None,
        place: Any = None,
    ) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
        """Top-k live jobs for one request that pass the filter.

        Args:
            vectors: float32 [1, d] unit request embedding of this release, or None when the
                request has nothing the model understands.
            k: results per request (1..100, validated by the ingress).
            flt: the parsed filter (``ebr.index.query.filters``; the ingress parses the
                request's once), or None.
            text: the query text (term and hybrid retrieval), None without a query.
            retrieval: ``ebr``, ``term`` or ``hybrid`` (``ebr.index.query.search``). What a
                request can use: no text (or a slot without a term index) -> ebr; no vector ->
                term; neither -> no results.
            personalised: the request names a member. With ``personal`` (a signed-in search
                with a query the model understands) ``vectors`` embed the query alone and
                find the candidates, which the member then reorders
                (``ebr.index.query.personal``). Without (the member alone: a query the model
                does not understand), hybrid weights the EBR list (which carries the member)
                ``HYBRID_EBR_WEIGHT_MEMBER`` instead of ``HYBRID_EBR_WEIGHT``.
            personal: float32 [1, d] the member-aware request embedding, or None.
            place: with ``personal``, the member's home (``ebr.index.query.personal.Places``).

        Returns:
            One list of up to k hits (display columns + ``score``), best first, and the plan
            (with ``retrieval``, the one used).
        """
        _, hits, plan = self.candidates(vectors, k, flt, text, retrieval, personalised,
                                        personal, place)  # fmt: skip
        if hits is None:
            return [[]], plan
        found = hits.job_ids[0] >= 0
        ids, scores = hits.job_ids[0][found], hits.scores[0][found].astype(float)
        return [self.rows(hits, ids, scores)], plan

    def candidates(
        self,
        vectors: np.ndarray | None,
        depth: int,
        flt: Filter | None,
        text: str | None,
        retrieval: str,
        personalised: bool,
        personal: np.ndarray | None = None,
        place: Any = None,
    ) -> tuple[LiveView | None, Hits | None, dict[str, Any]]:
        """``retrieve``'s search, ``depth`` deep, before the response rows: (the live view it
        read, its Hits [1, depth], the plan with ``retrieval``); (None, None, plan) when the
        request has nothing to search with. Later stages read the same view."""
        from ebr.index.query.fusion import HYBRID_EBR_WEIGHT, HYBRID_EBR_WEIGHT_MEMBER
        from ebr.index.query.retrieve import retrieve

        self.refresh()
        if text is None or not text.strip() or self.slot.terms is None:
            retrieval = "ebr"  # no query text, or a slot built before term indexes
        elif vectors is None:
            retrieval = "term"
        if vectors is None and retrieval == "ebr":
            return None, None, {"retrieval": None}
        texts = [text] if text is not None else None
        member_led = personalised and personal is None
        weight = HYBRID_EBR_WEIGHT_MEMBER if member_led else HYBRID_EBR_WEIGHT
        view = self.live.view()
        hits = retrieve(view, vectors, depth, flt, texts=texts, retrieval=retrieval,
                        ebr_weight=weight, personal=personal, places=place)  # fmt: skip
        return view, hits, {"retrieval": retrieval, **hits.plan}

    def rows(self, hits: Hits, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """Response rows of ``ids`` with their ``scores`` (``hit_rows``)."""
        return hit_rows(self.slot, hits, ids, scores)

    def info(self) -> dict[str, Any]:
        """The slot this release serves, its log position (``lsn``) and ``log_problems``:
        damage the slot's log replay found (acknowledged writes it could not apply), which
        health reports as degraded."""
        m, stats = self.slot.manifest, self.live.stats()
        return {"release": self.release_id, "slot": self.slot.name,
                "model_version": self.slot.model_version, "item_count": int(m["item_count"]),
                "recall_at_10": m.get("recall_at_10"), "lsn": int(stats["lsn"]),
                "live_items": int(stats["live_items"]),
                "log_problems": [str(p) for p in stats.get("log_problems", [])]}  # fmt: skip


def hit_rows(slot: Slot, hits: Hits, ids: np.ndarray, scores: Any) -> list[dict[str, Any]]:
    """Response rows (display columns + ``score``) of ``ids`` (live items among ``hits``'
    results, any order) with their ``scores``: an upserted item's row is its delta record,
    which the live view converted once (``Hits.delta_rows``), the others the snapshot's."""
    delta_rows = hits.delta_rows
    ids_list, scores_list = ids.tolist(), np.asarray(scores, dtype=float).tolist()
    from_snapshot = iter(slot.records([j for j in ids_list if j not in delta_rows]))
    return [
        {**(delta_rows[j] if j in delta_rows else next(from_snapshot)), "score": score}
        for j, score in zip(ids_list, scores_list, strict=True)
    ]
