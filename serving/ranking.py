"""A loaded release's stages after retrieval: its ranker (``ebr.rank``) and what the ranker
reads from Feast per candidate, cached: popularity counts and the job's embedding by the
member-interest model (``job_interest_<iv>``, both written by the batch pipeline).

The ranker orders a request's candidates when the release pins one and the request names a
member (signed-in searches and JYMBII feeds: the log's sessions it was trained on all have
one); anonymous searches keep the retrieval order. Popularity changes once a day (the batch
pipeline publishes it), so each job's and company's values are kept ``POPULARITY_TTL_S`` and
a request reads the ones it lacks in one Feast call (none once warm): an online read of 200
candidates costs ~16 ms with the sqlite store, five times the whole ranking stage.

Heavy stacks (lightgbm) are imported when a release with a ranker loads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.errors import ReleaseUnavailable

if TYPE_CHECKING:
    from ebr.rank.candidates import Candidates
    from ebr.rank.features import RankRequest
    from ebr.release.record import Release

log = logging.getLogger(__name__)
POPULARITY_TTL_S = 3600.0  # they change once a day (the batch); a replica re-reads them hourly
POPULARITY_MAX_KEYS = 500_000  # bounded memory: the cache starts over past this many keys


class PopularityCache:
    """What the ranker reads of candidates from Feast (``feature_repo.store.rank_features``):
    job and company popularity counts and the jobs' interest-model embeddings, by key.

    Values are read once and kept; every ``ttl_s`` they are read again in the background
    (``refresh``, set by ``RankStage.warm``: the slot's jobs) while requests keep the values
    they have; a key a request lacks is read in its one Feast call. Thread-safe for one
    writer per key set (the release worker and the refresh replace items whole)."""

    def __init__(
        self, store: Any, interest_version: str | None = None, ttl_s: float = POPULARITY_TTL_S
    ) -> None:
        self._store, self._ttl, self._iv = store, ttl_s, interest_version
        self._vectors: dict[int, np.ndarray] = {}  # job -> job_interest_<iv> (NaN: none)
        self._jobs: dict[int, tuple[int, ...]] = {}  # job -> its counts
        self._companies: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()
        self._read_at = time.monotonic()
        self.refresh: Callable[[], None] | None = None
        self.reads = 0  # Feast reads made (at most one per request, plus the refreshes)
        self.keys_read = 0

    def get(
        self, job_ids: list[int], companies: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """int64 [n, 6]: the counts of each (job, company), and float32 [n, d] each job's
        interest-model embedding (None without an interest version); one Feast read for the
        missing."""
        now = time.monotonic()
        if now - self._read_at >= self._ttl and self.refresh is not None:
            self._read_at = now
            self.refresh()  # in the background; the current values serve meanwhile
        comp = [c or "" for c in companies]
        jobs, firms = self._jobs, self._companies
        miss = [i for i, (j, c) in enumerate(zip(job_ids, comp, strict=True))
                if j not in jobs or c not in firms]  # fmt: skip
        if miss:
            self.read([job_ids[i] for i in miss], [comp[i] for i in miss])
        zero = (0, 0, 0)  # cleared meanwhile by a read past POPULARITY_MAX_KEYS: counted as 0
        rows = [jobs.get(j, zero) + firms.get(c, zero) for j, c in zip(job_ids, comp, strict=True)]
        counts = np.array(rows, dtype=np.int64).reshape(len(job_ids), 6)
        if self._iv is None or not self._vectors:
            return counts, None
        dim = len(next(iter(self._vectors.values())))
        none = np.full(dim, np.nan, dtype=np.float32)
        return counts, np.stack([self._vectors.get(j, none) for j in job_ids])

    def read(self, job_ids: list[int], companies: list[str]) -> None:
        """One Feast read of ``job_ids`` (and their ``companies``), kept."""
        from feature_repo.store import rank_features

        got, vecs = rank_features(self._store, job_ids, companies, self._iv)
        with self._lock:
            if len(self._jobs) + len(self._companies) > POPULARITY_MAX_KEYS:
                self._jobs.clear()
                self._companies.clear()
                self._vectors.clear()
            for row, (j, c) in enumerate(zip(job_ids, companies, strict=True)):
                self._jobs[j] = tuple(got[row, :3].tolist())
                self._companies[c] = tuple(got[row, 3:].tolist())
                if vecs is not None and vecs.shape[1]:
                    self._vectors[j] = vecs[row]
            self.reads += 1
            self.keys_read += len(job_ids)


class RankStage:
    """One release's ranker (or none) and its popularity reads."""

    def __init__(self, release: Release, store: Any) -> None:
        from ebr.rank.model import Ranker

        self.pin = release.ranking
        self.ranker = None
        if self.pin.ranker is not None:
            try:
                self.ranker = Ranker.load(self.pin.ranker.path, self.pin.ranker.model_sha256)
            except (OSError, ValueError) as err:
                raise ReleaseUnavailable(release.id, f"its ranker: {err}") from None
        self.popularity = PopularityCache(store, release.interest_version)

    def warm(self, job_ids: np.ndarray, companies: np.ndarray, chunk: int = 2000) -> None:
        """Read what the ranker reads of the slot's jobs in the background, ``chunk`` keys a
        Feast read, now and every ``POPULARITY_TTL_S``, so requests find it kept (a miss still
        reads, once per request)."""
        ids = [int(j) for j in job_ids]
        comps = [c if isinstance(c, str) else "" for c in companies]

        def run() -> None:
            for a in range(0, len(ids), chunk):
                try:
                    self.popularity.read(ids[a : a + chunk], comps[a : a + chunk])
                except Exception as err:  # noqa: BLE001 - requests read what they miss
                    log.warning("ranking features warm-up stopped: %s", err)
                    return

        def start() -> None:
            threading.Thread(target=run, name="ranking-features-read", daemon=True).start()

        self.popularity.refresh = start
        start()

    def ranks(self, signed_in: bool) -> bool:
        """Whether this stage orders a request (a ranker, and a member to rank for)."""
        return self.ranker is not None and signed_in

    def features(self, request: RankRequest, cands: Candidates) -> np.ndarray:
        """The ranker's features of ``cands`` (one popularity read at most)."""
        from ebr.rank.features import feature_matrix

        companies = [c if isinstance(c, str) else None for c in cands.cols.company]
        pop, interest = self.popularity.get(cands.job_ids.tolist(), companies)
        return feature_matrix(request, cands, pop, interest)

    def info(self) -> dict[str, Any]:
        return {"ranker": None if self.ranker is None else self.ranker.id,
                "depth": self.pin.depth, "max_per_company": self.pin.max_per_company,
                "max_per_city": self.pin.max_per_city,
                "popularity_reads": self.popularity.reads}  # fmt: skip
