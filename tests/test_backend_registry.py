"""Backend lookup: third-party backends through entry points, lazy framework imports, and the
load error that names the pip extra when a framework is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.backends import registry
from inferd.backends.base import Backend, Instance, LoadContext
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.pb import model_config_pb2 as mc

from .conftest import start_server, test_settings
from .framework_models import infer
from .models import bundled, write

PLUGIN = '''\
from __future__ import annotations

from inferd.backends.base import Backend


class DoubleBackend(Backend):
    """Returns twice its one input under every output name."""

    name = "double"
    default_filename = "model.double"

    def __init__(self, context):
        self.factor = float(context.parameters.get("factor", "2"))

    def execute(self, inputs, outputs):
        (x,) = inputs.values()
        return {n: x * self.factor for n in outputs}


NOT_A_BACKEND = 42
'''


def _install_plugin(root: Path) -> None:
    """What ``pip install`` leaves in site-packages: the package and its dist-info."""
    (root / "double_backend").mkdir(parents=True)
    (root / "double_backend" / "__init__.py").write_text(PLUGIN)
    info = root / "double_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: double-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[inferd.backends]\ndouble = double_backend:DoubleBackend\nbroken = double_backend:NOT_A_BACKEND\n"
    )


def test_third_party_backend_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    repo = tmp_path / "repo"
    (repo / "doubler" / "1").mkdir(parents=True)
    (repo / "doubler" / "1" / "model.double").write_text("")
    (repo / "doubler" / "config.pbtxt").write_text(
        textwrap.dedent("""\
        backend: "double"
        max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
        parameters { key: "factor" value { string_value: "3" } }
        """)
    )
    running = start_server(test_settings(repo))
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        x = np.array([[1.0, 2.0]], np.float32)
        np.testing.assert_array_equal(infer(client, "doubler", {"X": x})["Y"], 3 * x)
        assert client.get_model_metadata("doubler", as_json=True)["platform"] == "double"
        client.close()
    finally:
        running.stop()
    with pytest.raises(ModelLoadError, match="not a Backend subclass"):
        registry.resolve("broken")


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError) as e:
        registry.resolve("no-such-backend")
    for name in ("onnxruntime", "pytorch", "tensorflow", "tensorrt", "python"):
        assert name in e.value.message


LAZY = """\
import asyncio
import sys
from pathlib import Path

from inferd.server.app import InferdServer
from inferd.server.settings import Settings


async def main() -> None:
    settings = Settings(model_repository=(Path(sys.argv[1]),), grpc_port=0, http_port=0, metrics_port=0,
                        model_control_mode="none")
    server = InferdServer(settings)
    await server.start()
    ready = server.core.server_ready()
    await server.stop()
    print(ready, sorted(m for m in ("torch", "tensorflow", "tensorrt") if m in sys.modules))


asyncio.run(main())
"""


def test_an_onnx_repository_imports_no_other_framework(tmp_path: Path) -> None:
    write(tmp_path / "repo", "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    (tmp_path / "lazy.py").write_text(LAZY)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "lazy.py"), str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True []"


@pytest.mark.parametrize(
    "module, backend_path, extra",
    [
        ("torch", "inferd.backends.torchscript:TorchScriptBackend", "torch"),
        ("tensorflow", "inferd.backends.savedmodel:SavedModelBackend", "tensorflow"),
        ("tensorrt", "inferd.backends.tensorrt:TensorRTBackend", "tensorrt"),
    ],
)
def test_missing_framework_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, backend_path: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to import
    module_name, _, attr = backend_path.partition(":")
    cls: type[Backend] = getattr(__import__(module_name, fromlist=[attr]), attr)
    config = mc.ModelConfig(name="m")
    ctx = LoadContext("m", 1, config, tmp_path, tmp_path, tmp_path / "model", Instance("m_0", "GPU"))
    with pytest.raises(ModelLoadError) as e:
        cls(ctx)
    assert f"pip install 'inferd[{extra}]'" in e.value.message
