"""Model: featurizers, towers, loss, training signal, artifact round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebr.config import DataConfig, ModelConfig
from ebr.data.marketplace import generate
from ebr.model.artifact import check_version, load_item_tower, load_request_tower, save_model
from ebr.model.features import job_tensors, request_tensors, text_ids
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.specs import two_tower
from ebr.model.towers import in_batch_softmax_loss

CFG = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)


def test_text_ids_are_stable_padded_and_truncated() -> None:
    a = text_ids("Senior nurse in Berlin", 8, 4096)
    assert a.shape == (8,) and a.dtype == np.int64
    assert (a[:7] > 0).all() and a[7] == 0  # 4 unigrams + 3 bigrams
    np.testing.assert_array_equal(a, text_ids("senior NURSE in berlin", 8, 4096))
    assert (text_ids("w " * 100, 8, 4096) > 0).all()
    assert not text_ids(None, 8, 4096).any()


def test_towers_output_unit_vectors_of_the_configured_dim() -> None:
    mp = generate(DataConfig(n_jobs=100))
    model = two_tower(CFG)
    jobs = encode_jobs(model.item, mp.jobs.to_dict("records")[:10], CFG)
    reqs = encode_requests(
        model.request, ["nurse", None], [None, mp.members.iloc[0].to_dict()], CFG
    )
    for v in (jobs, reqs):
        assert v.shape[1] == 16
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert job_tensors(mp.jobs.iloc[0].to_dict(), CFG)["body"].shape == (CFG.max_tokens,)
    assert request_tensors(None, None, CFG)["nums"].sum() == 0


def test_in_batch_loss_prefers_aligned_pairs_and_masks_duplicate_items() -> None:
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    aligned = in_batch_softmax_loss(x, x, torch.arange(8), 0.1)
    shuffled = in_batch_softmax_loss(x, x.roll(1, 0), torch.arange(8), 0.1)
    assert aligned < shuffled
    # Two requests engaged the same job: neither is penalised for matching the other's item.
    items = torch.cat([x[:1], x[:1]])
    dup = in_batch_softmax_loss(items, items, torch.tensor([5, 5]), 0.1)
    assert dup.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        in_batch_softmax_loss(x, x[:4], torch.arange(8), 0.1)


def test_model_artifact_round_trips_and_detects_tampering(tmp_path) -> None:
    mp = generate(DataConfig(n_jobs=300, seed=5))
    model = two_tower(CFG)
    path = save_model(model, tmp_path, "v3", {"metrics": {}})
    req, cfg, meta = load_request_tower(path)
    item, _, _ = load_item_tower(path)
    assert cfg == CFG and meta["version"] == "v3"
    recs = mp.jobs.to_dict("records")[:5]
    np.testing.assert_allclose(
        encode_jobs(item, recs, cfg), encode_jobs(model.item, recs, CFG), atol=1e-6
    )
    with pytest.raises(FileExistsError):
        save_model(model, tmp_path, "v3", {})
    (path / "item_tower.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="checksum"):
        load_item_tower(path)


def test_versions_are_validated() -> None:
    assert check_version("v12") == "v12"
    for bad in ("1", "v", "v1/../x", "latest"):
        with pytest.raises(ValueError, match="version"):
            check_version(bad)


def test_recall_metric() -> None:
    from ebr.metrics import exact_topk, recall_at_k

    ranked = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(ranked, [{1, 9}, {6}], 3) == pytest.approx(0.75)
    items = np.eye(4, dtype=np.float32)
    ids = np.array([10, 11, 12, 13])
    assert exact_topk(items, items[[2]], 1, ids)[1].tolist() == [[12]]
