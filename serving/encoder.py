"""A release's request encoder: Feast member features (through the release's own
``FeatureService``) + the release's request tower (``serving.release_server`` holds one per
release).

Loading checks the release end to end: the record's checksum, the tower files against it, and
that the member-interest model on disk is the one the tower was co-trained with; a release that
fails is refused (``ReleaseUnavailable``), never served with another interest model.

Heavy stacks (torch, feast) are imported when a release loads: the ingress never pays for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebr.config import Workspace
from ebr.io import sha256_file
from ebr.versions import feature_names, version_paths
from serving.errors import ReleaseUnavailable, UnknownMember

if TYPE_CHECKING:
    from feast import FeatureStore

    from ebr.release.record import Release


def request_tower_dir(ws: Workspace, model_version: str) -> Path:
    """``models/<version>``; fail loudly if that model's request tower is not there.

    Serving another version's request tower against a slot would return plausible-looking
    but meaningless neighbours, so there is no fallback.
    """
    path = version_paths(ws, model_version).model
    if not (path / "request_tower.pt").is_file():
        raise FileNotFoundError(
            f"model {model_version!r} has no request tower at {path}; requests must be "
            "embedded by the same model version as the slot"
        )
    return path


@dataclass(frozen=True)
class Encoded:
    """One request's embeddings (``ReleaseEncoder.request``): ``vec`` float32 [1, dim] what
    retrieval searches with; ``personal`` [1, dim] the member-aware embedding that reorders a
    query-led search (None otherwise) and ``place`` the member's home; ``heads`` [T, dim] the
    request per task head; ``query_vec`` [dim] the query embedded alone (None: not searched
    by it); ``profile`` the member's Feast profile (None: anonymous)."""

    vec: np.ndarray
    personal: np.ndarray | None
    place: Any
    heads: np.ndarray
    query_vec: np.ndarray | None
    profile: dict[str, Any] | None


