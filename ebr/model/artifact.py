"""Versioned model artifacts: one immutable folder per embedding version.

    models/v1/
      request_tower.pt   state_dict (tensors only; loaded with weights_only=True)
      item_tower.pt      state_dict, loadable on its own (Beam's model handler reads it)
      model.json         version, ModelConfig, training settings + metrics, checksums

Each tower's state dict carries its own copy of the shared embedding tables, so serving and
batch inference each load only the tower they run.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ebr.config import ModelConfig
from ebr.io import atomic_directory, atomic_write_bytes, sha256_file
from ebr.model.towers import ItemTower, RequestTower, TwoTower

VERSION_RE = re.compile(r"^v[0-9]{1,6}$")


def check_version(version: str) -> str:
    """Embedding versions name Feast tables and slots: 'v1', 'v2', ..."""
    if not VERSION_RE.match(version):
        raise ValueError(f"model version must look like 'v1', 'v2', ...; got {version!r}")
    return version


def split_towers(model: TwoTower) -> dict[str, dict[str, torch.Tensor]]:
    """Trained two-tower -> the two serving state dicts (pure; tested round trip)."""
    return {
        "request_tower.pt": {k: v.detach().clone() for k, v in model.request.state_dict().items()},
        "item_tower.pt": {k: v.detach().clone() for k, v in model.item.state_dict().items()},
    }


def save_model(model: TwoTower, models_dir: Path, version: str, meta: dict[str, Any]) -> Path:
    """Write ``models_dir/version`` atomically; an existing version is never overwritten."""
    check_version(version)
    target = models_dir / version
    with atomic_directory(target) as tmp:
        checksums = {}
        for name, state in split_towers(model).items():
            torch.save(state, tmp / name)
            checksums[name] = sha256_file(tmp / name)
        doc = {
            "version": version,
            "model_config": asdict(model.cfg),
            "created_at": datetime.now(UTC).isoformat(),
            "checksums": checksums,
            **meta,
        }
        atomic_write_bytes(tmp / "model.json", json.dumps(doc, indent=2, default=str).encode())
    return target


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no model artifact at {path} (model.json missing)")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    return meta


def _load(path: Path, name: str, tower_cls: type[RequestTower] | type[ItemTower]) -> Any:
    meta = read_meta(path)
    if sha256_file(path / name) != meta["checksums"][name]:
        raise ValueError(f"checksum mismatch for {path / name}")
    cfg = ModelConfig(**meta["model_config"])
    tower = tower_cls(cfg)
    tower.load_state_dict(torch.load(path / name, map_location="cpu", weights_only=True))
    tower.eval()
    return tower, cfg, meta


def load_request_tower(path: Path) -> tuple[RequestTower, ModelConfig, dict[str, Any]]:
    return _load(path, "request_tower.pt", RequestTower)  # type: ignore[no-any-return]


def load_item_tower(path: Path) -> tuple[ItemTower, ModelConfig, dict[str, Any]]:
    return _load(path, "item_tower.pt", ItemTower)  # type: ignore[no-any-return]


def load_two_tower(path: Path) -> tuple[TwoTower, ModelConfig, dict[str, Any]]:
    """Both towers of a saved version in one module (for offline evaluation)."""
    request, cfg, meta = load_request_tower(path)
    item, _, _ = load_item_tower(path)
    model = TwoTower(cfg)
    # The shared tables are identical in both state dicts (co-trained); item's load wins.
    model.request.load_state_dict(request.state_dict())
    model.item.load_state_dict(item.state_dict())
    model.eval()
    return model, cfg, meta
