"""Code fingerprints: a version string that changes whenever the code producing an artifact
does, for caches keyed on it (Flyte's ``cache_version``; a cache that ignores code changes
serves results the current code would not produce).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

FINGERPRINT_CHARS = 16  # hex digits kept: 64 bits, no accidental collisions between versions


def _sources(module: str) -> list[tuple[str, Path]]:
    """(name, path) of each ``.py`` file of ``module``: the module's own file, or for a package
    every file under it (named by its path inside the package), sorted."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module named {module!r}")
    origin = Path(spec.origin)
    if not spec.submodule_search_locations:
        return [(module, origin)]
    files = (p for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return sorted((f"{module}/{p.relative_to(origin.parent)}", p) for p in files)


def code_version(*modules: str, extra: str = "") -> str:
    """A hex digest of the source of ``modules`` (packages: every file in them) and ``extra``
    (e.g. a config's repr): equal code and extra give equal versions, any edit a new one."""
    if not modules:
        raise ValueError("code_version needs at least one module")
    digest = hashlib.sha256(extra.encode())
    for module in sorted(set(modules)):
        for name, path in _sources(module):
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:FINGERPRINT_CHARS]