class ReleaseEncoder:
    """One release's request tower, vocabulary and Feast feature service."""

    def __init__(self, ws: Workspace, store: FeatureStore, release: Release) -> None:
        import torch

        from ebr.model.artifact import load_request_tower, load_vocabulary
        from ebr.versions import LineageError, read_meta, verified_interest

        release_id, version = release.id, release.version
        folder = request_tower_dir(ws, version)

        def refuse(reason: str) -> ReleaseUnavailable:
            return ReleaseUnavailable(release_id, reason)

        if sha256_file(folder / "model.json") != release.model.model_json_sha256:
            raise refuse(f"{folder}/model.json changed since the release was recorded")
        for name, digest in release.model.checksums.items():
            if sha256_file(folder / name) != digest:
                raise refuse(f"{folder / name} does not match the release record")
        meta = read_meta(folder)
        try:
            interest = verified_interest(ws, meta)  # the co-trained model, files checked
        except LineageError as err:
            raise refuse(str(err)) from None
        recorded = release.interest_version
        if interest != recorded:
            raise refuse(
                f"its request tower was co-trained with member interest {interest}, but the "
                f"release names {recorded}"
            )
        torch.set_num_threads(1)  # a replica gets a fraction of a core
        self.release_id, self.version, self.interest = release_id, version, interest
        self._tower, self._cfg, _ = load_request_tower(folder)
        tasks = self._cfg.tasks
        self._serve = tasks.index(self._cfg.serve_task) if tasks else 0  # the serving head
        self._vocab = load_vocabulary(folder)  # None for a model saved without one
        self._names = feature_names(version, interest)
        if self._names.request_service != release.features.request_service:
            raise refuse(f"the record names feature service {release.features.request_service}")
        self._store = store
        # Resolved once: by name, every read would parse it from the registry again (~7 ms).
        self._service = store.get_feature_service(self._names.request_service)
        self.encode("warm up", None)  # the first forward pass is slow (lazy init): pay it here

    def _profile(self, member_id: int) -> dict[str, Any]:
        """Profile + the release's member embedding and co-trained member-interest embedding
        (None until a batch run embeds the member: the tower then sees has_interest = 0)."""
        from feature_repo.store import request_features

        views = self._names.request_views()
        got = request_features(self._store, self._service, [member_id], views)
        profile = got.get(member_id)
        if profile is None:
            raise UnknownMember(member_id)
        return profile

    def understand(self, query: str | None) -> dict[str, Any]:
        """``query_understood`` (None without a query) and the ``unknown_words`` of ``query``:
        a query none of whose words the model saw in training would embed as untrained hash
        buckets (an arbitrary point), so it is reported instead."""
        from ebr.text import words

        if query is None:
            return {"query_understood": None, "unknown_words": []}
        if self._vocab is None:
            return {"query_understood": bool(words(query)), "unknown_words": []}
        known, unknown = self._vocab.split(query)
        return {"query_understood": bool(known), "unknown_words": unknown[:20]}

    def encode(self, query: str | None, member_id: int | None) -> np.ndarray:
        """float32 [1, dim] unit embedding of one request (now as its time context)."""
        return self.request(query, member_id).vec  # type: ignore[return-value]

    def request(self, query: str | None, member_id: int | None, led: bool = False) -> Encoded:
        """One request's embeddings, one forward pass (every task head; ``Encoded``).

        ``led`` (a signed-in search with a query the towers know): the query alone finds the
        candidates (``vec``) and the query with the member reorders them (``personal``, and
        ``place``, the member's home). Otherwise ``vec`` embeds what there is (query and/or
        member) and ``personal`` is None. ``heads`` hold the request with everything it has
        (the member-aware one when signed in), per task head: the ranker's cosines."""
        from ebr.index.query.personal import Places
        from ebr.model.infer import encode_request_heads

        profile = None if member_id is None else self._profile(member_id)
        member = None
        if profile is not None:
            member = {**profile, "interest": profile.get("interest") if self.interest else None}
        now = datetime.now(UTC)
        if led:
            if query is None or profile is None:
                raise ValueError("a query-led request needs a query and a member")
            both = encode_request_heads(self._tower, [query, query], [None, member], self._cfg,
                                        whens=[now, now])  # fmt: skip
            vec, personal = both[self._serve, :1], both[self._serve, 1:]
            return Encoded(vec, personal, Places.of([profile]), both[:, 1], vec[0], profile)
        heads = encode_request_heads(self._tower, [query], [member], self._cfg, whens=[now])
        vec = heads[self._serve]
        query_vec = vec[0] if query is not None and member is None else None
        return Encoded(vec, None, None, heads[:, 0], query_vec, profile)

    def feed(self, member_id: int) -> Encoded:
        """A ranked feed's request, one profile read: ``vec`` the batch member embedding
        (``member_embedding``'s rule), ``heads`` the member's request per task head (from the
        profile, now) and the profile."""
        got = self.request(None, member_id)
        assert got.profile is not None, "a member's request has its profile"
        batch = self._batch_vector(member_id, got.profile)
        return got if batch is None else Encoded(batch, None, None, got.heads, None, got.profile)

    def member_embedding(self, member_id: int) -> np.ndarray:
        """float32 [1, dim] JYMBII embedding: the batch one from Feast, else the profile's (a
        member who joined after the last batch run)."""
        vec = self._batch_vector(member_id, self._profile(member_id))
        return self.encode(None, member_id) if vec is None else vec

    def _batch_vector(self, member_id: int, profile: dict[str, Any]) -> np.ndarray | None:
        """float32 [1, dim]: the profile's batch member embedding, None before a batch run."""
        vec = profile.get("member_embedding")
        if vec is None:
            return None
        vec = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        if vec.shape[1] != self._cfg.dim:
            raise ValueError(
                f"{self._names.member_view} for member {member_id} has dim {vec.shape[1]}, "
                f"model {self.version} has dim {self._cfg.dim}"
            )
        return vec

    def info(self) -> dict[str, Any]:
        return {"release": self.release_id, "model_version": self.version,
                "member_interest_version": self.interest, "dim": self._cfg.dim}  # fmt: skip
