"""The generated stubs, the server and both clients under the oldest and the newest protobuf
runtime inferd supports (the venv itself holds the newest one tritonclient allows).

Each case runs a child Python with that runtime first on its path (tests/protobuf_runtime.py):
it starts a real server on ephemeral ports, infers add_sub with inferd's client and with
tritonclient and a Python model (which reads its config as JSON), and reports the runtime.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from . import protobuf_runtime

REPO_ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    import google.protobuf
    import tritonclient.grpc as grpcclient
    from inferd.clients import InferenceClient
    from inferd.protocol.pb import grpc_service_pb2, model_config_pb2
    from inferd.server.app import InferdServer
    from inferd.server.settings import Settings

    async def main():
        settings = Settings(grpc_port=0, http_port=0, metrics_port=0, allow_metrics=False,
                            model_control_mode="explicit", load_models=["add_sub", "dense", "dense_classify"])
        server = InferdServer(settings)
        await server.start()
        url = f"127.0.0.1:{server.grpc_port}"
        a = np.arange(16, dtype=np.float32).reshape(1, 16)
        ours = await asyncio.to_thread(lambda: InferenceClient(url).infer("add_sub", {"INPUT0": a, "INPUT1": a}))
        def triton():
            client = grpcclient.InferenceServerClient(url)
            inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
            for i in inputs:
                i.set_data_from_numpy(a)
            return client.infer("add_sub", inputs).as_numpy("OUTPUT1")
        theirs = await asyncio.to_thread(triton)
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        label = await asyncio.to_thread(lambda: InferenceClient(url).infer("dense_classify", {"FEATURES": x}))
        assert label["LABEL"].dtype == object, label
        await server.stop()
        assert np.array_equal(ours["OUTPUT0"], a * 2) and np.array_equal(theirs, a * 0)
        assert model_config_pb2.ModelConfig(name="m").SerializeToString()
        assert grpc_service_pb2.ModelInferRequest.FromString(
            grpc_service_pb2.ModelInferRequest(model_name="x").SerializeToString()).model_name == "x"
        print("protobuf", google.protobuf.__version__)

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_server_and_clients_run_on_supported_protobuf(which: str) -> None:
    try:
        folder, version = protobuf_runtime.runtime_path(which)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"could not install the {which} supported protobuf: {e}")
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=protobuf_runtime.environment(folder),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"protobuf {version}" in result.stdout
    if which == "oldest":
        assert version == protobuf_runtime.supported_range()[0]
    else:
        assert int(version.split(".")[0]) == int(protobuf_runtime.supported_range()[1]) - 1
