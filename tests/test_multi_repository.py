"""Several model repositories (Triton's repeated --model-repository / --model-store): the models of
every folder serve, a name in two folders is that model's error, poll and explicit mode find a
model in whichever folder holds it, and paths stay confined to their own model's folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.errors import InvalidArgument, ModelLoadError
from inferd.server.repository import Repository
from onnx import TensorProto

from .conftest import RunningServer, start_server, test_settings
from .lifecycle_support import index, wait_for
from .models import binary_model, bundled, write
from .serving import serve_argv
from .test_e2e_serve import start

INT_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT64 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_INT64 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 4 ] } ]
"""


def write_int_add(repo: Path, name: str) -> Path:
    return write(repo, name, INT_CONFIG.replace("{name}", name), binary_model("Add", TensorProto.INT64))


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    """Repository a: add_sub and twin; repository b: add_int and twin."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    write_int_add(a, "twin")
    write_int_add(b, "add_int")
    write_int_add(b, "twin")
    return a, b


@pytest.fixture
def serve(repos: tuple[Path, Path]) -> Iterator:  # type: ignore[type-arg]
    servers: list[tuple[RunningServer, grpcclient.InferenceServerClient]] = []

    def make(**settings: object) -> grpcclient.InferenceServerClient:
        running = start_server(
            test_settings(repos[0], model_repository=repos, allow_http=False, allow_metrics=False, **settings)
        )
        servers.append((running, grpcclient.InferenceServerClient(running.grpc_url)))
        return servers[-1][1]

    yield make
    for running, client in servers:
        client.close()
        running.stop()


def infer_add_sub(client: grpcclient.InferenceServerClient) -> np.ndarray:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    out = client.infer("add_sub", inputs).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, a * 2)
    return out


def infer_int_add(client: grpcclient.InferenceServerClient, model: str) -> None:
    x = np.arange(4, dtype=np.int64).reshape(1, 4)
    inputs = []
    for name, value in (("INPUT0", x), ("INPUT1", x * 10)):
        i = grpcclient.InferInput(name, [1, 4], "INT64")
        i.set_data_from_numpy(value)
        inputs.append(i)
    np.testing.assert_array_equal(client.infer(model, inputs).as_numpy("OUTPUT0"), x * 11)


def assert_twin_unavailable(client: grpcclient.InferenceServerClient, a: Path, b: Path) -> None:
    state, reason = index(client)[("twin", "")]
    assert state == "UNAVAILABLE"
    assert reason == f"model 'twin' is in two model repositories: {a.resolve()} and {b.resolve()}"


def test_models_of_both_repositories_serve_and_a_shared_name_is_unavailable(serve, repos) -> None:  # type: ignore[no-untyped-def]
    client = serve()
    a, b = repos
    infer_add_sub(client)
    infer_int_add(client, "add_int")
    states = index(client)
    assert states[("add_sub", "1")] == ("READY", "") and states[("add_int", "1")] == ("READY", "")
    assert_twin_unavailable(client, a, b)
    assert not client.is_model_ready("twin")
    assert client.is_server_ready() is False  # twin was requested at start-up and is not ready


def test_poll_mode_watches_every_repository(serve, repos) -> None:  # type: ignore[no-untyped-def]
    client = serve(model_control_mode="poll", repository_poll_secs=0.2)
    a, b = repos
    assert_twin_unavailable(client, a, b)
    write_int_add(b, ".dropped")  # hidden while written, then renamed into place
    (b / ".dropped" / "config.pbtxt").write_text(INT_CONFIG.replace("{name}", "dropped"))
    os.rename(b / ".dropped", b / "dropped")
    wait_for(lambda: index(client).get(("dropped", "1"), ("",))[0] == "READY", what="dropped READY")
    infer_int_add(client, "dropped")
    # Removing one of the two folders resolves the clash: the other one loads.
    os.rename(a / "twin", a / ".twin")
    wait_for(lambda: index(client).get(("twin", "1"), ("",))[0] == "READY", what="twin READY")
    infer_int_add(client, "twin")


def test_explicit_mode_loads_from_the_second_repository(serve, repos) -> None:  # type: ignore[no-untyped-def]
    client = serve(model_control_mode="explicit", load_models=["add_int"])  # --load-model
    a, b = repos
    infer_int_add(client, "add_int")
    assert index(client)[("add_sub", "")] == ("", "")  # listed, not loaded
    write_int_add(b, "later")
    client.load_model("later")  # RepositoryModelLoad
    infer_int_add(client, "later")
    client.load_model("add_sub")
    infer_add_sub(client)
    with pytest.raises(Exception, match="two model repositories"):
        client.load_model("twin")
    assert_twin_unavailable(client, a, b)


def test_a_path_of_one_repository_must_stay_in_it(repos: tuple[Path, Path]) -> None:
    """A link from a to b is as outside as a link to anywhere else."""
    a, b = repos
    (a / "linked").symlink_to(b / "add_int")
    (a / "add_sub" / "1" / "model.onnx").unlink()
    (a / "add_sub" / "1" / "model.onnx").symlink_to(b / "add_int" / "1" / "model.onnx")
    repo = Repository(a, b)
    assert repo.model_names() == ["add_int", "add_sub", "twin"]
    with pytest.raises(InvalidArgument, match="outside"):
        repo.model_dir("linked")
    with pytest.raises(ModelLoadError, match="outside the model repository"):
        repo.model_file(repo.model_dir("add_sub") / "1", "model.onnx")
    assert repo.model_file(repo.model_dir("add_int") / "1", "model.onnx").is_file()


def test_every_repository_must_be_a_folder(repos: tuple[Path, Path]) -> None:
    not_a_folder = repos[1] / "add_int" / "config.pbtxt"
    result = subprocess.run(
        serve_argv("--model-repository", str(repos[0]), "--model-store", str(not_a_folder)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(not_a_folder) in result.stderr and "not a folder" in result.stderr


def test_model_store_flag_adds_a_repository(repos: tuple[Path, Path]) -> None:
    a, b = repos
    proc, url = start(a, "--model-store", str(b), "--exit-on-error=false")  # twin fails on purpose
    try:
        client = grpcclient.InferenceServerClient(url)
        wait_for(lambda: client.is_model_ready("add_sub") and client.is_model_ready("add_int"), timeout=60)
        infer_add_sub(client)
        infer_int_add(client, "add_int")
        assert_twin_unavailable(client, a, b)
        client.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_a_name_in_two_repositories_stops_the_server_by_default(repos: tuple[Path, Path]) -> None:
    """--exit-on-error is true by default, as in Triton: the twin's reason names both folders."""
    a, b = repos
    result = subprocess.run(
        serve_argv("--model-repository", str(a), "--model-repository", str(b), "--model-control-mode=none"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"model 'twin' is in two model repositories: {a.resolve()} and {b.resolve()}" in result.stderr
