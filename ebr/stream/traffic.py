"""Live traffic for a workspace: change events drawn from the marketplace generator.

New postings are fresh jobs of the same generator (its occupations, companies and cities; a
seed other than the catalogue's) under ids above the catalogue's; updates change an existing
job's title, remote flag or skills to another generated job's; closes pick open jobs; profile
changes give an existing member another generated member's profile (a new headline, skills,
city). What ``python -m pipelines.streaming.produce --live`` sends and what
``benchmarks.stream`` loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import DataConfig
from ebr.data.marketplace import generate
from ebr.data.tables import PROFILE_FIELDS
from ebr.stream.events import JOB_FIELDS, encode

# The mix of a job board's change stream: mostly edits, some postings and closures.
SHARES = (("job_updated", 0.80), ("job_posted", 0.10), ("job_closed", 0.05),
          ("member_profile_updated", 0.05))  # fmt: skip
UPDATED_FIELDS = ("title", "remote", "skills", "description")


class Traffic:
    """Change events over ``jobs`` and ``members`` (a workspace's tables), reproducible by
    ``seed``."""

    def __init__(self, jobs: pd.DataFrame, members: pd.DataFrame, seed: int = 11,
                 pool: int = 2_000) -> None:  # fmt: skip
        self._rng = np.random.default_rng(seed)
        fresh = generate(DataConfig(n_jobs=pool, seed=seed))
        self._jobs = jobs[list(JOB_FIELDS)].to_dict("records")
        self._open = [i for i, j in enumerate(self._jobs) if j["active"]]
        self._fresh_jobs = fresh.jobs[list(JOB_FIELDS)].to_dict("records")
        self._fresh_members = fresh.members[list(PROFILE_FIELDS)].to_dict("records")
        self._member_ids = members["member_id"].astype(int).tolist()
        self._next_id = int(jobs["job_id"].max()) + 1

    def _pick(self, rows: list[Any]) -> Any:
        return rows[int(self._rng.integers(len(rows)))]

    def event(self, when: datetime) -> dict[str, str]:
        """One stream entry of the SHARES mix, at ``when``."""
        kind = str(self._rng.choice([k for k, _ in SHARES], p=[p for _, p in SHARES]))
        if kind == "job_posted":
            job = self._pick(self._fresh_jobs) | {"job_id": self._next_id, "active": True,
                                                  "posted_at": when}  # fmt: skip
            self._jobs.append(job)
            self._open.append(len(self._jobs) - 1)
            self._next_id += 1
            return encode(kind, job["job_id"], when, job)
        if kind == "job_closed" and self._open:
            job = self._jobs[self._open.pop(int(self._rng.integers(len(self._open))))]
            return encode(kind, job["job_id"], when)
        if kind == "member_profile_updated":
            member = self._pick(self._member_ids)
            return encode(
                kind, member, when, self._pick(self._fresh_members) | {"member_id": member}
            )
        job = self._jobs[self._pick(self._open)]  # an update (also a close with none open)
        field = str(self._rng.choice(UPDATED_FIELDS))
        job[field] = self._pick(self._fresh_jobs)[field] if field != "remote" else not job["remote"]
        return encode("job_updated", job["job_id"], when, job)

    def backlog(self, n: int, span_s: float, end: datetime | None = None) -> list[dict[str, str]]:
        """``n`` events with event times spread evenly over the ``span_s`` seconds to ``end``."""
        end = end or datetime.now(UTC)
        start = end - timedelta(seconds=span_s)
        return [self.event(start + timedelta(seconds=span_s * i / max(n, 1))) for i in range(n)]

    def stream(self) -> Iterator[dict[str, str]]:
        """Events stamped now, forever."""
        while True:
            yield self.event(datetime.now(UTC))
