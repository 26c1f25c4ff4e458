"""``python -m serving.app`` refuses bad options before it starts anything, and its HAProxy
front gets files and ports of its own (two servers on one machine never share them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from serving.app import haproxy_env, main


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--app-args", '{"ingress_replicas": 0}'], "ingress_replicas"),
        (["--app-args", '{"release_server": "gpu"}'], "release_server"),
        (["--app-args", '{"no_such_field": 1}'], "no_such_field"),
        (["--app-args", "{not json"], "--app-args"),
        (["--front", "nginx"], "--front"),
        (["--front", "haproxy", "--no-throughput-optimized"], "direct ingress"),
    ],
)
def test_bad_options_fail_before_ray_starts(tmp_path: Path, extra: list[str], named: str) -> None:
    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), *extra])
    assert result.exit_code == 2, result.output
    assert named in " ".join(result.output.split()), result.output


def test_each_server_gets_its_own_haproxy_files_and_ports(tmp_path: Path) -> None:
    one, two = haproxy_env(tmp_path / "a"), haproxy_env(tmp_path / "b")
    assert one["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and one["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"
    paths = [k for k in one if k.endswith(("_LOC", "_PATH", "_FILE", "_BASE"))]
    assert len(paths) == 5
    for key in paths:
        assert one[key].startswith(str(tmp_path / "a")) and two[key].startswith(str(tmp_path / "b"))
    ports = [
        int(env[f"RAY_SERVE_HAPROXY_{k}_PORT"]) for env in (one, two) for k in ("STATS", "METRICS")
    ]
    assert all(p > 0 for p in ports)
