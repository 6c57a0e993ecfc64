"""The repository folder: name safety, confinement of every path, version policy, fingerprints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from inferd.protocol.errors import Code, InferdError, InvalidArgument, ModelLoadError, NotFound
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.server.loader import plan_model
from inferd.server.repository import Repository, check_model_name

from .lifecycle_support import const_config, write_const

BAD_NAMES = ["", " ", "\t", "..", ".", "../x", "a/b", "a\\b", "/etc", ".hidden", "x\x00y", " add", "add ", "a\nb"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_model_name(name)


@pytest.mark.parametrize("name", ["add_sub", "model-1.v2", "ÄÖ", "a b"])
def test_ordinary_names_pass(name: str) -> None:
    check_model_name(name)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Repository, Path]:
    """A repository with one model, plus a model folder outside it."""
    root, outside = tmp_path / "repo", tmp_path / "outside"
    write_const(root, "m", 1, 1.0, const_config("m"))
    write_const(outside, "secret", 1, 9.0, const_config("secret"))
    return Repository(root), outside


def test_symlinked_model_folder_outside_is_refused(layout: tuple[Repository, Path]) -> None:
    repo, outside = layout
    (repo.roots[0] / "secret").symlink_to(outside / "secret")
    assert repo.model_names() == ["m"]
    with pytest.raises(InvalidArgument, match="outside"):
        repo.model_dir("secret")
    with pytest.raises(NotFound):
        repo.model_dir("absent")


@pytest.mark.parametrize("filename", ["../../outside/secret/1/model.onnx", "/etc/passwd", "a/../../x", "..", ""])
def test_model_file_stays_in_version_folder(layout: tuple[Repository, Path], filename: str) -> None:
    repo, _ = layout
    with pytest.raises(ModelLoadError):
        repo.model_file(repo.roots[0] / "m" / "1", filename)


def test_symlinked_file_outside_is_refused_inside_is_fine(layout: tuple[Repository, Path]) -> None:
    repo, outside = layout
    version = repo.roots[0] / "m" / "1"
    (version / "escape.onnx").symlink_to(outside / "secret" / "1" / "model.onnx")
    with pytest.raises(ModelLoadError, match="outside the model repository"):
        repo.model_file(version, "escape.onnx")
    (version / "alias.onnx").symlink_to(version / "model.onnx")
    assert repo.model_file(version, "alias.onnx") == version / "alias.onnx"


def test_config_symlink_outside_is_never_read(layout: tuple[Repository, Path]) -> None:
    repo, outside = layout
    config = repo.roots[0] / "m" / "config.pbtxt"
    config.unlink()
    config.symlink_to(outside / "secret" / "config.pbtxt")
    with pytest.raises(ModelLoadError, match="outside"):
        plan_model(repo, "m")


def test_override_cannot_point_the_model_file_outside(layout: tuple[Repository, Path]) -> None:
    repo, _ = layout
    override = mc.ModelConfig(
        name="m", platform="onnxruntime_onnx", default_model_filename="../../../outside/secret/1/model.onnx"
    )
    with pytest.raises(InferdError) as info:
        plan_model(repo, "m", override)
    assert info.value.code is Code.INVALID_ARGUMENT and "inside" in info.value.message


def _config(policy: str) -> mc.ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse(policy, mc.ModelConfig())


def test_version_policies(tmp_path: Path) -> None:
    for v in (1, 2, 3, 10):
        (tmp_path / "m" / str(v)).mkdir(parents=True)
    (tmp_path / "m" / "notes").mkdir()
    repo, folder = Repository(tmp_path), tmp_path / "m"
    assert repo.select_versions(_config(""), folder) == [10]
    assert repo.select_versions(_config("version_policy { latest { num_versions: 2 } }"), folder) == [3, 10]
    assert repo.select_versions(_config("version_policy { all { } }"), folder) == [1, 2, 3, 10]
    assert repo.select_versions(_config("version_policy { specific { versions: [1, 3] } }"), folder) == [1, 3]
    with pytest.raises(ModelLoadError, match=r"\[7\]"):
        repo.select_versions(_config("version_policy { specific { versions: [7] } }"), folder)


def test_fingerprint_sees_size_mtime_and_new_files_but_not_outside_targets(layout: tuple[Repository, Path]) -> None:
    repo, outside = layout
    folder = repo.roots[0] / "m"
    first = repo.fingerprint(folder)
    assert [e[0] for e in first] == ["1/model.onnx", "config.pbtxt"]
    (folder / "1" / "model.onnx").write_bytes(b"x")
    second = repo.fingerprint(folder)
    assert second != first
    (folder / "link").symlink_to(outside / "secret" / "config.pbtxt")
    third = repo.fingerprint(folder)
    (outside / "secret" / "config.pbtxt").write_text("changed outside, much longer than before")
    os.utime(outside / "secret" / "config.pbtxt", ns=(1, 1))
    assert repo.fingerprint(folder) == third  # the escaping link's target is never looked at
    assert repo.fingerprint(folder, skip=frozenset({"1", "link"})) == tuple(e for e in third if e[0] == "config.pbtxt")


def test_python_bytecode_cache_is_not_a_model(layout: tuple[Repository, Path]) -> None:
    """A repository with .py files beside its models (the installed bundled one has its build
    script) gets a __pycache__ folder; it is never listed as a model."""
    repo, _ = layout
    (repo.roots[0] / "__pycache__").mkdir()
    (repo.roots[0] / "__pycache__" / "build.cpython-311.pyc").write_bytes(b"")
    assert repo.model_names() == ["m"]
