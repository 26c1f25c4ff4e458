"""The second-stage ranker: a LightGBM LambdaMART model over ``ebr.rank.features``, saved as
an immutable folder and loaded checked.

    booster = fit(train_data, RankerConfig())
    path = save_ranker(ws, "v1", booster, cfg, evaluation)    # rankers/v1/rank-v1-<stamp>/
    ranker = Ranker.load(path, sha256)                        # as a release pins it
    scores = ranker.score(X); contrib = ranker.contributions(X[:10])

Position bias: the logged grades of shown jobs carry their position's examination; LightGBM's
lambdarank learns a bias term per logged position jointly with the model (``Dataset(position=)``,
regularised by ``lambdarank_position_bias_regularization``), and scoring uses the model alone.
A job retrieval returned but the session never showed sits at position ``UNSHOWN``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ebr.config import RankerConfig, Workspace, check_version
from ebr.io import atomic_directory, atomic_write_json, sha256_file
from ebr.rank.dataset import RankData
from ebr.rank.features import FEATURES

MODEL_FILE = "model.txt"
META_FILE = "ranker.json"
RANKER_ID = re.compile(r"rank-v[0-9]+-[0-9]{8}T[0-9]{12}")


def params(cfg: RankerConfig) -> dict[str, Any]:
    """LightGBM parameters of ``cfg`` (lambdarank: label gains 2^grade - 1, NDCG@10)."""
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "ndcg_eval_at": [10],
        "lambdarank_truncation_level": 20,
        "lambdarank_position_bias_regularization": cfg.position_bias_regularization,
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": 0.9,
        "seed": cfg.seed,
        "deterministic": True,
        "num_threads": 2,
        "verbose": -1,
    }


def fit(data: RankData, cfg: RankerConfig) -> Any:
    """A LightGBM Booster trained on ``data`` (its sessions as query groups, its logged grades
    as labels, its logged positions as the position-bias input)."""
    import lightgbm as lgb

    ds = lgb.Dataset(
        data.X, data.label, group=data.group, position=data.position,
        feature_name=list(FEATURES), free_raw_data=True,
    )  # fmt: skip
    return lgb.train(params(cfg), ds, num_boost_round=cfg.trees)


def new_ranker_id(version: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")
    return f"rank-{check_version(version)}-{stamp}"


def save_ranker(
    ws: Workspace,
    version: str,
    booster: Any,
    cfg: RankerConfig,
    evaluation: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the ranker of model ``version`` as ``rankers/<version>/<id>/`` (model.txt and
    ranker.json with the features, config, evaluation and the model file's sha256),
    atomically; returns the folder."""
    rid = new_ranker_id(version)
    target = ws.rankers / version / rid
    with atomic_directory(target) as tmp:
        booster.save_model(str(tmp / MODEL_FILE))
        meta = {
            "id": rid, "model_version": version, "features": list(FEATURES),
            "config": asdict(cfg), "evaluation": evaluation,
            "model_sha256": sha256_file(tmp / MODEL_FILE),
            "created_at": datetime.now(UTC).isoformat(), **(extra or {}),
        }  # fmt: skip
        atomic_write_json(tmp / META_FILE, meta)
    return target


class Ranker:
    """A loaded ranker: scores candidates, explains scores (one thread: one request)."""

    def __init__(self, path: Path, booster: Any, meta: dict[str, Any]) -> None:
        self.path, self._booster, self.meta = path, booster, meta
        self.id: str = meta["id"]

    @classmethod
    def load(cls, path: Path, model_sha256: str | None = None) -> Ranker:
        """The ranker in ``path``; ValueError when its model file is not ``model_sha256``
        (what a release pinned) or its features are not this code's ``FEATURES``."""
        import lightgbm as lgb

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        digest = sha256_file(path / MODEL_FILE)
        if digest != meta.get("model_sha256") or (model_sha256 and digest != model_sha256):
            raise ValueError(f"ranker {path} model.txt does not match its recorded sha256")
        if meta.get("features") != list(FEATURES):
            raise ValueError(
                f"ranker {path} was trained on features {meta.get('features')}; this code "
                f"computes {list(FEATURES)}"
            )
        booster = lgb.Booster(model_file=str(path / MODEL_FILE))
        return cls(path, booster, meta)

    def score(self, X: np.ndarray) -> np.ndarray:
        """float64 [n]: the ranker's score of each candidate row of ``X`` [n, F]."""
        if not len(X):
            return np.zeros(0)
        return np.asarray(self._booster.predict(X, num_threads=1), dtype=np.float64)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """float64 [n, F + 1]: each feature's additive part of each row's score (TreeSHAP,
        LightGBM ``pred_contrib``), the last column the model's base value."""
        if not len(X):
            return np.zeros((0, len(FEATURES) + 1))
        out = self._booster.predict(X, num_threads=1, pred_contrib=True)
        return np.asarray(out, dtype=np.float64)

    def importance(self) -> dict[str, float]:
        """Total gain of each feature's splits, as a share of all (sums to 1)."""
        gain = np.asarray(self._booster.feature_importance("gain"), dtype=float)
        total = gain.sum() or 1.0
        return {f: float(g / total) for f, g in zip(FEATURES, gain, strict=True)}
