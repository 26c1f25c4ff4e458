"""The Beam batch-inference pipeline on a real TestPipeline (local in-process runner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from ebr.config import DataConfig, ModelConfig, TrainConfig, Workspace
from ebr.data.marketplace import write_marketplace
from ebr.model.artifact import load_item_tower, load_request_tower, save_model
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.train import train

pytestmark = pytest.mark.slow  # the real stack (Flyte, Beam, Feast) end to end

CFG = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    write_marketplace(DataConfig(n_jobs=300, seed=4), ws.data)
    tables = {
        n: pd.read_parquet(ws.data / f"{n}.parquet") for n in ("jobs", "members", "impressions")
    }
    model, _ = train(
        tables["jobs"],
        tables["members"],
        tables["impressions"],
        CFG,
        TrainConfig(epochs=1, batch_size=32),
    )
    save_model(model, ws.models, "v1", {})
    return ws


def _test_pipeline() -> TestPipeline:
    return TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))


def test_pipeline_embeds_every_job_and_member_like_the_torch_loop(ws: Workspace) -> None:
    from pipelines.batch.embed import run

    out = run(
        ["--workspace", str(ws.root), "--version", "v1", "--batch-size", "64"],
        test_pipeline=_test_pipeline(),
    )
    assert out["jobs"] == 300 and out["members"] == 60
    assert out["dead_letter"] == {} and out["dead_letter_total"] == 0  # clean data: no refusals
    assert (ws.embeddings / "v1" / "deadletter.jsonl").read_text() == ""
    jobs_out = pd.read_parquet(ws.embeddings / "v1" / "jobs.parquet").sort_values("job_id")
    assert (jobs_out["model_version"] == "v1").all()
    assert jobs_out["event_timestamp"].notna().all()

    # Same vectors as the plain torch loop (no train/serve skew through Beam).
    jobs = pd.read_parquet(ws.data / "jobs.parquet").sort_values("job_id")
    item, cfg, _ = load_item_tower(ws.models / "v1")
    expected = encode_jobs(item, jobs.to_dict("records"), cfg)
    np.testing.assert_allclose(np.stack(jobs_out["embedding"].to_numpy()), expected, atol=1e-5)

    members = pd.read_parquet(ws.data / "members.parquet").sort_values("member_id")
    mem_out = pd.read_parquet(ws.embeddings / "v1" / "members.parquet").sort_values("member_id")
    req, cfg, _ = load_request_tower(ws.models / "v1")
    exp_m = encode_requests(req, [None] * len(members), members.to_dict("records"), cfg)
    np.testing.assert_allclose(np.stack(mem_out["embedding"].to_numpy()), exp_m, atol=1e-5)


def test_embed_transform_keys_rows_by_id(ws: Workspace) -> None:
    import apache_beam as beam

    from pipelines.towers import EmbedRecords

    jobs = pd.read_parquet(ws.data / "jobs.parquet").head(7).to_dict("records")
    with _test_pipeline() as p:
        out = p | beam.Create(jobs) | EmbedRecords("jobs", ws.models / "v1", batch_size=4)
        ids = out.records | beam.Map(
            lambda r: (r["job_id"], r["model_version"], len(r["embedding"]))
        )
        assert_that(ids, equal_to([(int(j["job_id"]), "v1", 16) for j in jobs]))


def test_bad_arguments_fail_clearly(ws: Workspace) -> None:
    from pipelines.batch.embed import run

    with pytest.raises(ValueError, match="version"):
        run(["--workspace", str(ws.root), "--version", "latest"])
    with pytest.raises(FileNotFoundError, match="model.json"):
        run(["--workspace", str(ws.root), "--version", "v9"])


@pytest.fixture(scope="module")
def composite_ws(tmp_path_factory) -> Workspace:
    """A member-interest model v2 and a composite model v1 co-trained with it."""
    from ebr.model.interest import train_interest
    from ebr.model.train import train_with_interest

    ws = Workspace(tmp_path_factory.mktemp("composite"))
    write_marketplace(DataConfig(n_jobs=300, seed=4), ws.data)
    tables = [pd.read_parquet(ws.data / f"{n}.parquet") for n in ("jobs", "members", "impressions")]
    tcfg = TrainConfig(epochs=1, batch_size=32)
    interest, _ = train_interest(*tables, tcfg)
    idir = save_model(interest, ws.interest_models, "v2", {})
    model, _, lineage = train_with_interest(*tables, idir, CFG, tcfg)
    save_model(model, ws.models, "v1", {"lineage": lineage})
    return ws


def test_interest_pipeline_matches_point_in_time_history_and_feeds_members(
    composite_ws: Workspace,
) -> None:
    from ebr.model.artifact import load_two_tower
    from ebr.model.infer import run_tower
    from ebr.model.interest import engagements, history_as_of, member_batch
    from pipelines.batch.embed import run

    ws = composite_ws
    before = "2026-10-25T00:00:00+00:00"
    out = run(
        ["--workspace", str(ws.root), "--interest-version", "v2", "--history-before", before],
        test_pipeline=_test_pipeline(),
    )
    assert out["members"] == 60 and out["dead_letter_total"] == 0
    got = pd.read_parquet(ws.interest_embeddings / "v2" / "members.parquet")
    got = got.sort_values("member_id")
    assert (got["model_version"] == "v2").all()
    # The same vectors as the core's history (engagements strictly before the cut) + tower.
    members = pd.read_parquet(ws.data / "members.parquet").sort_values("member_id")
    jobs = pd.read_parquet(ws.data / "jobs.parquet")
    imp = pd.read_parquet(ws.data / "impressions.parquet")
    hist = history_as_of(engagements(imp, jobs), pd.Timestamp(before))
    assert hist and len(hist) < 60  # some members have history before the cut, not all
    interest, icfg, _ = load_two_tower(ws.interest_models / "v2")
    expected = run_tower(interest.request, member_batch(members.to_dict("records"), hist, icfg))
    np.testing.assert_allclose(np.stack(got["embedding"].to_numpy()), expected, atol=1e-5)

    # The composite model's member embeddings read those interest vectors (joined in Beam).
    out = run(["--workspace", str(ws.root), "--version", "v1"], test_pipeline=_test_pipeline())
    assert out["dead_letter_total"] == 0
    mem_out = pd.read_parquet(ws.embeddings / "v1" / "members.parquet").sort_values("member_id")
    req, cfg, _ = load_request_tower(ws.models / "v1")
    recs = [{**m, "interest": v} for m, v in zip(members.to_dict("records"), expected, strict=True)]
    exp_m = encode_requests(req, [None] * len(recs), recs, cfg)
    np.testing.assert_allclose(np.stack(mem_out["embedding"].to_numpy()), exp_m, atol=1e-5)


def test_member_embedding_refuses_an_interest_model_that_is_not_its_lineage(
    composite_ws: Workspace, tmp_path
) -> None:
    import shutil

    from ebr.versions import LineageError
    from pipelines.batch.embed import run

    root = tmp_path / "ws"
    shutil.copytree(composite_ws.root, root)
    (root / "interest" / "models" / "v2" / "model.json").unlink()
    with pytest.raises(LineageError, match="member-interest v2"):
        run(["--workspace", str(root), "--version", "v1"], test_pipeline=_test_pipeline())


# ---- dead letters: one bad record never fails a run, never slips through --------------------


def echo(value: object) -> str:
    from ebr.data.records import echo as record_echo

    return record_echo(value)


def _job(template: dict, job_id: object, **changes: object) -> dict:
    return {**template, "job_id": job_id, **changes}


def _dead(path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def _unit_and_finite(table: pd.DataFrame) -> None:
    vecs = np.stack(table["embedding"].to_numpy())
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)


def _write(path, records: list[dict]) -> None:
    """Write records with the table's own schema (nullable columns take the bad values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path).remove_metadata()
    rows = [{k: list(v) if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in records]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_run_embeds_every_good_row_and_dead_letters_each_bad_one(ws: Workspace, tmp_path) -> None:
    import shutil

    from pipelines.batch.embed import run

    root = Path(shutil.copytree(ws.root, tmp_path / "ws"))
    data = root / "data"
    jobs = pd.read_parquet(data / "jobs.parquet").to_dict("records")
    members = pd.read_parquet(data / "members.parquet").to_dict("records")
    j, m = jobs[0], members[0]
    bad_jobs = [  # (record, expected stage, expected field); None: a valid record
        (_job(j, 10_001, lat=None), "validate", "lat"),  # a location needs both
        (_job(j, 10_002, lat=None, lon=None), None, None),  # location unknown: valid
        (_job(j, 10_003, lat=float("nan"), lon=float("nan")), None, None),  # the same, as NaN
        (_job(j, 10_004, lat=200.0), "validate", "lat"),
        (_job(j, 10_005, lon=float("inf")), "validate", "lon"),
        (_job(j, 10_006, title=None), "validate", "title"),
        (_job(j, 10_007, title=""), "validate", "title"),
        (_job(j, -1), "validate", "job_id"),
        (_job(j, None, title="job id null"), "validate", "job_id"),
        (_job(j, 10_008, remote=None), "validate", "remote"),
        (_job(j, 10_009, description="x" * 200_000), "validate", "description"),
        (_job(j, 10_010, title="first copy"), "unique", "job_id"),  # which copy is right?
        (_job(j, 10_010, title="second copy"), "unique", "job_id"),
    ]
    bad_members = [
        ({**m, "member_id": 20_001, "max_commute_km": -5.0}, "validate", "max_commute_km"),
        ({**m, "member_id": 20_002, "lon": None}, "validate", "lon"),  # lat only
        ({**m, "member_id": 20_003, "lat": None, "lon": None}, None, None),
    ]
    _write(data / "jobs.parquet", jobs + [r for r, _, _ in bad_jobs])
    _write(data / "members.parquet", members + [r for r, _, _ in bad_members])

    out = run(
        ["--workspace", str(root), "--version", "v1", "--batch-size", "64"],
        test_pipeline=_test_pipeline(),
    )
    # Every good record is embedded, the records with an unknown location too.
    folder = Workspace(root).embeddings / "v1"
    jobs_out = pd.read_parquet(folder / "jobs.parquet")
    mem_out = pd.read_parquet(folder / "members.parquet")
    assert sorted(jobs_out["job_id"]) == sorted([r["job_id"] for r in jobs] + [10_002, 10_003])
    assert sorted(mem_out["member_id"]) == sorted([r["member_id"] for r in members] + [20_003])
    _unit_and_finite(jobs_out)
    _unit_and_finite(mem_out)
    assert (out["jobs"], out["members"]) == (len(jobs) + 2, len(members) + 1)

    # Each bad one is in the dead letter once, with its stage, table, id and field.
    dead = _dead(folder / "deadletter.jsonl")
    for kind, key, label, cases in (
        ("jobs", "job_id", "title", bad_jobs),
        ("members", "member_id", "headline", bad_members),
    ):
        for rec, stage, field in cases:
            hits = [
                d
                for d in dead
                if d["kind"] == kind
                and d["record"].get(key) == echo(rec[key])
                and d["record"].get(label) == echo(rec[label])
            ]
            if stage is None:
                assert not hits, f"valid {kind} {rec[key]} refused: {hits}"
                continue
            assert len(hits) == 1, (kind, rec[key], hits)
            readable = rec[key] if isinstance(rec[key], int) else None
            assert (hits[0]["stage"], hits[0]["field"], hits[0]["id"]) == (stage, field, readable)
    # Bounded: no value echoed past 60 characters (the 200k description is not in the file).
    assert max(len(v) for d in dead for v in d["record"].values()) <= 63
    assert all(len(d["reason"]) <= 200 for d in dead)
    # The summary counts what the file holds.
    assert out["dead_letter"] == {"unique": 2, "validate": 11}
    assert out["dead_letter_kinds"] == {"jobs": 11, "members": 2}
    assert out["dead_letter_total"] == len(dead) == 13


def _stage_field_id(d: dict) -> tuple:
    return d["stage"], d["field"], d["id"]


def test_embed_records_dead_letters_bad_elements_of_a_pcollection(ws: Workspace) -> None:
    """Elements no parquet column could hold (a string in a numeric column, a string for a
    list, not a record at all) reach the shared transform from any source."""
    import apache_beam as beam

    from pipelines.towers import EmbedRecords

    jobs = pd.read_parquet(ws.data / "jobs.parquet").head(10).to_dict("records")
    j = jobs[0]
    valid_extra = [
        _job(j, 10_002, lat=None, lon=None),
        _job(j, 10_003, lat=float("nan"), lon=float("nan")),
        _job(j, 10_004, lon=-180.0),  # the antimeridian's other spelling
    ]
    bad = [
        (_job(j, 10_011, lat="52.5"), ("validate", "lat", 10_011)),
        (_job(j, 10_012, skills="python, sql"), ("validate", "skills", 10_012)),
        (_job(j, 10_013, remote=None), ("validate", "remote", 10_013)),
        (_job(j, 10_014, title=None), ("validate", "title", 10_014)),
        (_job(j, 10_015, lat=None), ("validate", "lat", 10_015)),
        (_job(j, 10_016, lat=200.0), ("validate", "lat", 10_016)),
        (_job(j, 10_017, lon=float("inf")), ("validate", "lon", 10_017)),
        (_job(j, "10018"), ("validate", "job_id", None)),
        (_job(j, None), ("validate", "job_id", None)),
        (_job(j, False), ("validate", "job_id", None)),  # a bool is not an id
        ("not a record", ("validate", None, None)),
    ]
    with _test_pipeline() as p:
        out = (
            p
            | beam.Create(jobs + valid_extra + [r for r, _ in bad])
            | EmbedRecords("jobs", ws.models / "v1", batch_size=4)
        )
        good = out.records | "Rows" >> beam.Map(
            lambda r: (r["job_id"], bool(np.isfinite(r["embedding"]).all()))
        )
        expected = [(int(r["job_id"]), True) for r in jobs + valid_extra]
        assert_that(good, equal_to(expected), label="good rows")
        assert_that(
            out.dead_letter | beam.Map(_stage_field_id),
            equal_to([want for _, want in bad]),
            label="dead letters",
        )


def test_an_unreadable_id_does_not_refuse_the_job_it_equals(ws: Workspace) -> None:
    from pipelines.deadletter import _Validate

    job = pd.read_parquet(ws.data / "jobs.parquet").head(1).to_dict("records")[0]
    assert job["job_id"] == 1
    batch = [job, _job(job, True), _job(job, 1.0)]
    out = list(_Validate("jobs", "validate", ("job_id", "title", "remote")).process(batch))
    good = [r for b in out if isinstance(b, list) for r in b]
    assert [r["job_id"] for r in good] == [1]  # True and 1.0 are refused, job 1 is not


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # lat = inf
def test_featurizer_and_output_failures_are_dead_letters(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unvalidated input (validate=False): the featurizer's exception and a non-finite
    embedding are refused one element at a time; the batch-mates go on."""
    import apache_beam as beam

    from pipelines import towers
    from pipelines.towers import EmbedRecords

    jobs = pd.read_parquet(ws.data / "jobs.parquet").head(6).to_dict("records")
    no_title = {k: v for k, v in _job(jobs[0], 10_021).items() if k != "title"}
    bad = [
        (no_title, ("featurize", None, 10_021)),
        (_job(jobs[0], "x"), ("featurize", None, None)),
        (_job(jobs[0], 10_022, lat=float("inf"), lon=0.0), ("output", "embedding", 10_022)),
    ]
    with _test_pipeline() as p:
        out = (
            p
            | beam.Create(jobs + [r for r, _ in bad])
            | EmbedRecords("jobs", ws.models / "v1", batch_size=4, validate=False)
        )
        ids = out.records | "Ids" >> beam.Map(lambda r: r["job_id"])
        assert_that(ids, equal_to([int(r["job_id"]) for r in jobs]), label="good rows")
        reasons = out.dead_letter | beam.Map(lambda d: (*_stage_field_id(d), d["reason"][:8]))
        assert_that(
            reasons,
            equal_to(
                [
                    ("featurize", None, 10_021, "KeyError"),
                    ("featurize", None, None, "ValueErr"),
                    ("output", "embedding", 10_022, "embeddin"),
                ]
            ),
            label="dead letters",
        )
    # A batch the model raises on: one dead letter per record of it, the exception named.
    tower = towers.Tower("members", ws.models / "v1")

    def boom(*_: object) -> None:
        raise RuntimeError("x" * 500)

    monkeypatch.setattr(towers, "run_tower", boom)
    members = pd.read_parquet(ws.data / "members.parquet").head(2).to_dict("records")
    table, rows = tower.embed(members)
    assert table is None
    assert [(r["stage"], r["kind"], r["id"]) for r in rows] == [
        ("inference", "members", int(members[0]["member_id"])),
        ("inference", "members", int(members[1]["member_id"])),
    ]
    assert rows[0]["reason"].startswith("RuntimeError: xxx") and len(rows[0]["reason"]) == 200
