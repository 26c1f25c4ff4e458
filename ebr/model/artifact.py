"""Versioned model artifacts: one immutable folder per embedding version.

    models/v1/
      request_tower.pt   state_dict (tensors only; loaded with weights_only=True)
      item_tower.pt      state_dict, loadable on its own (Beam's model handler reads it)
      model.json         version, ModelConfig, training settings + metrics, checksums
      vocab.txt          the normalised words of the training texts (``ebr.text``), so
                         serving can tell a query the model knows nothing of

Each tower's state dict carries its own copy of the shared embedding tables, so serving and
batch inference each load only the tower they run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ebr.config import ModelConfig
from ebr.io import atomic_directory, atomic_write_bytes, sha256_file
from ebr.model.specs import tower_specs, two_tower
from ebr.model.towers import ItemTower, RequestTower, TwoTower
from ebr.text import VOCAB_FILE, Vocabulary
from ebr.versions import check_version, model_config, read_meta


def split_towers(model: TwoTower) -> dict[str, dict[str, torch.Tensor]]:
    """Trained two-tower -> the two serving state dicts (pure; tested round trip)."""
    return {
        "request_tower.pt": {k: v.detach().clone() for k, v in model.request.state_dict().items()},
        "item_tower.pt": {k: v.detach().clone() for k, v in model.item.state_dict().items()},
    }


def save_model(
    model: TwoTower,
    models_dir: Path,
    version: str,
    meta: dict[str, Any],
    vocabulary: Vocabulary | None = None,
) -> Path:
    """Write ``models_dir/version`` atomically; an existing version is never overwritten.
    ``vocabulary``: the words of the training texts (``ebr.text.training_vocabulary``)."""
    check_version(version)
    target = models_dir / version
    with atomic_directory(target) as tmp:
        checksums = {}
        for name, state in split_towers(model).items():
            torch.save(state, tmp / name)
            checksums[name] = sha256_file(tmp / name)
        if vocabulary is not None:
            vocabulary.save(tmp / VOCAB_FILE)
            checksums[VOCAB_FILE] = sha256_file(tmp / VOCAB_FILE)
        doc = {
            "version": version,
            "model_config": asdict(model.cfg),
            "created_at": datetime.now(UTC).isoformat(),
            "checksums": checksums,
            **meta,
        }
        atomic_write_bytes(tmp / "model.json", json.dumps(doc, indent=2, default=str).encode())
    return target


def load_vocabulary(path: Path) -> Vocabulary | None:
    """The training vocabulary of the model at ``path`` (checksummed); None for a model saved
    without one."""
    checksum = read_meta(path)["checksums"].get(VOCAB_FILE)
    if checksum is None:
        return None
    if sha256_file(path / VOCAB_FILE) != checksum:
        raise ValueError(f"checksum mismatch for {path / VOCAB_FILE}")
    return Vocabulary.load(path / VOCAB_FILE)


def _load(path: Path, name: str, tower_cls: type[RequestTower] | type[ItemTower]) -> Any:
    meta = read_meta(path)
    if sha256_file(path / name) != meta["checksums"][name]:
        raise ValueError(f"checksum mismatch for {path / name}")
    cfg = model_config(meta)
    request_spec, item_spec = tower_specs(cfg)
    tower = tower_cls(cfg, request_spec if tower_cls is RequestTower else item_spec)
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
    model = two_tower(cfg)
    # The shared tables are identical in both state dicts (co-trained); item's load wins.
    model.request.load_state_dict(request.state_dict())
    model.item.load_state_dict(item.state_dict())
    model.eval()
    return model, cfg, meta
