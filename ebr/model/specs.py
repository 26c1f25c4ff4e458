"""Which inputs each tower of a model reads: the one place a ``TowerSpec`` is chosen, by
``ModelConfig.schema``, and passed to the towers (``ebr.model.towers`` looks nothing up).

- ``jobs``: request = query (+ profile, interest, context), item = job (``features``);
- ``interest``: member (headline, skills, engagement history) and job (``features``);
- ``movielens``: user history and movie (``movielens``).
"""

from __future__ import annotations

from ebr.config import ModelConfig
from ebr.model.features import interest_specs, item_spec, request_spec
from ebr.model.towers import TowerSpec, TwoTower


def tower_specs(cfg: ModelConfig) -> tuple[TowerSpec, TowerSpec]:
    """(request spec, item spec) of ``cfg.schema``."""
    if cfg.schema == "movielens":
        from ebr.model.movielens import ITEM_SPEC, USER_SPEC

        return USER_SPEC, ITEM_SPEC
    if cfg.schema == "interest":
        return interest_specs(cfg)
    return request_spec(cfg), item_spec(cfg)


def two_tower(cfg: ModelConfig) -> TwoTower:
    """A fresh two-tower of ``cfg`` with its schema's specs."""
    return TwoTower(cfg, tower_specs(cfg))
