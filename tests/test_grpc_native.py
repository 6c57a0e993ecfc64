"""The native gRPC front end (grpc++, frontends/grpc_native.py): which front end serves, and the
call lifecycle that grpc.aio handled by itself: deadlines, cancellations, unknown methods, and no
call left behind. The rest of the suite runs its gRPC tests on whichever front end is the
default here (`make test-grpc-aio` runs them on grpc.aio too)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server.frontends import grpc_native
from inferd.server.frontends.grpc_native import FrontendRefused, NativeServer, choose_grpc_frontend
from inferd.server.tls import TlsFiles
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write
from .tls_certs import make_certificates

needs_native = pytest.mark.skipif(not grpc_native.available(), reason=str(grpc_native.UNAVAILABLE_REASON))

# A request waits 0.5 s in the batcher: long enough to cancel it or let its deadline pass.
SLOW_ADD_SUB = bundled.ADD_SUB_CONFIG.replace(
    "instance_group", "dynamic_batching { max_queue_delay_microseconds: 500000 }\ninstance_group"
)


def test_built_where_required() -> None:
    """CI installs grpc++ (INFERD_REQUIRE_NATIVE_GRPC=1): there a missing build fails the run."""
    if os.environ.get("INFERD_REQUIRE_NATIVE_GRPC") != "1":
        pytest.skip("INFERD_REQUIRE_NATIVE_GRPC is not set")
    assert grpc_native.available(), grpc_native.UNAVAILABLE_REASON


def test_choice_of_front_end() -> None:
    assert choose_grpc_frontend("aio") == "aio"
    assert choose_grpc_frontend("auto") == ("native" if grpc_native.available() else "aio")
    if grpc_native.available():
        assert choose_grpc_frontend("native") == "native"
    else:
        with pytest.raises(FrontendRefused, match="libgrpc"):
            choose_grpc_frontend("native")


@needs_native
def test_native_serves_tls_from_private_copies(tmp_path: Path) -> None:
    """grpc++ reads inferd's copies of the certificates (the key with mode 0600 in a 0700
    folder), which go with the server."""
    certs = make_certificates(tmp_path / "certs")
    write(tmp_path / "repo", "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    running = start_server(
        test_settings(
            tmp_path / "repo",
            grpc_frontend="native",
            grpc_tls=TlsFiles("grpc", certs.server.cert, certs.server.key),
            allow_http=False,
            allow_metrics=False,
        )
    )
    try:
        assert running.server.grpc_frontend == "native"
        identity, root = running.server.tls["grpc"].native_files()
        folder = Path(identity).parent
        assert root == "" and oct(folder.stat().st_mode & 0o777) == "0o700"
        assert oct(Path(identity).stat().st_mode & 0o777) == "0o600"
        client = grpcclient.InferenceServerClient(running.grpc_url, ssl=True, root_certificates=str(certs.ca.path))
        ones = np.ones((1, 16), np.float32)
        inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(ones)
        np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), ones * 2)
        client.close()
    finally:
        running.stop()
    assert not folder.exists()


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not grpc_native.available():
        pytest.skip(str(grpc_native.UNAVAILABLE_REASON))
    root = tmp_path_factory.mktemp("slow")
    write(root, "add_sub", SLOW_ADD_SUB, bundled.add_sub_model())
    running = start_server(test_settings(root, grpc_frontend="native"))
    yield running
    running.stop()


def _inputs() -> list[grpcclient.InferInput]:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    out = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def _calls_end(running: RunningServer, timeout: float = 10) -> None:
    """Every call the native front end took has ended (grpc++ and Python let go of it)."""
    server = running.server.grpc_server
    assert isinstance(server, NativeServer)
    deadline = time.monotonic() + timeout
    while server.calls_in_flight() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.calls_in_flight() == 0


def test_deadline_passes_and_the_call_ends(slow: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(slow.grpc_url)
    with pytest.raises(InferenceServerException, match="DEADLINE_EXCEEDED"):
        client.infer("add_sub", _inputs(), client_timeout=0.1)
    _calls_end(slow)
    out = client.infer("add_sub", _inputs()).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, 2 * np.arange(16, dtype=np.float32).reshape(1, 16))


def test_cancelled_calls_end(slow: RunningServer) -> None:
    with grpc.insecure_channel(slow.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="add_sub")
        for name in ("INPUT0", "INPUT1"):
            t = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
            t.contents.fp32_contents.extend([1.0] * 16)
        unary = [stub.ModelInfer.future(request) for _ in range(20)]
        stream = stub.ModelStreamInfer(iter([request] * 3))
        time.sleep(0.1)
        for f in unary:
            f.cancel()
        stream.cancel()
        # Full batches (8) ran at once; the rest waited in the batcher and were cancelled there.
        assert sum(f.cancelled() for f in unary) >= 4
    _calls_end(slow)


def test_unknown_methods_are_unimplemented(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        for method in ("/inference.GRPCInferenceService/NoSuchMethod", "/no.Such/Service"):
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(method)(b"")
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_many_calls_some_cancelled_all_answered(server: RunningServer) -> None:
    if not isinstance(server.server.grpc_server, NativeServer):
        pytest.skip("the suite's server runs on grpc.aio here")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="add_sub")
        for name in ("INPUT0", "INPUT1"):
            t = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
            t.contents.fp32_contents.extend(range(16))
        futures = [stub.ModelInfer.future(request) for _ in range(600)]
        for f in futures[::3]:
            f.cancel()
        answered = 0
        for f in futures:
            if f.cancelled():
                continue
            response = f.result(timeout=30)
            out = np.frombuffer(response.raw_output_contents[0], np.float32)
            np.testing.assert_array_equal(out, 2 * np.arange(16, dtype=np.float32))
            answered += 1
        assert answered >= 400
    _calls_end(server)


# A front end whose loop is gone holds a call Python never answers, and is dropped.
_DROPPED_FRONT_END = """
import gc, sys, threading, time
import grpc
from inferd.server.frontends import _native_grpc

