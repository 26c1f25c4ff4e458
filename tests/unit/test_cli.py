"""The ``ebr`` command line: bad arguments are one readable line and exit 2 (never a
traceback), results come as tables or as JSON (``--json`` anywhere on the line), and the
console script is installed. Release commands on a real workspace: ``test_release_atomic``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from ebr.config import Workspace
from ebr.release import provision as ops
from tests.unit.test_releases import make_interest, make_version

BAD_ARGS = {
    "no such command": ["relase", "list"],
    "no such subcommand": ["release", "lst", "--workspace", "."],
    "missing option": ["release", "list"],
    "not an int": ["generate", "--workspace", "w", "--jobs", "many"],
    "below the minimum": ["generate", "--workspace", "w", "--jobs", "3"],
    "bad version": ["train", "--workspace", ".", "--version", "version1"],
    "bad index kind": ["slot", "build", "--workspace", ".", "--kind", "annoy"],
    "out of range recall": ["slot", "build", "--workspace", ".", "--target-recall", "1.5"],
    "missing workspace dir": ["release", "list", "--workspace", "/no/such/workspace"],
    "search without query or member": ["search"],
    "feed without member": ["search", "--feed"],
    "filter not JSON": ["search", "nurse", "--filter", "{term"],
    "bad arm spec": ["experiment", "start", "--workspace", ".", "x", "control"],
    "unknown option": ["release", "list", "--workspace", ".", "--colour"],
}


@pytest.mark.parametrize("args", list(BAD_ARGS.values()), ids=list(BAD_ARGS))
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], err


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("cli"))
    make_interest(ws, "v1")
    make_version(ws, "v1", "v1")
    ops.promote(ws, ops.provision(ws, "v1").id)
    ops.provision(ws, "v1")
    return ws


def test_release_list_as_a_table_and_as_json(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["release", "list", "--workspace", str(ws.root)]) == 0
    table = capsys.readouterr().out
    assert "live" in table and "candidate" in table and "rel-v1-" in table
    # --json anywhere on the line: the same releases, machine-readable.
    assert main(["release", "list", "--json", "--workspace", str(ws.root)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["role"] for r in rows) == ["candidate", "live"]
    assert {r["version"] for r in rows} == {"v1"}
    assert main(["--json", "release", "show", "--workspace", str(ws.root), rows[0]["release"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == rows[0]["release"]


def test_work_that_cannot_be_done_is_one_error_line_and_exit_1(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = "rel-v1-20990101T000000000000"
    assert main(["release", "promote", "--workspace", str(ws.root), unknown]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and unknown in err and len(err.strip().splitlines()) == 1
    assert main(["judgments", "report", "--workspace", str(ws.root), "--set", "none"]) == 1
    assert "has no judgments" in capsys.readouterr().err


def test_the_console_script_is_installed() -> None:
    script = shutil.which("ebr", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . installs the ebr console script"
    done = subprocess.run([script, "release", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: Missing option '--workspace'")


def test_ebr_serve_hands_every_option_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ebr serve`` calls ``serving.app.main`` directly, where typer resolves no defaults: a
    server option the command does not pass arrives as typer's OptionInfo (``--ray-address``
    once did, and every ``ebr serve`` refused to start). The server's options are all named."""
    import inspect

    import serving.app

    options = set(inspect.signature(serving.app.main).parameters)
    seen: dict[str, object] = {}
    monkeypatch.setattr(serving.app, "main", lambda **kw: seen.update(kw))
    assert main(["serve", "--workspace", str(tmp_path), "--port", "8123"]) == 0
    assert set(seen) == options
    assert not [k for k, v in seen.items() if type(v).__module__.startswith("typer")]
    assert seen["port"] == 8123 and seen["ray_address"] == ""
