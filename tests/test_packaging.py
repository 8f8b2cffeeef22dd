"""A plain ``pip install .`` (a wheel, not an editable install) carries every file the package
reads at run time: an editable install reads the checkout and hides a missing data file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the sources (a build/ left in the checkout by an
    earlier build would lend the wheel files its own rules no longer select)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "idap", src / "idap", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("idap-*.whl")
    return path


def _package_files() -> set[str]:
    """Every file of the package in the source tree (code and data alike)."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "idap").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_wheel_holds_every_file_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = _package_files()
    assert "idap/core/schema.yaml" in files  # the config schema every door validates with
    assert files - names == set()


def test_a_non_editable_install_validates_a_config(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import idap.core.config as c; print(c.SCHEMA_PATH)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the checkout
    res = subprocess.run(
        [str(site / "bin/idap"), "check-config", str(ROOT / "config/config.yaml")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
