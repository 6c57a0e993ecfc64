"""Drift statistics: PSI and KS of the recent traffic against a reference (the first requests,
or a file in the model folder), per version and tensor."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.errors import ModelLoadError
from inferd.server.drift import DriftMonitor, DriftSpec, drift_spec

from .conftest import start_server, test_settings
from .rollout_support import infer, traffic, write_model


def _feed(monitor: DriftMonitor, rng: np.random.Generator, n: int, loc: float) -> None:
    for _ in range(n):
        x = rng.normal(loc, 1.0, (1, 16)).astype(np.float32)
        monitor.observe({"X": x}, {"Y": x * 2})
    monitor.flush()


def test_psi_and_ks_see_a_shift() -> None:
    rng = np.random.default_rng(0)
    same, shifted = DriftMonitor(DriftSpec(500, max_per_s=0)), DriftMonitor(DriftSpec(500, max_per_s=0))
    _feed(same, rng, 1500, 0.0)
    _feed(shifted, rng, 500, 0.0)
    _feed(shifted, rng, 1000, 1.0)
    quiet, moved = same.figures()["tensors"]["X"], shifted.figures()["tensors"]["X"]
    assert quiet["psi"] < 0.05 and quiet["ks"] < 0.05
    assert moved["psi"] > 0.5 and 0.3 < moved["ks"] < 0.45  # N(0,1) vs N(1,1): KS = 0.38
    assert shifted.figures()["tensors"]["Y"]["kind"] == "output"
    assert quiet["count"] == 1500 * 16 and abs(quiet["mean"]) < 0.05 and abs(quiet["std"] - 1) < 0.05


def test_reference_from_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "ref.npz", X=rng.normal(0, 1, 5000))
    spec = drift_spec({"drift": "reference=ref.npz"}, "m")
    assert spec == DriftSpec(reference_file="ref.npz")
    from inferd.server.drift import read_reference

    monitor = DriftMonitor(spec, read_reference(tmp_path, spec, "m"))
    assert drift_spec({"drift": "on,max_per_s=0"}, "m") == DriftSpec(max_per_s=0)
    _feed(monitor, rng, 300, 3.0)
    assert monitor.figures()["tensors"]["X"]["psi"] > 2
    for bad in ("reference=../x.npz", "reference=abc", "sometimes", "on,max_per_s=x"):
        with pytest.raises(ModelLoadError):
            drift_spec({"drift": bad}, "m")


def test_drift_through_the_server(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "drifting",
        {1: 1.0},
        'parameters { key: "drift" value: { string_value: "reference=200,max_per_s=0" } }\n',
    )
    running = start_server(test_settings(tmp_path, model_control_mode="explicit", load_models=["drifting"]))
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        rng = np.random.default_rng(2)
        for loc in [0.0] * 200 + [2.0] * 300:
            infer(client, "drifting", rng.normal(loc, 1, (1, 4)).astype(np.float32))
        client.close()
        doc = traffic(running.http_url, "drifting").json()
        figures = doc["drift"]["1"]
        assert figures["requests"] == 500 and figures["reference_complete"]
        assert figures["tensors"]["INPUT0"]["psi"] > 1 and figures["tensors"]["OUTPUT0"]["ks"] > 0.5
        metrics = httpx.get(f"http://{running.metrics_url}/metrics").text
        assert 'inferd_drift_psi{kind="input",model="drifting",tensor="INPUT0",version="1"}' in metrics
    finally:
        running.stop()
