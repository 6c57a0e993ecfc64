"""When an instance runs executions on the event loop instead of its thread: only backends that
declare it safe, only while executions are short and inputs small, never for several
instances; and a real server with ONNX and Python models answers the same either way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from inferd.backends.base import Backend, Instance
from inferd.protocol.caller import ThreadCaller
from inferd.protocol.errors import InvalidArgument
from inferd.protocol.model_spec import dynamic_batching
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.protocol.types import InferRequest
from inferd.server.loader import inline_execution
from inferd.server.scheduling.batcher import DynamicBatcher
from inferd.server.scheduling.direct import DirectScheduler
from inferd.server.scheduling.load import ServerLoad, current, of_loop
from inferd.server.scheduling.placement import (
    INLINE_MAX_BYTES,
    INLINE_NEVER_NS,
    STALL_WINDOW,
    ExecutionPlacement,
    one_cpu,
)
from inferd.server.scheduling.work import Work
from inferd.server.scheduling.worker import InstanceWorker
from inferd.server.stats import ModelStats

from .conftest import RunningServer


class Recorder(Backend):
    """Y = X + 1; records the thread of each execution and can be made slow."""

    name = "recorder"
    default_filename = "none"
    inline_safe = True

    def __init__(self, context: object = None) -> None:
        self.threads: list[str] = []
        self.sleep_s = 0.0

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"Y": inputs["X"] + 1}


def work(values: int = 1) -> Work:
    x = np.zeros((1, values), np.float32)
    return Work({"X": x}, ["Y"], 1, time.monotonic_ns(), None)


async def run(scheduler: DirectScheduler, n: int, values: int = 1) -> None:
    for _ in range(n):
        out = await scheduler.submit(work(values))
        assert out["Y"].tolist() == [[1.0] * values]


def direct(backend: Recorder, inline: bool = True, instances: int = 1) -> DirectScheduler:
    workers = [InstanceWorker(backend, f"inst{i}", False, inline) for i in range(instances)]
    return DirectScheduler(workers, ModelStats("m", "1"), "model 'm' version 1")


async def test_short_executions_move_onto_the_loop_once_measured() -> None:
    backend = Recorder()
    await run(direct(backend), 30)
    loop_thread = threading.current_thread().name
    assert backend.threads[0].startswith("inst0") and backend.threads[1].startswith("inst0")  # unmeasured
    assert backend.threads[2:] == [loop_thread] * 28


async def test_slow_executions_go_back_to_the_thread() -> None:
    backend = Recorder()
    scheduler = direct(backend)
    await run(scheduler, 2)
    backend.sleep_s = 0.002  # far over the inline limit: the moving average crosses it at once
    await run(scheduler, 3)
    assert backend.threads[-1].startswith("inst0")
    assert scheduler.workers[0].inline  # it may come back once fast again


async def test_an_execution_that_stalls_the_loop_keeps_its_instance_off_it_for_good() -> None:
    """A model that sleeps shows no CPU time on its thread; once it has held the loop for longer
    than INLINE_NEVER_NS twice in a row, it never runs there again. Once alone (a garbage
    collection, the kernel switching the loop out) is forgiven."""
    backend = Recorder()
    scheduler = direct(backend)
    await run(scheduler, 3)
    loop_thread = threading.current_thread().name
    assert backend.threads[-1] == loop_thread
    stall = INLINE_NEVER_NS * 1.5 / 1e9
    backend.sleep_s = stall
    await run(scheduler, 1)  # on the loop: one stall
    backend.sleep_s = 0
    await run(scheduler, STALL_WINDOW + 10)  # back on the loop once the average fades
    assert scheduler.workers[0].inline and backend.threads[-1] == loop_thread
    backend.sleep_s = stall
    await run(scheduler, 1)  # a stall long after the last one: forgiven too
    backend.sleep_s = 0
    await run(scheduler, STALL_WINDOW + 10)
    assert scheduler.workers[0].inline and backend.threads[-1] == loop_thread
    backend.sleep_s = stall
    await run(scheduler, 30)  # a model that always stalls: it keeps to the thread for good
    backend.sleep_s = 0
    await run(scheduler, 40)
    assert not scheduler.workers[0].inline
    assert all(t.startswith("inst0") for t in backend.threads[-40:])


async def test_large_inputs_and_workers_not_allowed_inline_use_threads() -> None:
    big = Recorder()
    await run(direct(big), 3, values=INLINE_MAX_BYTES // 4 + 1)
    off = Recorder()
    await run(direct(off, inline=False), 3)
    for backend in (big, off):
        assert all(t.startswith("inst") for t in backend.threads), backend.threads


def test_on_one_cpu_longer_executions_and_larger_inputs_run_on_the_loop_under_load() -> None:
    """With ``single_cpu`` (the loader's: one CPU, no dynamic batcher) the limits of a lone
    request hold under load too: 0.5 ms executions and 1 MiB inputs run on the loop; 3 ms ones
    still go to the thread. Elsewhere those limits are the lone request's only."""
    batch = [work(1 << 18)]  # 1 MiB of input
    for single in (True, False):
        placement = ExecutionPlacement(True, single_cpu=single)
        placement.ran_on_thread(500_000)  # the first, cold, is not counted
        placement.ran_on_thread(500_000)
        assert placement.on_loop(batch) is single
        assert placement.on_loop_alone(batch)
        for _ in range(20):
            placement.ran_on_thread(3_000_000)
        assert not placement.on_loop(batch) and not placement.on_loop_alone(batch)


def test_on_one_cpu_an_execution_that_waits_goes_back_to_its_thread_under_load() -> None:
    """A model that spends 50 µs of CPU but 1 ms on the loop (waiting on I/O, say) would hold the
    loop with the one CPU idle: under load it runs on its thread. Alone it may still hold it."""
    batch = [work()]
    placement = ExecutionPlacement(True, single_cpu=True)
    placement.ran_on_thread(50_000)
    placement.ran_on_thread(50_000)
    assert placement.on_loop(batch)
    placement.ran_on_loop(1_000_000)
    assert not placement.on_loop(batch) and placement.on_loop_alone(batch)
    computing = ExecutionPlacement(True, single_cpu=True)
    for _ in range(2):
        computing.ran_on_thread(500_000)
    computing.ran_on_loop(700_000)  # preempted a little on the shared CPU: still computing
    assert computing.on_loop(batch)


def test_one_cpu_reads_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert one_cpu()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert not one_cpu()


def test_server_answers_the_same_with_inline_execution_off(server: RunningServer, model_repo: Path) -> None:
    """The session server runs add_sub inline; a copy with ``inline_execution: false`` runs it on
    its thread: results are identical."""
    import shutil

    import tritonclient.grpc as grpcclient

    from .conftest import start_server, test_settings

    repo = model_repo.parent / "inline_off"
    if not repo.exists():
        repo.mkdir()
        shutil.copytree(model_repo / "add_sub", repo / "add_sub")
        config = repo / "add_sub" / "config.pbtxt"
        if config.exists():
            config.write_text(
                config.read_text() + '\nparameters { key: "inline_execution" value { string_value: "false" } }\n'
            )
        else:
            pytest.skip("the test repository's add_sub has no config.pbtxt to extend")
    other = start_server(test_settings(repo))
    try:
        a = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        results = []
        for url in (server.grpc_url, other.grpc_url):
            client = grpcclient.InferenceServerClient(url)
            meta = client.get_model_metadata("add_sub")
            shape = [3] + [int(d) for d in meta.inputs[0].shape[1:]]
            x = np.resize(a, shape).astype(np.float32)
            inputs = [grpcclient.InferInput(n, shape, "FP32") for n in ("INPUT0", "INPUT1")]
            for i in inputs:
                i.set_data_from_numpy(x)
            results.append(client.infer("add_sub", inputs).as_numpy("OUTPUT0"))
        np.testing.assert_array_equal(results[0], results[1])
        worker = other.server.core.model("add_sub").scheduler.workers[0]
        assert not worker.inline
        assert server.server.core.model("add_sub").scheduler.workers[0].inline
    finally:
        other.stop()


PY_ADD = """
import inferd.backends.python_api as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + 1)]))
        return out
"""
PY_BLS = """
import inferd.backends.python_api as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            call = pb_utils.InferenceRequest(model_name="py_thread", inputs=[pb_utils.Tensor("INPUT0", x)],
                                             requested_output_names=["OUTPUT0"])
            res = call.exec()
            if res.has_error():
                out.append(pb_utils.InferenceResponse(output_tensors=[], error=res.error()))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(res, "OUTPUT0")]))
        return out
"""


def py_model(repo: Path, name: str, source: str, inline: str | None) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(source)
    param = f'parameters {{ key: "inline_execution" value {{ string_value: "{inline}" }} }}\n' if inline else ""
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n' + param
    )


