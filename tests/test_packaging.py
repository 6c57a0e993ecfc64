"""Packaging facts a build cannot check by itself."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_every_bundled_model_folder_is_listed_as_a_package() -> None:
    """setuptools warns about data folders with Python names that `packages` does not list, and
    a folder left out of the list would still ship; the list and the folders must agree."""
    listed = {
        name.removeprefix("inferd.model_repository.")
        for name in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
        if name.startswith("inferd.model_repository.")
    }
    folders = {
        p.name
        for p in (REPO_ROOT / "model_repository").iterdir()
        if p.is_dir() and p.name.isidentifier() and p.name != "__pycache__"
    }
    assert listed == folders
