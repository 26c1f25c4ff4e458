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


class _Rows:
    """Values by key in one growing matrix (a key's row never moves; a new value replaces
    the row's content whole, under the writer's lock)."""

    def __init__(self, width: int, dtype: Any) -> None:
        self.row: dict[Any, int] = {}
        self.values = np.zeros((1024, width), dtype=dtype)

    def put(self, keys: list[Any], values: np.ndarray) -> None:
        for key, value in zip(keys, values, strict=True):
            at = self.row.get(key)
            if at is None:
                at = len(self.row)
                if at >= len(self.values):  # grow: readers keep the old matrix meanwhile
                    grown = np.zeros((2 * len(self.values), self.values.shape[1]),
                                     dtype=self.values.dtype)  # fmt: skip
                    grown[: len(self.values)] = self.values
                    self.values = grown
                self.values[at] = value
                self.row[key] = at  # published after its row is written
            else:
                self.values[at] = value

    def rows(self, keys: list[Any]) -> np.ndarray:
        """int64 [n]: each key's row, -1 where none."""
        get = self.row.get
        return np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))


class PopularityCache:
    """What the ranker reads of candidates from Feast (``feature_repo.store.rank_features``):
    job and company popularity counts and the jobs' interest-model embeddings, by key.

    Values are read once and kept; every ``ttl_s`` they are read again in the background
    (``refresh``, set by ``RankStage.warm``: the slot's jobs) while requests keep the values
    they have; a key a request lacks is read in its one Feast call. Thread-safe: writers
    (the release worker, the refresh) hold the lock, readers see whole rows."""

    def __init__(
        self, store: Any, interest_version: str | None = None, ttl_s: float = POPULARITY_TTL_S
    ) -> None:
        self._store, self._ttl, self._iv = store, ttl_s, interest_version
        self._jobs, self._companies = _Rows(3, np.int64), _Rows(3, np.int64)
        self._vectors: _Rows | None = None  # job -> job_interest_<iv> (NaN: none); on 1st read
        self._lock = threading.Lock()
        self._read_at = time.monotonic()
        self.refresh: Callable[[], None] | None = None
        self.reads = 0  # Feast reads made (at most one per request, plus the refreshes)
        self.keys_read = 0

    def get(
        self, job_ids: list[int], companies: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """int64 [n, 6]: the counts of each (job, company), and float32 [n, d] each job's
        interest-model embedding (None without one); one Feast read for the missing."""
        now = time.monotonic()
        if now - self._read_at >= self._ttl and self.refresh is not None:
            self._read_at = now
            self.refresh()  # in the background; the current values serve meanwhile
        comp = [c or "" for c in companies]
        # One binding of each table per pass: a read past POPULARITY_MAX_KEYS replaces them.
        jobs, firms, vectors = self._jobs, self._companies, self._vectors
        jr, cr = jobs.rows(job_ids), firms.rows(comp)
        miss = np.flatnonzero((jr < 0) | (cr < 0))
        for _ in range(2):  # a read that starts over drops this request's kept keys: again
            if not len(miss):
                break
            self.read([job_ids[i] for i in miss], [comp[i] for i in miss])
            jobs, firms, vectors = self._jobs, self._companies, self._vectors
            jr, cr = jobs.rows(job_ids), firms.rows(comp)
            miss = np.flatnonzero((jr < 0) | (cr < 0))
        zero = np.zeros((1, 3), dtype=np.int64)  # dropped by another thread's reset: 0
        counts = np.concatenate(
            [np.where((jr >= 0)[:, None], jobs.values[np.maximum(jr, 0)], zero),
             np.where((cr >= 0)[:, None], firms.values[np.maximum(cr, 0)], zero)], axis=1,
        )  # fmt: skip
        if vectors is None:
            return counts, None
        vr = vectors.rows(job_ids)
        out = vectors.values[np.maximum(vr, 0)]
        out[vr < 0] = np.nan
        return counts, out

    def read(self, job_ids: list[int], companies: list[str]) -> None:
        """One Feast read of ``job_ids`` (and their ``companies``), kept."""
        from feature_repo.store import rank_features

        got, vecs = rank_features(self._store, job_ids, companies, self._iv)
        with self._lock:
            if len(self._jobs.row) + len(self._companies.row) > POPULARITY_MAX_KEYS:
                self._jobs, self._companies = _Rows(3, np.int64), _Rows(3, np.int64)
                self._vectors = None
            self._jobs.put(job_ids, got[:, :3])
            self._companies.put(companies, got[:, 3:])
            if vecs is not None and vecs.shape[1]:
                if self._vectors is None:
                    self._vectors = _Rows(vecs.shape[1], np.float32)
                self._vectors.put(job_ids, vecs)
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
