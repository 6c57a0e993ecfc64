"""Model lifecycle against a real server: control modes, the repository API, reloads that only
happen on change, failed loads that keep the old version serving, warmup, states, readiness
and the confinement of names to the repository."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server.repository import Repository
from inferd.server.warmup import MAX_WARMUP_EXECUTIONS
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .lifecycle_support import (
    ScriptedBackend,
    const_config,
    index,
    infer_const,
    register_test_backend,
    wait_for,
    write_const,
    write_scripted,
)

POLL = 0.2


class Server:
    def __init__(self, repo: Path, **settings: object) -> None:
        register_test_backend()
        self.repo = repo
        self.running: RunningServer = start_server(
            test_settings(repo, allow_http=False, allow_metrics=False, **settings)
        )
        self.client = grpcclient.InferenceServerClient(self.running.grpc_url)

    def close(self) -> None:
        self.client.close()
        self.running.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    servers: list[Server] = []

    def make(**settings: object) -> Server:
        servers.append(Server(tmp_path / "repo", **settings))
        return servers[-1]

    (tmp_path / "repo").mkdir()
    yield make
    for s in servers:
        s.close()


def status_of(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def inference_count(client: grpcclient.InferenceServerClient, model: str) -> int:
    return sum(s.inference_count for s in client.get_inference_statistics(model).model_stats)


# --- explicit mode and the repository API --------------------------------------------------


def test_explicit_load_unload_and_index_states(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    write_const(repo, "m", 1, 1.0, const_config("m"))
    write_const(repo, "other", 1, 5.0, const_config("other"))
    s = serve(model_control_mode="explicit", load_models=["m"])
    c = s.client
    assert index(c) == {("m", "1"): ("READY", ""), ("other", ""): ("", "")}
    assert status_of(lambda: infer_const(c, "other"))[0] == "StatusCode.NOT_FOUND"

    c.load_model("other")
    assert infer_const(c, "other") == ("1", 5.0)
    assert c.is_model_ready("other", "1") and not c.is_model_ready("other", "2")

    c.unload_model("other")
    assert index(c)[("other", "1")] == ("UNAVAILABLE", "unloaded")
    with grpc.insecure_channel(s.running.grpc_url) as channel:
        ready_only = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert [(m.name, m.version, m.state) for m in ready_only.models] == [("m", "1", "READY")]
    code, message = status_of(lambda: infer_const(c, "other"))
    assert code == "StatusCode.UNAVAILABLE" and "unloaded" in message
    c.unload_model("other")  # unloading what is not loaded succeeds, as in Triton
    assert status_of(lambda: c.unload_model("nope"))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: c.load_model("nope"))[0] == "StatusCode.NOT_FOUND"
    assert ("nope", "") not in index(c)  # a failed name leaves no record behind
    assert c.is_server_ready()  # only what is requested or was ready counts
    c.load_model("other")
    assert infer_const(c, "other") == ("1", 5.0)


def test_load_reloads_only_what_changed(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    write_const(repo, "m", 1, 1.0, const_config("m"))
    s = serve(model_control_mode="explicit", load_models=["*"])
    c = s.client
    for _ in range(3):
        infer_const(c, "m")
    (repo / "m" / "config.pbtxt").write_text(const_config("m") + "# a comment changes nothing\n")
    c.load_model("m")
    assert inference_count(c, "m") == 3  # same loaded version: statistics carry on

    override = json.loads(
        json.dumps(
            {
                "name": "m",
                "platform": "onnxruntime_onnx",
                "max_batch_size": 8,
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                "dynamic_batching": {"max_queue_delay_microseconds": 100},
            }
        )
    )
    c.load_model("m", config=json.dumps(override))
    assert inference_count(c, "m") == 0  # reloaded
    assert c.get_model_config("m").config.HasField("dynamic_batching")
    c.load_model("m", config=json.dumps(override))
    infer_const(c, "m")
    assert inference_count(c, "m") == 1  # same override: not reloaded again

    c.load_model("m")  # back to config.pbtxt
    assert not c.get_model_config("m").config.HasField("dynamic_batching")
    write_const(repo, "m", 1, 2.0)  # a replaced model file
    c.load_model("m")
    assert infer_const(c, "m") == ("1", 2.0)


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_api_load_unload_refused_outside_explicit_mode(serve, tmp_path: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    write_const(tmp_path / "repo", "m", 1, 1.0, const_config("m"))
    c = serve(model_control_mode=mode, repository_poll_secs=60).client
    for call in (lambda: c.load_model("m"), lambda: c.unload_model("m")):
        code, message = status_of(call)
        assert code == "StatusCode.UNAVAILABLE"
        assert "explicit model load / unload is not allowed" in message and "--model-control-mode=explicit" in message
    assert infer_const(c, "m") == ("1", 1.0)
    assert index(c) == {("m", "1"): ("READY", "")}


TRAVERSALS = ["../outside/secret", "..", "", " ", "a/b", "..\\outside", "/etc", ".hidden", "link", "x\ny"]


def test_traversal_names_are_rejected_and_touch_nothing(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    write_const(repo, "m", 1, 1.0, const_config("m"))
    write_const(outside, "secret", 1, 9.0, const_config("secret"))
    (repo / "link").symlink_to(outside / "secret")
    watch = Repository(tmp_path)
    before_outside, before_repo = watch.fingerprint(outside), watch.fingerprint(repo)
    c = serve(model_control_mode="explicit", load_models=["m"]).client
    before_index = index(c)
    for name in TRAVERSALS:
        for call in (lambda n=name: c.load_model(n), lambda n=name: c.unload_model(n)):
            code, _ = status_of(call)
            assert code == "StatusCode.INVALID_ARGUMENT", name
    assert index(c) == before_index
    # An override cannot point the model file out of the version folder either.
    config = {
        "name": "m",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "default_model_filename": "../../../outside/secret/1/model.onnx",
    }
    code, message = status_of(lambda: c.load_model("m", config=json.dumps(config)))
    assert code == "StatusCode.INVALID_ARGUMENT" and "must name a file inside" in message
    assert infer_const(c, "m") == ("1", 1.0)  # still the repository's own model
    assert index(c)[("m", "1")][0] == "READY" and "must name a file inside" in index(c)[("m", "1")][1]
    assert watch.fingerprint(outside) == before_outside and watch.fingerprint(repo) == before_repo


# --- failures keep the old version ----------------------------------------------------------


def test_broken_new_version_keeps_the_old_one_serving(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    write_const(repo, "m", 1, 1.0, const_config("m"))
    c = serve(model_control_mode="poll", repository_poll_secs=POLL).client
    (repo / "m" / "2").mkdir()
    (repo / "m" / "2" / "model.onnx").write_bytes(b"not an onnx model")
    states = wait_for(lambda: (i := index(c)).get(("m", "2"), ("",))[0] == "UNAVAILABLE" and i, what="v2 failing")
    assert "onnxruntime cannot read the model" in states[("m", "2")][1]
    assert states[("m", "1")] == ("READY", "kept as it was: version 2 failed to load")
    assert infer_const(c, "m") == ("1", 1.0)
    assert c.is_server_ready()

    write_const(repo, "m", 2, 2.0)  # fixed
    wait_for(lambda: infer_const(c, "m") == ("2", 2.0), what="v2 serving")
    wait_for(lambda: index(c)[("m", "1")] == ("UNAVAILABLE", "unloaded"), what="v1 unloaded")

    (repo / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch_size: eight\n')  # broken config
    wait_for(lambda: "reload failed" in index(c)[("m", "2")][1], what="config failure reported")
    assert index(c)[("m", "2")][0] == "READY" and infer_const(c, "m") == ("2", 2.0)
    (repo / "m" / "config.pbtxt").write_text(const_config("m"))
    wait_for(lambda: index(c)[("m", "2")] == ("READY", ""), what="reason cleared")


def test_partially_written_model_is_not_loaded_until_complete(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    poll = 0.3
    c = serve(model_control_mode="poll", repository_poll_secs=poll).client
    payload = const_model_bytes(7.0)
    folder = repo / "late"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(const_config("late"))
    step = max(1, len(payload) // 30)
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)]
    started = time.monotonic()
    with (folder / "1" / "model.onnx").open("wb") as f:
        for chunk in chunks:  # a slow copy: ~30 pieces 30 ms apart: over two polls
            f.write(chunk)
            f.flush()
            assert index(c)[("late", "")] == ("", ""), "a half-written model was acted on"
            time.sleep(0.03)
    assert time.monotonic() - started > 2 * poll
    wait_for(lambda: index(c).get(("late", "1"), ("",))[0] == "READY", what="late READY")
    assert infer_const(c, "late") == ("1", 7.0)


def const_model_bytes(value: float) -> bytes:
    from .lifecycle_support import const_model

    return const_model(value).SerializeToString()


def test_in_flight_requests_finish_when_their_version_is_unloaded(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_scripted(tmp_path / "repo", "slow", 1, const=3.0, exec_secs=0.6)
    c = serve(model_control_mode="explicit", load_models=["slow"]).client
    results: list[tuple[str, float]] = []
    t = threading.Thread(target=lambda: results.append(infer_const(c, "slow")))
    t.start()
    wait_for(lambda: ScriptedBackend.executions.get("slow"), what="request running")
    c.unload_model("slow")  # returns once drained and released
    t.join(10)
    assert results == [("1", 3.0)]
    assert index(c)[("slow", "1")] == ("UNAVAILABLE", "unloaded")


def test_slow_load_runs_in_the_background(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    write_const(repo, "m", 1, 1.0, const_config("m"))
    write_scripted(repo, "big", 1, const=4.0, load_secs=1.5)
    c = serve(model_control_mode="explicit", load_models=["m"]).client
    loader = threading.Thread(target=lambda: c.load_model("big"))
    loader.start()
    wait_for(lambda: index(c).get(("big", "1"), ("",))[0] == "LOADING", what="LOADING shown")
    worst = 0.0
    while loader.is_alive():
        t0 = time.monotonic()
        assert c.is_server_live() and c.is_server_ready()
        assert infer_const(c, "m") == ("1", 1.0)
        worst = max(worst, time.monotonic() - t0)
    loader.join()
    assert worst < 0.5, f"the server stalled {worst:.2f}s during a load"
    assert infer_const(c, "big") == ("1", 4.0)

    # A reload of the slow model: the old load answers until the new one is ready.
    write_scripted(repo, "big", 1, const=5.0, load_secs=1.0)
    loader = threading.Thread(target=lambda: c.load_model("big"))
    loader.start()
    answers = set()
    while loader.is_alive():
        answers.add(infer_const(c, "big"))
    loader.join()
    assert answers <= {("1", 4.0), ("1", 5.0)} and ("1", 4.0) in answers
    assert infer_const(c, "big") == ("1", 5.0)


# --- warmup ------------------------------------------------------------------------------

WARMUP = """
model_warmup [
  { name: "zeros" batch_size: 2 count: 3 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } },
  { name: "noise" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] random_data: true } } },
  { name: "file" batch_size: 4 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "in.bin" } } }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def test_warmup_runs_on_every_instance_before_ready(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    write_scripted(repo, "w", 1, WARMUP, const=1.0)
    (repo / "w" / "warmup").mkdir()
    (repo / "w" / "warmup" / "in.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    ScriptedBackend.executions.pop("w", None)
    c = serve(model_control_mode="explicit", load_models=["w"]).client
    assert ScriptedBackend.executions["w"] == [2, 2, 2, 1, 4] * 2  # both instances, in config order
    assert inference_count(c, "w") == 0  # warmup stays out of the statistics
    assert infer_const(c, "w") == ("1", 1.0)

    # A warmup that cannot run is a failed load: the serving version stays.
    write_scripted(repo, "w", 1, WARMUP.replace("in.bin", "missing.bin"), const=2.0)
    code, message = status_of(lambda: c.load_model("w"))
    assert code == "StatusCode.INVALID_ARGUMENT" and "missing.bin" in message
    assert index(c)[("w", "1")][0] == "READY" and "reload failed" in index(c)[("w", "1")][1]
    assert infer_const(c, "w") == ("1", 1.0)
    write_scripted(repo, "w", 1, WARMUP.replace("in.bin", "../../../etc/passwd"), const=2.0)
    assert "must name a file inside" in status_of(lambda: c.load_model("w"))[1]
    (repo / "w" / "warmup" / "in.bin").write_bytes(b"short")
    write_scripted(repo, "w", 1, WARMUP, const=2.0)
    assert "bytes of raw data" in status_of(lambda: c.load_model("w"))[1]


def test_warmup_with_onnxruntime(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    extra = (
        'model_warmup [ { name: "z" batch_size: 8 inputs { key: "INPUT0" '
        "value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]\n"
    )
    write_const(tmp_path / "repo", "m", 1, 1.0, const_config("m", extra))
    c = serve(model_control_mode="none").client
    assert infer_const(c, "m", rows=8) == ("1", 1.0)
    assert inference_count(c, "m") == 8


def test_warmup_is_bounded_and_never_holds_the_loop(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A quick model that may run on the event loop warms up on its thread, so a long warmup
    leaves the server answering; a warmup over the execution cap is refused at load."""
    warm = (
        'model_warmup [ { name: "z" batch_size: 1 count: %d inputs { key: "INPUT0" '
        "value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]\n"
    )
    repo = tmp_path / "repo"
    write_const(repo, "m", 1, 1.0, const_config("m", warm % 3000))
    write_const(repo, "huge", 1, 1.0, const_config("huge", warm % (MAX_WARMUP_EXECUTIONS + 1)))
    running = serve(model_control_mode="explicit", load_models=["huge"])
    c = running.client
    state, reason = index(c)[("huge", "1")]
    assert state == "UNAVAILABLE" and f"at most {MAX_WARMUP_EXECUTIONS}" in reason and "model_warmup" in reason
    loader = threading.Thread(target=lambda: c.load_model("m"))
    loader.start()
    slowest = 0.0
    while loader.is_alive():  # the loop keeps answering while 3,000 warmup executions run
        t0 = time.monotonic()
        assert c.is_server_live()
        slowest = max(slowest, time.monotonic() - t0)
    loader.join()
    worker = running.running.server.core.model("m").scheduler.workers[0]
    assert worker.inline and worker.placement.inline_wall_ns is None  # not one warmup run on the loop
    assert worker.executions == 3000
    assert slowest < 1.0
    assert infer_const(c, "m") == ("1", 1.0)


def test_overrides_asking_for_too_many_instances_or_threads_are_refused(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_const(tmp_path / "repo", "m", 1, 1.0, const_config("m"))
    c = serve(
        model_control_mode="explicit", load_models=["m"], max_instances_per_model=4, max_threads_per_instance=8
    ).client
    base = {
        "name": "m",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    many = dict(base, instance_group=[{"count": 3, "kind": "KIND_CPU"}, {"count": 2, "kind": "KIND_CPU"}])
    code, message = status_of(lambda: c.load_model("m", config=json.dumps(many)))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert "5 instances" in message and "at most 4" in message and "--max-instances-per-model" in message
    threads = dict(base, parameters={"intra_op_thread_count": {"string_value": "9"}})
    code, message = status_of(lambda: c.load_model("m", config=json.dumps(threads)))
    assert "'intra_op_thread_count' asks for 9" in message and "--max-threads-per-instance" in message
    assert infer_const(c, "m") == ("1", 1.0)  # the serving version stays
    c.load_model("m", config=json.dumps(dict(base, instance_group=[{"count": 4, "kind": "KIND_CPU"}])))
    assert infer_const(c, "m") == ("1", 1.0)  # at the limit: loads


# --- readiness ------------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [True, False])
def test_strict_readiness_over_requested_models(serve, tmp_path: Path, strict: bool) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    write_const(repo, "m", 1, 1.0, const_config("m"))
    write_const(repo, "broken", 1, 1.0, const_config("other_name"))
    c = serve(model_control_mode="none", strict_readiness=strict).client
    assert c.is_server_ready() is (not strict)
    assert c.is_model_ready("m") and c.is_model_ready("m", "1") and not c.is_model_ready("m", "2")
    assert not c.is_model_ready("broken")
    state, reason = index(c)[("broken", "")]
    assert state == "UNAVAILABLE" and "other_name" in reason