def test_python_models_run_inline_unless_they_may_wait_on_the_server(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from .conftest import start_server, test_settings

    py_model(tmp_path, "py_thread", PY_ADD, "false")
    py_model(tmp_path, "py_auto", PY_ADD, None)
    py_model(tmp_path, "py_async", PY_ADD.replace("    def execute", "    async def execute"), None)
    py_model(tmp_path, "py_inline", PY_ADD, "true")
    py_model(tmp_path, "py_bls_inline", PY_BLS, "true")
    py_model(tmp_path, "py_bls", PY_BLS, None)
    py_model(tmp_path, "py_bad", PY_ADD, "sometimes")
    running = start_server(test_settings(tmp_path))
    try:
        core = running.server.core
        assert not core.model("py_thread").scheduler.workers[0].inline
        # auto: a quick model may run on the loop, unless it may wait on the server there.
        assert core.model("py_auto").scheduler.workers[0].inline
        assert not core.model("py_async").scheduler.workers[0].inline
        assert not core.model("py_bls").scheduler.workers[0].inline
        assert core.model("py_inline").scheduler.workers[0].inline
        client = grpcclient.InferenceServerClient(running.grpc_url)
        x = np.ones((1, 2), np.float32)
        i = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        i.set_data_from_numpy(x)
        for _ in range(12):  # past the first, measured execution: later ones run on the loop
            for name in ("py_inline", "py_auto", "py_async"):
                np.testing.assert_array_equal(client.infer(name, [i]).as_numpy("OUTPUT0"), x + 1)
        assert core.model("py_auto").scheduler.workers[0].placement.inline_wall_ns is not None  # it ran there
        np.testing.assert_array_equal(client.infer("py_bls", [i]).as_numpy("OUTPUT0"), x + 1)
        # A model that calls other models but was told to run inline: whether it goes inline
        # depends on how much CPU its calls take on its thread (near the limit); once it does,
        # its calls fail at once with the reason instead of waiting forever for the loop.
        outcomes = []
        for _ in range(12):
            try:
                outcomes.append(client.infer("py_bls_inline", [i]).as_numpy("OUTPUT0").tolist())
            except InferenceServerException as e:
                outcomes.append(e.message())
        assert outcomes[0] == (x + 1).tolist()  # the first executions run on the thread
        failures = [o for o in outcomes if isinstance(o, str)]
        assert all("runs on the event loop" in m for m in failures), outcomes
        assert all(o == (x + 1).tolist() for o in outcomes if not isinstance(o, str))
        # The same guard, called directly from the loop thread:
        request = InferRequest("py_thread", {"INPUT0": x})
        caller = ThreadCaller(running.server.manager, running.loop)  # what Python models get at load

        async def call_from_the_loop() -> None:
            caller.infer(request, timeout=5)

        with pytest.raises(InvalidArgument, match="runs on the event loop"):
            running.call(call_from_the_loop())
        state = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert state["py_bad"][0] == "UNAVAILABLE" and "inline_execution" in state["py_bad"][1]
        assert client.is_server_live()
    finally:
        running.stop()


async def test_the_one_entry_point_places_executions_as_the_loader_allowed() -> None:
    """``InstanceWorker.run`` is how every scheduler executes; it runs on the loop (returning the
    outcome) only where loader.inline_execution allowed it, once measured, for small inputs, and
    on the thread (returning a future) everywhere else."""
    cpu = [Instance("i_0", "CPU", 0, 0)]
    cases = [  # (inline_safe, instances, parameter, allowed by the loader)
        (True, cpu, "auto", True),
        (False, cpu, "auto", False),
        (False, cpu, "true", True),
        (True, cpu, "false", False),
        (True, cpu * 2, "auto", False),
        (True, [Instance("i_0", "GPU", 0, 0)], "auto", False),
    ]
    for safe, placed, choice, allowed in cases:
        backend = type("Backend", (Recorder,), {"inline_safe": safe})()
        plan = SimpleNamespace(name="m", backend=type(backend))
        inline = inline_execution(plan, placed, {"inline_execution": choice})  # type: ignore[arg-type]
        # "auto" leaves the last word to the loaded backend (a Python model narrows it).
        assert inline == (None if allowed and choice == "auto" else allowed)
        worker = InstanceWorker.build(lambda b=backend: b, "inst0", False, inline)
        where = []
        for values in (1, 1, 1, INLINE_MAX_BYTES // 4 + 1):
            ran = worker.run([work(values)])
            where.append("loop" if isinstance(ran, tuple) else "thread")
            results, _ = ran if isinstance(ran, tuple) else await ran
            assert results[0]["Y"].shape == (1, values)  # type: ignore[index]
        # The first two are measured on the thread; large inputs never leave it.
        expected = ["thread", "thread", "loop", "thread"] if allowed else ["thread"] * 4
        assert where == expected, (safe, len(placed), choice)
        worker.executor.shutdown()


class Spinner(Recorder):
    """Recorder that spends ``spin_ns`` of its thread's CPU per execution (over INLINE_MAX_NS),
    and can count a call arriving while it runs."""

    def __init__(self, spin_ns: int = 300_000) -> None:
        super().__init__()
        self.spin_ns = spin_ns
        self.arrivals: list[int] | None = None

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        end = time.thread_time_ns() + self.spin_ns
        while time.thread_time_ns() < end:
            pass
        if self.arrivals is not None:
            self.arrivals[0] += 1
        return super().execute(inputs, outputs)


@contextlib.contextmanager
def probe(counts: list[int]) -> Iterator[ServerLoad]:
    """A front end's view for the running loop's server: ``counts[0]`` calls in flight."""
    load = current()
    count = lambda: counts[0]  # noqa: E731
    load.probes.append(count)
    try:
        yield load
    finally:
        load.probes.remove(count)
        load.contended_until_ns = 0


async def test_a_request_alone_runs_longer_executions_on_the_loop() -> None:
    """Over INLINE_MAX_NS an execution runs on its thread, unless the request is the server's
    only one and a front end can see arrivals (a probe): then the hop would only add latency."""
    backend = Spinner()
    scheduler = direct(backend)
    await run(scheduler, 5)  # no probe: nothing tells the loop is free to hold
    assert all(t.startswith("inst0") for t in backend.threads)
    arrivals = [1]  # the probe counts the caller's own call
    with probe(arrivals):
        await run(scheduler, 10)
        loop_thread = threading.current_thread().name
        assert backend.threads[-8:] == [loop_thread] * 8
        # Two calls in at once: neither is alone, whichever reaches the scheduler first.
        arrivals[0] = 2
        await asyncio.gather(scheduler.submit(work()), scheduler.submit(work()))
        assert backend.threads[-2].startswith("inst0") and backend.threads[-1].startswith("inst0")


async def test_an_arrival_while_the_loop_was_held_sends_executions_to_the_thread() -> None:
    backend = Spinner()
    scheduler = direct(backend)
    arrivals = [1]
    with probe(arrivals) as load:
        await run(scheduler, 5)
        assert backend.threads[-1] == threading.current_thread().name
        backend.arrivals = arrivals  # a call comes in during each execution
        await run(scheduler, 1)
        assert load.contended_until_ns > time.monotonic_ns()
        backend.arrivals = None
        await run(scheduler, 3)
        assert all(t.startswith("inst0") for t in backend.threads[-3:])
        load.contended_until_ns = 0  # the quiet period over
        arrivals[0] = 1
        await run(scheduler, 2)
        assert backend.threads[-1] == threading.current_thread().name


def batched(backend: Recorder) -> DynamicBatcher:
    worker = InstanceWorker(backend, "inst0", True, True)
    config = dynamic_batching(mc.ModelDynamicBatching())
    return DynamicBatcher([worker], ModelStats("m", "1"), "model 'm' version 1", 8, config)


async def test_a_request_alone_skips_the_batchers_task_and_requests_together_still_batch() -> None:
    """A dynamically batched model's request that is the server's only one, finding the batcher
    idle, is the batch its instance's task would form: it runs on the loop and finishes inside
    ``submit`` without suspending, as the direct scheduler's does. Requests that come together
    still meet in the queue and run as one batch."""
    backend = Spinner()
    scheduler = batched(backend)
    with probe([1]):
        await run(scheduler, 5)  # measured on the thread first, then on the loop
        loop_thread = threading.current_thread().name
        assert backend.threads[-3:] == [loop_thread] * 3
        call = scheduler.submit(work())
        with pytest.raises(StopIteration) as done:
            call.send(None)  # no suspension: no hop to the batcher's task
        assert done.value.value["Y"].tolist() == [[1.0]]
        stats = scheduler.stats
        assert stats.execution_count == stats.inference_count == 6
    with probe([2]):
        before = len(backend.threads)
        outs = await asyncio.gather(*(scheduler.submit(work()) for _ in range(3)))
        assert [o["Y"].tolist() for o in outs] == [[[1.0]]] * 3
        assert len(backend.threads) - before == 1  # one execution of three rows
        assert backend.threads[-1].startswith("inst0")
    await scheduler.retire(5)


PY_SPIN = """
import threading
import time
import numpy as np
import inferd.backends.python_api as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        end = time.thread_time_ns() + 300_000
        while time.thread_time_ns() < end:
            pass
        name = threading.current_thread().name.encode()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("THREAD", np.array([[name]], dtype=object))])
                for _ in requests]
"""


def _py_spin_repo(root: Path) -> Path:
    (root / "py_spin" / "1").mkdir(parents=True)
    (root / "py_spin" / "1" / "model.py").write_text(PY_SPIN)
    (root / "py_spin" / "config.pbtxt").write_text(
        'name: "py_spin"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "THREAD" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
    )
    return root


def _alone_then_contended(loop_thread: str, client: Callable[[], Callable[[], str]]) -> None:
    """``client()`` makes a client whose calls answer the thread py_spin ran on: ten calls of a
    lone client end on the event loop, two clients at once meet on the instance thread (or, on
    one CPU, stay on the loop: placement.py)."""
    one = client()
    threads = [one() for _ in range(10)]
    assert threads[-1] == loop_thread, threads
    results: list[str] = []

    def hammer() -> None:
        own = client()
        results.extend(own() for _ in range(60))

    pair = [threading.Thread(target=hammer) for _ in range(2)]
    for t in pair:
        t.start()
    for t in pair:
        t.join()
    if one_cpu():  # the test runs on one CPU: there the pair's executions stay on the loop too
        assert results[-40:] == [loop_thread] * 40, results
    else:
        assert any(name != loop_thread for name in results[-40:]), results


def test_a_lone_grpc_client_gets_executions_on_the_loop(tmp_path: Path) -> None:
    """A real server on the native front end: a Python model spending ~0.3 ms of CPU per
    execution runs on the event loop for a lone client, and on its thread for two at once."""
    import tritonclient.grpc as grpcclient

    from .conftest import start_server, test_settings

    running = start_server(test_settings(_py_spin_repo(tmp_path)))
    i = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    i.set_data_from_numpy(np.ones((1, 2), np.float32))

    def client() -> Callable[[], str]:
        own = grpcclient.InferenceServerClient(running.grpc_url)
        return lambda: str(own.infer("py_spin", [i]).as_numpy("THREAD")[0][0].decode())

    try:
        if running.server.grpc_frontend != "native":
            pytest.skip("the native gRPC front end is not built here (or the tests run on grpc.aio)")
        _alone_then_contended(running.thread.name, client)
    finally:
        running.stop()


def test_a_lone_http_client_gets_executions_on_the_loop(tmp_path: Path) -> None:
    """HTTP only (no gRPC port): the HTTP front end's probe lets a lone client's ~0.3 ms
    executions run on the event loop; two clients at once send them to the thread."""
    import httpx

    from .conftest import start_server, test_settings

    running = start_server(test_settings(_py_spin_repo(tmp_path), allow_grpc=False))
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    url = f"http://{running.http_url}/v2/models/py_spin/infer"
    opened: list[httpx.Client] = []

    def client() -> Callable[[], str]:
        own = httpx.Client(timeout=30)
        opened.append(own)
        return lambda: str(own.post(url, json=body).json()["outputs"][0]["data"][0])

    try:
        _alone_then_contended(running.thread.name, client)
    finally:
        for c in opened:
            c.close()
        running.stop()


def test_the_http_probe_sees_a_request_that_came_while_the_loop_was_held(tmp_path: Path) -> None:
    """While the loop is held, the bytes of a request on an open keep-alive connection wait in
    the kernel: the HTTP front end's probe counts them, unless they are a GET (health, metadata,
    statistics), which waiting behind the loop does not harm. A connection not yet accepted is
    not counted (monitoring opens one per call)."""
    import socket

    from .conftest import start_server, test_settings

    running = start_server(test_settings(_py_spin_repo(tmp_path), allow_grpc=False))
    try:
        probe_calls = running.server.http_server.calls
        assert probe_calls is not None and probe_calls in of_loop(running.loop).probes
        host, port = running.http_url.rsplit(":", 1)
        idle = socket.create_connection((host, int(port)))
        monitor = socket.create_connection((host, int(port)))
        time.sleep(0.2)  # accepted, nothing sent: not a call
        assert running.call(_probe_now(probe_calls)) == 0
        sent = threading.Event()
        late: list[socket.socket] = []

        async def held() -> tuple[int, int]:
            before = probe_calls()
            sent.wait(5)  # the loop is held: it reads nothing meanwhile
            time.sleep(0.1)
            return before, probe_calls()

        def send() -> None:
            monitor.sendall(b"GET /v2/models/py_spin/stats HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.sendall(b"POST /v2/models/py_spin/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            late.append(socket.create_connection((host, int(port))))
            sent.set()

        threading.Timer(0.05, send).start()
        before, during = running.call(held())
        # The POST's bytes; not the GET, nor a connection not yet accepted.
        assert before == 0 and during == 1, (before, during)
        for sock in (idle, monitor, *late):
            sock.close()
    finally:
        running.stop()


async def _probe_now(calls: Callable[[], int]) -> int:
    return calls()


def test_the_grpc_probe_counts_only_inference_calls(tmp_path: Path) -> None:
    """The native front end's probe counts ModelInfer calls that came while the loop was held,
    not health or statistics calls (perf_analyzer sends those beside its load)."""
    import tritonclient.grpc as grpcclient

    from .conftest import start_server, test_settings

    running = start_server(test_settings(_py_spin_repo(tmp_path)))
    try:
        server = running.server.grpc_server
        if running.server.grpc_frontend != "native":
            pytest.skip("the native gRPC front end is not built here (or the tests run on grpc.aio)")
        i = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        i.set_data_from_numpy(np.ones((1, 2), np.float32))
        stage = threading.Event()
        seen: list[tuple[int, int]] = []

        async def held() -> None:
            stage.wait(5)  # the loop is held: the calls wait in grpc++
            time.sleep(0.2)
            seen.append((server.calls_in_flight(), server.inference_calls_in_flight()))
            stage.clear()
            stage.wait(5)
            time.sleep(0.2)
            seen.append((server.calls_in_flight(), server.inference_calls_in_flight()))

        def calls() -> None:
            client = grpcclient.InferenceServerClient(running.grpc_url)
            waiting = [
                threading.Thread(target=client.is_server_live),
                threading.Thread(target=client.get_inference_statistics, args=("py_spin",)),
            ]
            for t in waiting:
                t.start()
            stage.set()
            while stage.is_set():
                time.sleep(0.01)
            infer = threading.Thread(target=client.infer, args=("py_spin", [i]))
            infer.start()
            stage.set()
            for t in (*waiting, infer):
                t.join(10)

        caller = threading.Thread(target=calls)
        caller.start()
        running.call(held())
        caller.join(15)
        assert seen == [(2, 0), (3, 1)], seen
    finally:
        running.stop()


def test_a_lone_client_stays_on_the_loop_beside_monitoring_calls(tmp_path: Path) -> None:
    """Health and statistics calls beside a lone client (what perf_analyzer and probes send) do
    not send its executions to the instance thread, over gRPC and HTTP."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from .conftest import start_server, test_settings

    running = start_server(test_settings(_py_spin_repo(tmp_path)))
    try:
        native = running.server.grpc_frontend == "native"
        for module, url in ((httpclient, running.http_url), (grpcclient, running.grpc_url)):
            if module is grpcclient and not native:
                continue
            i = module.InferInput("INPUT0", [1, 2], "FP32")
            i.set_data_from_numpy(np.ones((1, 2), np.float32))
            client = module.InferenceServerClient(url)
            monitor = module.InferenceServerClient(url)
            stop = threading.Event()

            watcher = threading.Thread(target=_watch, args=(monitor, stop))
            watcher.start()
            try:
                threads = [str(client.infer("py_spin", [i]).as_numpy("THREAD")[0][0].decode()) for _ in range(40)]
            finally:
                stop.set()
                watcher.join(10)
            assert threads[-20:] == [running.thread.name] * 20, (module.__name__, threads)
    finally:
        running.stop()


def _watch(monitor: Any, stop: threading.Event) -> None:
    """Health and statistics calls, as monitoring sends them, until ``stop``."""
    while not stop.is_set():
        monitor.is_server_ready()
        monitor.get_inference_statistics("py_spin")
        time.sleep(0.005)


def test_a_lone_clients_ensemble_steps_run_on_the_loop(tmp_path: Path) -> None:
    """An ensemble request is no second request beside its own steps: for a lone client, the
    step's ~0.3 ms executions run on the event loop as they would called directly."""
    import tritonclient.http as httpclient

    from .conftest import start_server, test_settings

    repo = _py_spin_repo(tmp_path)
    (repo / "spin_twice" / "1").mkdir(parents=True)
    (repo / "spin_twice" / "config.pbtxt").write_text(
        'name: "spin_twice"\nplatform: "ensemble"\nmax_batch_size: 4\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "WHERE" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "py_spin" model_version: -1 '
        'input_map { key: "INPUT0" value: "X" } output_map { key: "THREAD" value: "WHERE" } } ] }\n'
    )
    running = start_server(test_settings(repo, allow_grpc=False))
    try:
        client = httpclient.InferenceServerClient(running.http_url)
        i = httpclient.InferInput("X", [1, 2], "FP32")
        i.set_data_from_numpy(np.ones((1, 2), np.float32))
        threads = [str(client.infer("spin_twice", [i]).as_numpy("WHERE")[0][0].decode()) for _ in range(10)]
        assert threads[-5:] == [running.thread.name] * 5, threads
    finally:
        running.stop()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_server_on_one_cpu_runs_executions_on_the_loop_under_load(tmp_path: Path) -> None:
    """``inferd serve`` pinned to one CPU: two clients at once still get py_spin's ~0.3 ms
    executions on the event loop (the main thread), where an instance thread would only take
    turns with it; the same model behind a dynamic batcher keeps its thread."""
    import subprocess

    import tritonclient.grpc as grpcclient

    from .serving import serve_argv

    repo = _py_spin_repo(tmp_path)
    (repo / "py_spin_batched" / "1").mkdir(parents=True)
    (repo / "py_spin_batched" / "1" / "model.py").write_text(PY_SPIN)
    config = (repo / "py_spin" / "config.pbtxt").read_text().replace('"py_spin"', '"py_spin_batched"')
    (repo / "py_spin_batched" / "config.pbtxt").write_text(config + "dynamic_batching { }\n")
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        serve_argv("--model-repository", str(repo), "--allow-http", "false"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the server exited"
            found = re.search(r"gRPC \(KServe v2\) listening on ([\d.]+:\d+)", line)
            url = found.group(1) if found else ""
        client = grpcclient.InferenceServerClient(url)
        while not client.is_server_ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        i = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        i.set_data_from_numpy(np.ones((1, 2), np.float32))
        for model in ("py_spin", "py_spin_batched"):
            results: list[str] = []
            pair = [threading.Thread(target=_infer_threads, args=(url, model, i, results)) for _ in range(2)]
            for t in pair:
                t.start()
            for t in pair:
                t.join(60)
            if model == "py_spin":
                assert results[-40:] == ["MainThread"] * 40, results
            else:
                assert any(name != "MainThread" for name in results[-40:]), results
    finally:
        proc.kill()
        proc.wait(10)


def _infer_threads(url: str, model: str, inputs: Any, into: list[str], n: int = 40) -> None:
    """``n`` gRPC requests to py_spin-like ``model``: the threads they ran on, into ``into``."""
    import tritonclient.grpc as grpcclient

    own = grpcclient.InferenceServerClient(url)
    into.extend(str(own.infer(model, [inputs]).as_numpy("THREAD")[0][0].decode()) for _ in range(n))
