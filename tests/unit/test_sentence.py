"""The optional frozen MiniLM text input: packaged weights, offline, wired into both towers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ebr.config import DataConfig, ModelConfig, TrainConfig
from ebr.data.marketplace import generate
from ebr.model.artifact import load_two_tower, save_model
from ebr.model.features import item_spec, job_tensors, request_spec, request_tensors
from ebr.model.infer import encode_jobs
from ebr.model.sentence import MINILM_DIM, sentence_vectors
from ebr.model.train import train

CFG = ModelConfig(
    hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16,
    text_encoder="hashed+minilm",
)  # fmt: skip


def test_sentence_vectors_are_unit_semantic_and_zero_for_missing_text() -> None:
    v = sentence_vectors(["registered nurse", "nurse", "software engineer", None, ""])
    assert v.shape == (5, MINILM_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # a pretrained encoder knows nurses are nurses
    assert not v[3:].any()
    again = sentence_vectors(["nurse"])  # memoised: the same vector
    np.testing.assert_array_equal(again[0], v[1])


def test_minilm_widens_both_towers_and_round_trips(tmp_path) -> None:
    base = replace(CFG, text_encoder="hashed")
    assert request_spec(CFG).n_nums == request_spec(base).n_nums + MINILM_DIM
    assert item_spec(CFG).n_nums == item_spec(base).n_nums + MINILM_DIM
    mp = generate(DataConfig(n_jobs=200, seed=3))
    job = mp.jobs.iloc[0].to_dict()
    np.testing.assert_allclose(
        job_tensors(job, CFG)["nums"][-MINILM_DIM:], sentence_vectors([job["title"]])[0]
    )
    assert request_tensors("nurse", None, CFG)["nums"][-MINILM_DIM:].any()
    model, _ = train(mp.jobs, mp.members, mp.impressions, CFG, TrainConfig(epochs=1, batch_size=32))
    path = save_model(model, tmp_path, "v1", {})
    loaded, cfg, _ = load_two_tower(path)
    assert cfg.text_encoder == "hashed+minilm"
    recs = mp.jobs.to_dict("records")[:5]
    np.testing.assert_allclose(
        encode_jobs(loaded.item, recs, cfg), encode_jobs(model.item, recs, CFG), atol=1e-6
    )