frontend = _native_grpc.Frontend("127.0.0.1:0", [], 1 << 20, 1 << 20)
channel = grpc.insecure_channel(f"127.0.0.1:{frontend.port}")
call = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
outcome = []

def ask():
    try:
        call(b"", timeout=60)
        outcome.append("answered")
    except grpc.RpcError as e:
        outcome.append(e.code().name)

asker = threading.Thread(target=ask)
asker.start()
deadline = time.monotonic() + 20
while not frontend.drain():  # the call reached the front end (and Python "holds" it)
    if time.monotonic() > deadline:
        sys.exit("the call never arrived")
    time.sleep(0.01)
del frontend
gc.collect()
asker.join(20)
print(outcome)
"""


@needs_native
def test_a_front_end_dropped_without_stop_ends_the_calls_it_holds() -> None:
    """Dropped without ``stop()`` (its loop gone after a start-up fault), the native front end
    ends the calls Python never answered (UNAVAILABLE) instead of waiting for them forever."""
    done = subprocess.run([sys.executable, "-c", _DROPPED_FRONT_END], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "['UNAVAILABLE']", done.stdout + done.stderr


async def test_a_call_cancelled_before_its_task_starts_sees_its_future_cancelled() -> None:
    """A unary handler stepped by hand and cancelled before its Task's first step gets what a
    Task would give it: the future it waits on cancelled, then CancelledError where it waits."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    seen: list[str] = []

    async def handler() -> int:
        try:
            return await fut
        except asyncio.CancelledError:
            seen.append("cancelled" if fut.cancelled() else "pending")
            raise

    coro = handler()
    waiting = coro.send(None)
    assert waiting is fut
    task = loop.create_task(grpc_native._Resume(coro, waiting))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]

    # Not cancelled: the Task carries the coroutine on to its result.
    fut2: asyncio.Future[int] = loop.create_future()

    async def handler2() -> int:
        return await fut2 + 1

    coro2 = handler2()
    task2 = loop.create_task(grpc_native._Resume(coro2, coro2.send(None)))
    fut2.set_result(41)
    assert await task2 == 42
