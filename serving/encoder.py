"""Ray Serve deployment embedding requests: Feast member features + the request tower.

Heavy stacks (torch, feast) are imported inside the replica constructor: the ingress replica
and the driver never pay for them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayTaskError

from ebr.config import Workspace
from ebr.versions import version_paths


class UnknownMember(LookupError):
    """A member id with no profile in the Feast online store (HTTP 404)."""

    def __init__(self, member_id: int) -> None:
        # args holds only the id so the error pickles across the handle call unchanged.
        super().__init__(member_id)
        self.member_id = member_id

    def __str__(self) -> str:
        return f"unknown member_id {self.member_id}"


def unknown_member(exc: BaseException) -> UnknownMember | None:
    """The ``UnknownMember`` inside ``exc``, or None.

    A replica's exception reaches the caller wrapped in ``RayTaskError``; the original is its
    ``cause``. Walk the chain rather than rely on Ray's dual-class wrapper keeping attributes.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # bounded: wrappers never nest deeper than a few levels
        if seen is None:
            return None
        if isinstance(seen, UnknownMember) and not isinstance(seen, RayTaskError):
            return seen
        seen = seen.cause if isinstance(seen, RayTaskError) else seen.__cause__
    return None


def request_tower_dir(ws: Workspace, model_version: str) -> Path:
    """``models/<version>`` for the slot's version; fail loudly if that model is not there.

    Serving another version's request tower against this slot would return plausible-looking
    but meaningless neighbours, so there is no fallback.
    """
    path = version_paths(ws, model_version).model
    if not (path / "request_tower.pt").is_file():
        raise FileNotFoundError(
            f"the served slot was built with model {model_version!r} but {path} has no "
            "request_tower.pt; requests must be embedded by the same model version as the slot"
        )
    return path


@serve.deployment
class RequestEncoder:
    """Embeds (query, member) requests with the request tower of one model version."""

    def __init__(self, workspace: str, model_version: str) -> None:
        import torch

        from ebr.model.artifact import load_request_tower, load_vocabulary
        from ebr.versions import verified_interest
        from feature_repo.store import member_profiles, open_store

        # A replica gets a fraction of a core; intra-op threads would only contend.
        torch.set_num_threads(1)
        ws = Workspace(Path(workspace))
        self._tower, self._cfg, meta = load_request_tower(request_tower_dir(ws, model_version))
        if meta.get("version") != model_version:
            raise ValueError(
                f"{request_tower_dir(ws, model_version)} says version {meta.get('version')!r}, "
                f"expected {model_version!r}"
            )
        self._version = model_version
        # Words the model trained on (None for a model saved without its vocabulary).
        self._vocab = load_vocabulary(request_tower_dir(ws, model_version))
        # The member-interest version this model was co-trained with; refuse any other.
        self._interest = verified_interest(ws, meta)
        self._store = open_store(ws.feature_repo)
        # Warm up: the first forward pass and the first online read are ~0.5 s (lazy init);
        # pay it here, before the replica reports ready, not on the first user's request.
        self.encode("warm up", None)
        member_profiles(self._store, [1])

    def _profile(self, member_id: int) -> dict[str, Any]:
        """Profile + looked-up member-interest embedding (None until the batch run embeds a
        new member: the tower then sees has_interest = 0, as in training)."""
        from feature_repo.store import member_interest, member_profiles

        profile = member_profiles(self._store, [member_id]).get(member_id)
        if profile is None:
            raise UnknownMember(member_id)
        if self._interest is not None:
            vec = member_interest(self._store, [member_id], self._interest).get(member_id)
            profile["interest"] = vec
        return profile

    def understand(self, query: str | None) -> dict[str, Any]:
        """``query_understood`` (None without a query) and the ``unknown_words`` of ``query``.

        A query none of whose normalised words the model saw in training (emoji, another
        script, a word not in any job) would embed as untrained hash buckets: a fixed,
        arbitrary point. Better to say so than to return neighbours of that point.
        """
        from ebr.text import words

        if query is None:
            return {"query_understood": None, "unknown_words": []}
        if self._vocab is None:
            return {"query_understood": bool(words(query)), "unknown_words": []}
        known, unknown = self._vocab.split(query)
        return {"query_understood": bool(known), "unknown_words": unknown[:20]}

    def encode_request(
        self, query: str | None, member_id: int | None
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """(float32 [1, dim] request embedding or None, ``understand(query)``).

        A query the model does not understand is dropped: the member alone is embedded, or,
        for an anonymous search, there is nothing to search with (None)."""
        info = self.understand(query)
        if info["query_understood"] is False:
            query = None
        if query is None and member_id is None:
            return None, info
        return self.encode(query, member_id), info

    def encode(self, query: str | None, member_id: int | None) -> np.ndarray:
        """float32 [1, dim] unit embedding of one request (now as its time context); raises
        ``UnknownMember``."""
        from ebr.model.infer import encode_requests

        member = None if member_id is None else self._profile(member_id)
        now = datetime.now(UTC)
        return encode_requests(self._tower, [query], [member], self._cfg, whens=[now])

    def member_embedding(self, member_id: int) -> np.ndarray:
        """float32 [1, dim] JYMBII embedding: the batch one from Feast, else the profile's.

        A member who joined after the last batch run has a profile but no batch embedding yet;
        encoding the profile online is what the batch job would have produced.
        """
        from feature_repo.store import member_embeddings

        vec = member_embeddings(self._store, [member_id], self._version).get(member_id)
        if vec is None:
            return self.encode(None, member_id)
        vec = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        if vec.shape[1] != self._cfg.dim:
            raise ValueError(
                f"member_embedding_{self._version} for member {member_id} has dim "
                f"{vec.shape[1]}, model {self._version} has dim {self._cfg.dim}"
            )
        return vec

    def info(self) -> dict[str, Any]:
        return {
            "model_version": self._version,
            "member_interest_version": self._interest,
            "dim": self._cfg.dim,
        }
