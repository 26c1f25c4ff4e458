"""Errors a replica raises on purpose, each mapped to an HTTP answer by the ingress
(``serving.metrics.answered``; a release the caller named and one it was routed to differ).

A replica's exception reaches the caller wrapped in ``RayTaskError`` (its ``cause`` is the
original); ``raised`` walks that chain. Each error keeps only strings and ints in ``args`` so
it pickles across the handle call unchanged.
"""

from __future__ import annotations

from typing import TypeVar

from ray.exceptions import RayTaskError

E = TypeVar("E", bound=BaseException)


class UnknownMember(LookupError):
    """A member id with no profile in the Feast online store (HTTP 404)."""

    def __init__(self, member_id: int) -> None:
        super().__init__(member_id)
        self.member_id = member_id

    def __str__(self) -> str:
        return f"unknown member_id {self.member_id}"


class ReleaseUnavailable(RuntimeError):
    """A release a request was routed to cannot serve: its record, tower files, co-trained
    member-interest model or slot no longer match, or its record was modified (HTTP 503 for a
    routed request, 409 for an admin call naming it; counted; never a wrong answer)."""

    def __init__(self, release_id: str, reason: str) -> None:
        super().__init__(release_id, reason)
        self.release_id, self.reason = release_id, reason

    def __str__(self) -> str:
        return f"release {self.release_id} cannot serve: {self.reason}"


class UnknownRelease(LookupError):
    """A release id with no record in the workspace (HTTP 404 where the caller named it, an
    admin call; 503 where a request was routed to it, since the request named no release)."""

    def __init__(self, release_id: str, reason: str) -> None:
        super().__init__(release_id, reason)
        self.release_id, self.reason = release_id, reason

    def __str__(self) -> str:
        return f"unknown release {self.release_id}: {self.reason}"


class ReleaseMismatch(RuntimeError):
    """A request embedding of one release reached another release's index (HTTP 500,
    counted): it would return plausible-looking but meaningless neighbours."""

    def __init__(self, vector_release: str, index_release: str) -> None:
        super().__init__(vector_release, index_release)
        self.vector_release, self.index_release = vector_release, index_release

    def __str__(self) -> str:
        return (
            f"refused: a request embedding of release {self.vector_release} cannot search "
            f"release {self.index_release}'s index (another item tower produced it)"
        )


def raised(exc: BaseException, kind: type[E]) -> E | None:
    """The ``kind`` error inside ``exc`` (itself, or the cause of a Ray wrapper), or None."""
    seen: BaseException | None = exc
    for _ in range(8):  # bounded: wrappers never nest deeper than a few levels
        if seen is None:
            return None
        if isinstance(seen, kind) and not isinstance(seen, RayTaskError):
            return seen
        seen = seen.cause if isinstance(seen, RayTaskError) else seen.__cause__
    return None
