"""The protocol benchmark's bare servicer (perf/baseline_server.py) answers add_sub correctly,
with numpy and through onnxruntime, so bench_protocol compares servers that do the same work."""

from __future__ import annotations

import numpy as np
import pytest
from inferd.clients.client import InferenceClient
from inferd.perf.servers import baseline_argv, start


@pytest.mark.parametrize("compute", ["numpy", "onnxruntime"])
def test_baseline_server_answers_add_sub(compute: str) -> None:
    server = start("baseline", baseline_argv() + ["--compute", compute])
    try:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((3, 16)).astype(np.float32)
        b = rng.standard_normal((3, 16)).astype(np.float32)
        with InferenceClient(server.url) as client:
            out = client.infer("add_sub", {"INPUT0": a, "INPUT1": b})
            assert client.model_metadata("add_sub").name == "add_sub"
        np.testing.assert_allclose(out["OUTPUT0"], a + b, rtol=1e-6)
        np.testing.assert_allclose(out["OUTPUT1"], a - b, rtol=1e-6)
        assert out["OUTPUT0"].shape == (3, 16)
    finally:
        server.stop()
