"""``inferd perf bench triton`` without Triton: the model repositories it writes, the Python
models run through inferd's model API, the /proc CPU reader, the installer's stamp and failure
path, the table and goal lines, and ``--help``. Nothing is installed or downloaded."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from inferd.perf import bench_triton, triton_models, triton_server
from inferd.perf.points import Served
from inferd.perf.servers import process_tree_cpu_s
from inferd.protocol.pb import model_config_pb2 as mc

PYTHON_MODELS = {"add_sub", "mlp"}
ONNX_MODELS = {"add_sub_onnx", "mlp_onnx"}


@pytest.fixture(scope="module")
def repositories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("triton-models")
    return {flavour: triton_models.build(root / flavour, flavour) for flavour in ("triton", "inferd")}


def config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_repositories_hold_valid_configs(repositories: dict[str, Path]) -> None:
    triton, inferd = repositories["triton"], repositories["inferd"]
    assert {p.name for p in triton.iterdir()} == PYTHON_MODELS
    assert {p.name for p in inferd.iterdir()} == PYTHON_MODELS | ONNX_MODELS
    for name in PYTHON_MODELS:
        assert (triton / name / "config.pbtxt").read_bytes() == (inferd / name / "config.pbtxt").read_bytes()
    configs = {p.name: config(p / "config.pbtxt") for p in inferd.iterdir()}
    for name, c in configs.items():
        assert c.name == name
        assert len(c.instance_group) == 1 and c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert all(t.data_type == mc.TYPE_FP32 for t in [*c.input, *c.output])
    for name in ("add_sub", "add_sub_onnx"):
        c = configs[name]
        assert c.max_batch_size == 0 and not c.HasField("dynamic_batching")
        assert [(t.name, list(t.dims)) for t in c.input] == [("INPUT0", [4]), ("INPUT1", [4])]
        assert [(t.name, list(t.dims)) for t in c.output] == [("OUTPUT0", [4]), ("OUTPUT1", [4])]
    for name in ("mlp", "mlp_onnx"):
        c = configs[name]
        assert c.max_batch_size == 64 and c.HasField("dynamic_batching")
        assert [(t.name, list(t.dims)) for t in c.input] == [("INPUT0", [512])]
        assert [(t.name, list(t.dims)) for t in c.output] == [("OUTPUT0", [1000])]
    assert {configs[n].backend for n in PYTHON_MODELS} == {"python"}
    for name in ONNX_MODELS:
        assert configs[name].platform == "onnxruntime_onnx"
        params = {k: v.string_value for k, v in configs[name].parameters.items()}
        assert params == {"intra_op_thread_count": "1", "inter_op_thread_count": "1"}


def test_python_models_differ_only_in_the_import_line(repositories: dict[str, Path]) -> None:
    for name in PYTHON_MODELS:
        ours = (repositories["inferd"] / name / "1" / "model.py").read_text().splitlines()
        theirs = (repositories["triton"] / name / "1" / "model.py").read_text().splitlines()
        assert len(ours) == len(theirs)
        differing = [(a, b) for a, b in zip(ours, theirs) if a != b]
        assert differing == [(triton_models.IMPORTS["inferd"], triton_models.IMPORTS["triton"])]
        compile("\n".join(ours), name, "exec")
    mlp = [
        repositories[f] / m / "1" / "model.onnx"
        for f, m in (("triton", "mlp"), ("inferd", "mlp"), ("inferd", "mlp_onnx"))
    ]
    assert len({p.read_bytes() for p in mlp}) == 1


def test_onnx_graphs_match_the_numpy_reference(repositories: dict[str, Path]) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(1).standard_normal((5, 512)).astype(np.float32)
    session = ort.InferenceSession(str(repositories["inferd"] / "mlp_onnx" / "1" / "model.onnx"))
    (out,) = session.run(["OUTPUT0"], {"INPUT0": x})
    expected = triton_models.mlp_reference(x, triton_models.mlp_weights(0))
    assert out.shape == (5, 1000)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    a, b = np.arange(4, dtype=np.float32), np.full(4, 0.5, np.float32)
    session = ort.InferenceSession(str(repositories["inferd"] / "add_sub_onnx" / "1" / "model.onnx"))
    out0, out1 = session.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)


def load_model(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"triton_bench_{path.parent.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def test_inferd_python_models_compute_and_split_batches(repositories: dict[str, Path]) -> None:
    pytest.importorskip("onnxruntime")
    import inferd.backends.python_api as pb_utils

    def request(**inputs: np.ndarray) -> Any:
        return pb_utils.InferenceRequest(inputs=[pb_utils.Tensor(n, a) for n, a in inputs.items()])

    def output(response: Any, name: str) -> np.ndarray:
        return pb_utils.get_output_tensor_by_name(response, name).as_numpy()

    model_dir = repositories["inferd"] / "mlp"
    mlp = load_model(model_dir / "1" / "model.py")
    mlp.initialize({"model_repository": str(model_dir), "model_version": "1"})
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((n, 512)).astype(np.float32) for n in (1, 3, 2)]
    responses = mlp.execute([request(INPUT0=x) for x in xs])
    weights = triton_models.mlp_weights(0)
    assert len(responses) == len(xs)
    for x, r in zip(xs, responses):
        np.testing.assert_allclose(output(r, "OUTPUT0"), triton_models.mlp_reference(x, weights), rtol=1e-4, atol=1e-4)

    add_sub = load_model(repositories["inferd"] / "add_sub" / "1" / "model.py")
    a, b = np.arange(4, dtype=np.float32), np.ones(4, np.float32)
    (r,) = add_sub.execute([request(INPUT0=a, INPUT1=b)])
    np.testing.assert_array_equal(output(r, "OUTPUT0"), a + b)
    np.testing.assert_array_equal(output(r, "OUTPUT1"), a - b)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_process_tree_cpu_counts_the_process_and_its_children() -> None:
    before = process_tree_cpu_s(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert process_tree_cpu_s(os.getpid()) >= before + 0.1
    burn = "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass\nprint('done', flush=True)\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        own = sum(os.times()[:2])
        child_cpu = process_tree_cpu_s(child.pid)
        assert child_cpu >= 0.25
        assert process_tree_cpu_s(os.getpid()) >= own + child_cpu - 0.05
    finally:
        child.kill()
        child.wait()
    assert process_tree_cpu_s(child.pid) == 0.0  # gone


def fake_python(venv: Path) -> None:
    """A venv whose interpreter fails, as pip does offline: nothing may run it when the stamp is good."""
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found (offline)' >&2\nexit 1\n")
    python.chmod(0o755)


def test_install_failure_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_python(tmp_path / "venv")
    with pytest.raises(SystemExit) as e:
        triton_server.ensure(tmp_path / "venv")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"pip install {triton_server.PYTRITON}" in err and "offline" in err


def test_a_good_stamp_skips_the_installation(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    fake_python(venv)
    folder = venv / triton_server.LAYOUT
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "tritonserver").touch()
    site = venv / "lib" / "python3.11" / "site-packages"
    stamp = {"packages": list(triton_server.PACKAGES), "site_packages": str(site), "python": "3.11"}
    (venv / triton_server.STAMP).write_text(json.dumps({**stamp, "folder": str(folder), "libdir": None}))
    install = triton_server.ensure(venv)
    assert install.binary == folder / "bin" / "tritonserver"
    env = install.env()
    assert env["PATH"].startswith(f"{venv.resolve() / 'bin'}:")
    assert env["LD_LIBRARY_PATH"].startswith(str(site / "nvidia_pytriton.libs"))
    argv = install.argv(tmp_path / "repo", 1, 2, 3)
    assert "--grpc-port=1" in argv and f"--backend-directory={folder / 'backends'}" in argv


def test_table_and_goal_lines_fill_every_cell() -> None:
    def runs(rows: float, p99: float, cpu: float) -> list[Served]:
        return [Served(rows, 8.0, 0, p99 / 2, p99, server_cpu_ms=cpu, requests_per_execution=1.0)] * 2

    points = ["add_sub 1x1", "mlp 16x8"]
    servers = ["triton", "inferd", "inferd-onnx"]
    raw = {(p, s): runs(1000.0 * (i + 1), 500.0 / (i + 1), 0.25) for p in points for i, s in enumerate(servers)}
    rows = [r.split("|")[1:-1] for r in bench_triton.table(raw, points, servers).splitlines()[2:]]
    assert len(rows) == 6 and all(len(r) == 8 and all(c.strip() for c in r) for r in rows)
    assert rows[1][7].strip() == "2.00x, p99 0.50x" and rows[3][6].strip() == "1.00 (8.0 rows)"
    lines = bench_triton.goal_lines(raw, points)
    assert len(lines) == 4 and all("meets the goal" in line for line in lines)


def test_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "inferd.server.cli", "perf", "bench", "triton", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "inferd perf bench triton" in done.stdout and "--triton-venv" in done.stdout and "--points" in done.stdout


def test_http_url_reads_tritons_port_or_inferds_log() -> None:
    from inferd.perf.bench_triton import http_url
    from inferd.perf.servers import HTTP_READY_LINE, ServerProcess

    triton = ServerProcess("triton", None, 8001, [], http_port=8000)  # type: ignore[arg-type]
    assert http_url(triton) == "127.0.0.1:8000"
    log = ["gRPC (KServe v2) listening on 127.0.0.1:40001", f"{HTTP_READY_LINE} 127.0.0.1:40002 (TLS)"]
    inferd = ServerProcess("inferd", None, 40001, log)  # type: ignore[arg-type]
    assert http_url(inferd) == "127.0.0.1:40002"
    with pytest.raises(RuntimeError, match="no HTTP port"):
        http_url(ServerProcess("inferd", None, 40001, log[:1]))  # type: ignore[arg-type]
