"""Ensembles against the real server: the bundled pipeline, a diamond DAG whose branches must
overlap, load-time validation, step failures, cancellation, shared batching and hot reloads."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.backends import registry
from inferd.backends.base import Backend, LoadContext
from inferd.protocol.errors import InvalidArgument
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .lifecycle_support import SIZE, index, wait_for
from .models import ROOT, bundled, save

BACKEND = "ensemble_test"
BARRIERS: dict[str, threading.Barrier] = {}
GATES: dict[str, threading.Event] = {}
EXECUTIONS: dict[str, list[int]] = {}  # model -> batch sizes executed


class StepBackend(Backend):
    """OUTPUT0 = INPUT0 + add. ``barrier``: the execution waits for a peer on the same barrier
    (so two branches pass only if they run at the same time); ``gate``: it waits for the test
    to open it; ``fail_below``: a row under this value fails the execution."""

    name = BACKEND
    default_filename = "model.json"

    def __init__(self, context: LoadContext) -> None:
        spec = json.loads(context.model_path.read_text())
        self.model = context.model_name
        self.add = np.float32(spec.get("add", 0.0))
        self.barrier = BARRIERS.get(spec.get("barrier", ""))
        self.gate = GATES.setdefault(self.model, threading.Event()) if spec.get("gate") else None
        if self.gate is not None:
            self.gate.set()
        self.fail_below = spec.get("fail_below")

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        x = inputs["INPUT0"]
        EXECUTIONS.setdefault(self.model, []).append(int(x.shape[0]))
        if self.gate is not None:
            self.gate.wait(20)
        if self.barrier is not None:
            self.barrier.wait()  # raises BrokenBarrierError if the other branch never comes
        if self.fail_below is not None and np.any(x < self.fail_below):
            raise InvalidArgument(f"{self.model}: a value is below {self.fail_below}")
        return {"OUTPUT0": x + self.add}


def step_model(repo: Path, name: str, extra: str = "", **spec: object) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.json").write_text(json.dumps(spec))
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "{BACKEND}"\nmax_batch_size: 8\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n{extra}'
    )


def ensemble(
    repo: Path,
    name: str,
    steps: list[tuple[str, dict[str, str], dict[str, str]]],
    inputs: str = f'{{ name: "X" data_type: TYPE_FP32 dims: [ {SIZE} ] }}',
    outputs: str = f'{{ name: "Y" data_type: TYPE_FP32 dims: [ {SIZE} ] }}',
) -> None:
    """An ensemble config; each step is (model, input_map, output_map)."""

    def maps(kind: str, m: dict[str, str]) -> str:
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in m.items())

    body = ",\n".join(
        f'{{ model_name: "{model}" model_version: -1 {maps("input_map", i)} {maps("output_map", o)} }}'
        for model, i, o in steps
    )
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\ninput [ {inputs} ]\noutput [ {outputs} ]\n'
        f"ensemble_scheduling {{ step [\n{body}\n] }}\n"
    )


def chain(model: str, src: str, dst: str) -> tuple[str, dict[str, str], dict[str, str]]:
    return model, {"INPUT0": src}, {"OUTPUT0": dst}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    registry.register(BACKEND, StepBackend)
    BARRIERS["diamond"] = threading.Barrier(2, timeout=10)
    root = tmp_path_factory.mktemp("ensembles")
    for name in ("dense", "preprocess", "postprocess", "dense_pipeline"):
        shutil.copytree(ROOT / "model_repository" / name, root / name)
    # Diamond: X -> first -> (left | right, concurrently) -> add_sub -> SUM, DIFF
    step_model(root, "first", add=0.5)
    step_model(root, "left", add=1.0, barrier="diamond")
    step_model(root, "right", add=10.0, barrier="diamond")
    save(bundled.add_sub_model(size=SIZE), root / "join" / "1" / "model.onnx")
    (root / "join" / "config.pbtxt").write_text('name: "join"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    ensemble(
        root,
        "diamond",
        [
            chain("first", "X", "t0"),
            chain("left", "t0", "a"),
            chain("right", "t0", "b"),
            ("join", {"INPUT0": "a", "INPUT1": "b"}, {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"}),
        ],
        outputs=", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {SIZE} ] }}' for n in ("SUM", "DIFF")),
    )
    # A middle step that fails on negative input.
    step_model(root, "picky", add=0.0, fail_below=0.0)
    step_model(root, "last", add=100.0)
    ensemble(root, "fragile", [chain("first", "X", "t"), chain("picky", "t", "u"), chain("last", "u", "Y")])
    # A gated, dynamically batched model used both directly and through an ensemble.
    step_model(root, "batched", "dynamic_batching { max_queue_delay_microseconds: 0 }", add=2.0, gate=True)
    ensemble(root, "via_batched", [chain("batched", "X", "Y")])
    step_model(root, "after_gate", add=3.0)
    ensemble(root, "gated_chain", [chain("batched", "X", "t"), chain("after_gate", "t", "Y")])
    # Composing model that the hot-reload test rewrites.
    step_model(root, "swappable", add=1.0)
    ensemble(root, "uses_swappable", [chain("swappable", "X", "Y")])
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    """Explicit mode, only the ensembles requested: their composing models load with them."""
    names = ["dense_pipeline", "diamond", "fragile", "via_batched", "gated_chain", "uses_swappable"]
    running = start_server(test_settings(repo, model_control_mode="explicit", load_models=names))
    yield running
    for gate in GATES.values():
        gate.set()
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def fp32(name: str, data: np.ndarray, module=grpcclient) -> object:  # type: ignore[no-untyped-def]
    i = module.InferInput(name, list(data.shape), "FP32")
    i.set_data_from_numpy(data)
    return i


def rows(n: int, seed: int = 0, width: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def test_loading_an_ensemble_loads_its_composing_models(client) -> None:  # type: ignore[no-untyped-def]
    states = index(client)
    for name in ("preprocess", "dense", "postprocess", "first", "left", "right", "join", "picky", "last"):
        assert states[(name, "1")][0] == "READY", name
    assert client.is_model_ready("diamond") and client.is_server_ready()


def test_bundled_pipeline_matches_calling_each_step(server: RunningServer, client) -> None:  # type: ignore[no-untyped-def]
    x = rows(5, 1, 64) * 3 + 1
    result = client.infer("dense_pipeline", [fp32("RAW", x)])
    normalized = client.infer("preprocess", [fp32("RAW", x)]).as_numpy("NORMALIZED")
    probs = client.infer("dense", [fp32("INPUT", normalized)]).as_numpy("PROBS")
    by_hand = client.infer("postprocess", [fp32("PROBS", probs)])
    assert result.as_numpy("LABELS").tolist() == by_hand.as_numpy("LABELS").tolist()
    np.testing.assert_array_equal(result.as_numpy("SCORES"), by_hand.as_numpy("SCORES"))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    assert result.as_numpy("LABELS").tolist() == [[f"class_{c}".encode() for c in row] for row in top]
    # The HTTP gateway reaches the same core: BYTES labels arrive identical.
    http = httpclient.InferenceServerClient(server.http_url)
    via_http = http.infer("dense_pipeline", [fp32("RAW", x, httpclient)])
    assert via_http.as_numpy("LABELS").tolist() == result.as_numpy("LABELS").tolist()


def test_diamond_branches_run_concurrently_and_join(client) -> None:  # type: ignore[no-untyped-def]
    x = rows(3, 2)
    result = client.infer("diamond", [fp32("X", x)])  # left and right meet at a barrier
    np.testing.assert_allclose(result.as_numpy("SUM"), (x + 1.5) + (x + 10.5), rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("DIFF"), np.full_like(x, -9.0), rtol=1e-6)
    meta = client.get_model_metadata("diamond")
    assert meta.platform == "ensemble" and [o.name for o in meta.outputs] == ["SUM", "DIFF"]
    config = client.get_model_config("diamond").config
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["first", "left", "right", "join"]


def test_ensemble_and_steps_keep_their_own_statistics(client) -> None:  # type: ignore[no-untyped-def]
    before = client.get_inference_statistics("diamond").model_stats[0].inference_stats.success.count
    join_before = client.get_inference_statistics("join").model_stats[0].inference_stats.success.count
    for seed in range(3):
        client.infer("diamond", [fp32("X", rows(2, seed))])
    stats = client.get_inference_statistics("diamond").model_stats[0]
    assert stats.inference_stats.success.count == before + 3
    assert stats.inference_stats.success.ns > 0 and stats.inference_count >= 6
    join = client.get_inference_statistics("join").model_stats[0]
    assert join.inference_stats.success.count == join_before + 3


def test_a_failing_middle_step_fails_the_request_naming_it(client) -> None:  # type: ignore[no-untyped-def]
    last_runs = len(EXECUTIONS.get("last", []))
    x = rows(2, 3)
    x[1, 0] = -100.0
    with pytest.raises(InferenceServerException) as info:
        client.infer("fragile", [fp32("X", x)])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "step 1 ('picky') failed" in info.value.message() and "below 0" in info.value.message()
    assert len(EXECUTIONS.get("last", [])) == last_runs, "no step after the failed one may run"
    ok = np.abs(rows(2, 4)) + 1
    np.testing.assert_allclose(client.infer("fragile", [fp32("X", ok)]).as_numpy("Y"), ok + 100.5)


def test_ensemble_and_direct_requests_share_one_batch(server: RunningServer, client) -> None:  # type: ignore[no-untyped-def]
    gate = GATES["batched"]
    gate.clear()
    EXECUTIONS["batched"] = []
    results: dict[str, object] = {}

    def call(key: str, model: str, x: np.ndarray) -> None:
        out = "Y" if model != "batched" else "OUTPUT0"
        name = "X" if model != "batched" else "INPUT0"
        results[key] = client.infer(model, [fp32(name, x)]).as_numpy(out)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(call, "occupier", "batched", np.zeros((1, SIZE), np.float32))
        wait_for(lambda: EXECUTIONS["batched"] == [1], what="the instance to be busy")
        direct = pool.submit(call, "direct", "batched", np.ones((1, SIZE), np.float32))
        via = pool.submit(call, "ensemble", "via_batched", np.full((1, SIZE), 5.0, np.float32))
        wait_for(lambda: pending(server) == 3, what="both requests to queue behind the busy instance")
        gate.set()
        for f in (first, direct, via):
            f.result(20)
    assert EXECUTIONS["batched"] == [1, 2], "the direct and the ensemble request should form one batch"
    np.testing.assert_allclose(results["direct"], np.full((1, SIZE), 3.0))  # type: ignore[arg-type]
    np.testing.assert_allclose(results["ensemble"], np.full((1, SIZE), 7.0))  # type: ignore[arg-type]


def pending(server: RunningServer, model: str = "batched") -> int:
    """Requests inside a model (queued or executing), read from its statistics."""
    return server.server.core.model(model).stats.pending


def test_client_deadline_stops_further_steps(server: RunningServer, client) -> None:  # type: ignore[no-untyped-def]
    gate = GATES["batched"]
    after = len(EXECUTIONS.get("after_gate", []))
    gate.clear()
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("gated_chain", [fp32("X", rows(1, 5))], client_timeout=0.5)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    finally:
        gate.set()
    wait_for(lambda: pending(server) == 0, what="the gated step to finish")
    assert len(EXECUTIONS.get("after_gate", [])) == after, "the step after the expired one must not run"


def test_ensemble_is_ready_only_while_its_composing_models_are(server: RunningServer, client) -> None:  # type: ignore[no-untyped-def]
    client.unload_model("last")
    try:
        wait_for(lambda: not client.is_model_ready("fragile"), what="fragile to stop being ready")
        state, reason = index(client)[("fragile", "1")]
        assert state == "UNAVAILABLE" and "composing model 'last' is not ready" in reason
        assert not client.is_server_ready()  # strict readiness: a requested model is not ready
        with pytest.raises(InferenceServerException) as info:
            client.infer("fragile", [fp32("X", np.abs(rows(1, 6)))])
        assert info.value.status() == "StatusCode.UNAVAILABLE" and "'last'" in info.value.message()
    finally:
        client.load_model("last")
    assert client.is_model_ready("fragile") and client.is_server_ready()


def test_reloading_a_composing_model_under_load_fails_no_request(repo: Path, client) -> None:  # type: ignore[no-untyped-def]
    x = np.zeros((1, SIZE), np.float32)
    seen: set[float] = set()
    errors: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                seen.add(float(client.infer("uses_swappable", [fp32("X", x)]).as_numpy("Y")[0, 0]))
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: 1.0 in seen, what="traffic on the old build")
        (repo / "swappable" / "1" / "model.json").write_text(json.dumps({"add": 2.0}))
        client.load_model("swappable")
        wait_for(lambda: 2.0 in seen, what="traffic on the new build")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:3]
    assert seen == {1.0, 2.0}


# --- load-time validation -------------------------------------------------------------------
BAD = {
    "unknown composing model": ([chain("no_such_model", "X", "Y")], "composing model 'no_such_model'"),
    "cycle": (
        [chain("first", "X", "p"), chain("left", "q", "r"), chain("right", "r", "q"), chain("last", "p", "Y")],
        "cycle",
    ),
    "consumed, never produced": ([chain("first", "X", "t"), chain("last", "nowhere", "Y")], "'nowhere'"),
    "output never produced": ([chain("first", "X", "t")], "ensemble output 'Y' is not produced"),
    "two producers": ([chain("first", "X", "Y"), chain("last", "X", "Y")], "produced by both"),
    "unknown step input": ([("first", {"NOPE": "X"}, {"OUTPUT0": "Y"})], "input 'NOPE'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_ensembles_fail_to_load_with_the_reason(repo: Path, client, case: str) -> None:  # type: ignore[no-untyped-def]
    steps, expected = BAD[case]
    name = "bad_" + case.replace(" ", "_").replace(",", "")
    ensemble(repo, name, steps)
    _expect_load_error(client, name, expected)


def test_datatype_and_shape_mismatches_fail_to_load(repo: Path, client) -> None:  # type: ignore[no-untyped-def]
    ensemble(
        repo, "bad_dtype", [chain("first", "X", "Y")], inputs=f'{{ name: "X" data_type: TYPE_INT32 dims: [ {SIZE} ] }}'
    )
    _expect_load_error(client, "bad_dtype", "tensor 'X' is INT32")
    ensemble(repo, "bad_shape", [chain("first", "X", "Y")], outputs='{ name: "Y" data_type: TYPE_FP32 dims: [ 7 ] }')
    _expect_load_error(client, "bad_shape", "dims [4]")


def _expect_load_error(client, name: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        client.load_model(name)
    assert expected in info.value.message(), info.value.message()
    # Structural errors fail the model, type errors its version: either way the index says why.
    entries = [v for (n, _), v in index(client).items() if n == name]
    assert entries and all(state == "UNAVAILABLE" and expected in reason for state, reason in entries), entries
    assert client.is_server_live()


def test_perf_analyzer_breaks_an_ensemble_down_by_step(server: RunningServer) -> None:
    """NVIDIA's perf_analyzer reads the ensemble's config, then every composing model's
    statistics, and prints a breakdown per step."""
    import subprocess

    from inferd.perf.perf_analyzer import find_perf_analyzer

    pa = find_perf_analyzer()
    if pa is None:
        pytest.skip("perf_analyzer is not installed (bash ../shared/tools/install-perf-analyzer.sh)")
    cmd = [
        pa,
        "-m",
        "dense_pipeline",
        "-i",
        "grpc",
        "-u",
        server.grpc_url,
        "-p",
        "500",
        "--concurrency-range",
        "2",
        "-s",
        "100",
        "--max-trials",
        "10",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"perf_analyzer failed:\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    assert "Composing models:" in out
    for step in ("preprocess", "dense", "postprocess"):
        block = out.split(f"{step}, version: 1", 1)
        assert len(block) == 2, f"no breakdown for {step}:\n{out}"
        assert "compute infer" in block[1].split("version:", 1)[0]


def test_an_ensemble_waiting_for_a_broken_step_loads_once_the_step_is_fixed(repo: Path, client) -> None:  # type: ignore[no-untyped-def]
    (repo / "mending" / "1").mkdir(parents=True)
    (repo / "mending" / "config.pbtxt").write_text('name: "mending"\nbackend: "no_such_backend"\n')
    ensemble(repo, "heals", [chain("mending", "X", "Y")])
    with pytest.raises(InferenceServerException) as info:
        client.load_model("heals")
    assert "composing model 'mending' is not ready" in info.value.message()
    step_model(repo, "mending", add=4.0)  # the step is fixed and loaded on its own
    client.load_model("mending")
    wait_for(lambda: client.is_model_ready("heals"), what="the ensemble to load again by itself")
    x = np.zeros((1, SIZE), np.float32)
    np.testing.assert_allclose(client.infer("heals", [fp32("X", x)]).as_numpy("Y"), x + 4.0)


def test_unload_dependents_unloads_the_ensembles_using_a_model(repo: Path, server: RunningServer, client) -> None:  # type: ignore[no-untyped-def]
    step_model(repo, "shared_step", add=1.0)
    ensemble(repo, "outer_a", [chain("shared_step", "X", "Y")])
    ensemble(repo, "outer_b", [chain("shared_step", "X", "Y")])
    ensemble(repo, "outermost", [("outer_a", {"X": "X"}, {"Y": "Y"})])  # through another ensemble
    for name in ("outer_a", "outer_b", "outermost"):
        client.load_model(name)
    assert "model_repository(unload_dependents)" in client.get_server_metadata().extensions
    client.unload_model("shared_step")  # without the flag: the ensembles stay, not ready
    wait_for(lambda: not client.is_model_ready("outer_a"), what="outer_a to stop being ready")
    assert index(client)[("outer_a", "1")][0] == "UNAVAILABLE"
    client.load_model("shared_step")
    wait_for(lambda: client.is_model_ready("outermost"), what="the ensembles to serve again")
    client.unload_model("shared_step", unload_dependents=True)
    for name in ("outer_a", "outer_b", "outermost"):
        wait_for(lambda n=name: index(client)[(n, "1")] == ("UNAVAILABLE", "unloaded"), what=f"{name} unloaded")
    # Over HTTP, the same parameter; a non-boolean is refused.
    http = httpclient.InferenceServerClient(server.http_url)
    client.load_model("outer_b")
    http.unload_model("shared_step", unload_dependents=True)
    wait_for(lambda: index(client)[("outer_b", "1")] == ("UNAVAILABLE", "unloaded"), what="outer_b unloaded")
    import httpx

    r = httpx.post(
        f"http://{server.http_url}/v2/repository/models/first/unload", json={"parameters": {"unload_dependents": "yes"}}
    )
    assert r.status_code == 400 and "unload_dependents" in r.json()["error"]
