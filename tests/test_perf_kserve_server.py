"""The KServe comparison's server (perf/kserve_server.py) answers add_sub correctly over v2
gRPC to tritonclient, with the ModelConfig that perf_analyzer reads."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from inferd.perf.servers import start_kserve

# Only looked up: importing kserve here would register its inference.* protobuf messages in the
# process-wide pool that tritonclient's own stubs use too.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("kserve") is None,
    reason="kserve is not installed (pip install 'kserve>=0.21'; make test installs it)",
)
grpcclient = pytest.importorskip("tritonclient.grpc")


def test_kserve_server_answers_add_sub() -> None:
    server = start_kserve()
    try:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((3, 16)).astype(np.float32)
        b = rng.standard_normal((3, 16)).astype(np.float32)
        client = grpcclient.InferenceServerClient(server.url)
        try:
            assert client.is_model_ready("add_sub")
            inputs = [
                grpcclient.InferInput("INPUT0", [3, 16], "FP32"),
                grpcclient.InferInput("INPUT1", [3, 16], "FP32"),
            ]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            result = client.infer("add_sub", inputs)
            config = client.get_model_config("add_sub").config
        finally:
            client.close()
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        assert config.max_batch_size == 8
        assert [(i.name, list(i.dims)) for i in config.input] == [("INPUT0", [16]), ("INPUT1", [16])]
    finally:
        server.stop()
