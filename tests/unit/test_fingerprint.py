"""ebr.fingerprint: the code version a cache is keyed on changes exactly when the code does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ebr.fingerprint import code_version


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable package ``fp_pkg`` (never imported: its files are read as they are now)."""
    root = tmp_path / "fp_pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "gen.py").write_text("def make():\n    return 1\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "rules.py").write_text("LIMIT = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    sys.modules.pop("fp_pkg", None)


def test_same_code_same_version_any_edit_a_new_one(package: Path) -> None:
    first = code_version("fp_pkg")
    assert code_version("fp_pkg") == first and len(first) == 16
    (package / "sub" / "rules.py").write_text("LIMIT = 4\n")  # a file deep in the package
    second = code_version("fp_pkg")
    assert second != first
    (package / "extra.py").write_text("")  # a new module
    assert code_version("fp_pkg") not in (first, second)
    (package / "extra.py").unlink()
    assert code_version("fp_pkg") == second  # back to the same code: back to the same version


def test_modules_extra_and_errors(package: Path) -> None:
    both = code_version("fp_pkg", "ebr.config")
    assert both == code_version("ebr.config", "fp_pkg")  # order does not matter
    assert both != code_version("fp_pkg") and both != code_version("fp_pkg", extra="cfg")
    assert code_version("fp_pkg.gen") != code_version("fp_pkg")  # one module vs the package
    with pytest.raises(ModuleNotFoundError):
        code_version("fp_pkg.missing")
    with pytest.raises(ValueError):
        code_version()


def test_the_deterministic_flyte_task_is_cached_on_its_code_version() -> None:
    from tasks.platform import GENERATOR_CODE, generate_marketplace

    assert generate_marketplace.metadata.cache
    assert generate_marketplace.metadata.cache_version == code_version(*GENERATOR_CODE)


def test_a_cache_hit_skips_generation_and_a_wiped_workspace_is_named(tmp_path: Path) -> None:
    """Flyte's local cache: the second identical run reuses the first's result (the tables are
    not rewritten); after the workspace is deleted, a hit names the missing tables."""
    import shutil

    from ebr.config import DataConfig
    from ebr.steps import read_tables
    from tasks.platform import generate_marketplace

    cfg = DataConfig(n_jobs=200, seed=5)
    data = Path(generate_marketplace(workspace=str(tmp_path), data=cfg))
    stamp = (data / "jobs.parquet").stat().st_mtime_ns
    assert Path(generate_marketplace(workspace=str(tmp_path), data=cfg)) == data
    assert (data / "jobs.parquet").stat().st_mtime_ns == stamp  # not generated again
    assert len(read_tables(data)["jobs"]) == 200
    shutil.rmtree(data)
    assert Path(generate_marketplace(workspace=str(tmp_path), data=cfg)) == data  # a hit
    with pytest.raises(FileNotFoundError, match="overwrite-cache"):
        read_tables(data)
