"""Triton's ``triton_grpc_error`` mode of ModelStreamInfer (Triton 24.08+), with tritonclient's
streaming API as Triton's L0 test (``L0_backend_python/lifecycle``) drives it: a stream started
with the metadata ``triton_grpc_error: true`` ends at its first error with that error's gRPC
status; without it errors travel in-band and the stream goes on. On both gRPC front ends
(``INFERD_TEST_GRPC_FRONTEND=aio`` for grpc.aio)."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.server.frontends.grpc_convert import InferCodec
from tritonclient.utils import InferenceServerException

from . import decoupled_models
from .conftest import RunningServer, start_server, test_settings

ON = {"triton_grpc_error": "true"}


@pytest.fixture(scope="module")
def dserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(test_settings(decoupled_models.build(tmp_path_factory.mktemp("stream_errors"))))
    yield running
    running.stop()


class Stream:
    """One tritonclient stream and what its callback received."""

    def __init__(self, url: str, headers: dict[str, str] | None) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)), headers=headers)

    def send(self, model: str, inputs: dict[str, np.ndarray], rid: str = "") -> None:
        tensors = []
        for name, array in inputs.items():
            datatype = {"i": "INT32", "u": "UINT32", "f": "FP32"}[array.dtype.kind]
            t = grpcclient.InferInput(name, list(array.shape), datatype)
            t.set_data_from_numpy(array)
            tensors.append(t)
        self.client.async_stream_infer(model, tensors, request_id=rid)

    def take(self, timeout: float = 10) -> tuple[Any, Any]:
        return self.results.get(timeout=timeout)

    def nothing_more(self, wait: float = 0.3) -> bool:
        time.sleep(wait)
        return self.results.empty()

    def close(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


def doubled(stream: Stream, rid: str, values: list[int]) -> None:
    """A good request to the ordinary model ``double`` is answered with its values doubled."""
    stream.send("double", {"IN": np.array(values, np.int32)}, rid=rid)
    result, error = stream.take()
    assert error is None, error
    assert result.get_response().id == rid
    assert result.as_numpy("OUT").tolist() == [2 * v for v in values]


def assert_closed(stream: Stream) -> None:
    """Nothing follows the status, and the client refuses to send more on the stream."""
    assert stream.nothing_more()
    with pytest.raises(InferenceServerException, match="no longer in valid state"):
        stream.send("double", {"IN": np.array([1], np.int32)})
    assert stream.nothing_more(0.1)


# (model, inputs) of failing requests, and the status each ends the stream with.
FAILING = {
    "unknown_model": ("no_such_model", {"IN": np.array([1], np.int32)}, "StatusCode.NOT_FOUND", "no_such_model"),
    "wrong_datatype": ("double", {"IN": np.array([1.5], np.float32)}, "StatusCode.INVALID_ARGUMENT", "IN"),
    "wrong_shape": ("params", {"X": np.zeros((1, 3), np.float32)}, "StatusCode.INVALID_ARGUMENT", "X"),
}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_header_on_the_first_error_ends_the_stream_with_its_status(dserver: RunningServer, case: str) -> None:
    model, inputs, status, named = FAILING[case]
    s = Stream(dserver.grpc_url, ON)
    try:
        doubled(s, "good", [1, 2])
        s.send(model, inputs, rid="bad")
        result, error = s.take()
        assert result is None and isinstance(error, InferenceServerException)
        assert error.status() == status
        assert named in error.message()
        assert_closed(s)
    finally:
        s.close()


def test_header_on_responses_before_the_error_come_first(dserver: RunningServer) -> None:
    """Requests to an ordinary model are answered in order, so those sent before the failing
    one are answered before the status; nothing after it."""
    s = Stream(dserver.grpc_url, ON)
    try:
        for i in range(5):
            s.send("double", {"IN": np.array([i], np.int32)}, rid=str(i))
        s.send("no_such_model", {"IN": np.array([1], np.int32)}, rid="bad")
        for i in range(5, 10):
            s.send("double", {"IN": np.array([i], np.int32)}, rid=str(i))
        got = [s.take() for _ in range(6)]
        assert s.nothing_more()
    finally:
        s.close()
    assert [r.get_response().id for r, _ in got[:5]] == ["0", "1", "2", "3", "4"]
    assert got[5][0] is None and got[5][1].status() == "StatusCode.NOT_FOUND"


# Without the header, with "false", or with any value but exactly "true" (Triton compares the
# value with "true" as it is): errors travel in-band and the stream goes on.
@pytest.mark.parametrize("headers", [None, {"triton_grpc_error": "false"}, {"triton_grpc_error": "True"}])
def test_header_off_errors_travel_in_band_and_the_stream_goes_on(
    dserver: RunningServer, headers: dict[str, str] | None
) -> None:
    s = Stream(dserver.grpc_url, headers)
    try:
        for i, (model, inputs, _, named) in enumerate(FAILING.values()):
            doubled(s, f"good{i}", [i])
            s.send(model, inputs, rid=f"bad{i}")
            result, error = s.take()
            assert result is None and named in error.message()
            assert error.status() is None  # in-band: tritonclient sees only the message
        doubled(s, "after", [7])
        # A decoupled model's error response, then its last response: the stream goes on.
        s.send("square", {"IN": np.array([-1], np.int32)}, rid="mid")
        got = [s.take() for _ in range(3)]
        assert got[1][0] is None and "step 2 failed" in got[1][1].message()
        assert int(got[2][0].as_numpy("OUT")[0]) == 3
        doubled(s, "last", [8])
    finally:
        s.close()


def test_two_streams_one_ends_the_other_goes_on(dserver: RunningServer) -> None:
    """As Triton's ``test_triton_grpc_error_multithreaded``: streams in the mode end alone."""
    failing, healthy = Stream(dserver.grpc_url, ON), Stream(dserver.grpc_url, ON)
    errors: list[BaseException] = []

    def keep_going() -> None:
        try:
            for i in range(20):
                doubled(healthy, f"h{i}", [i, i + 1])
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    try:
        thread = threading.Thread(target=keep_going)
        thread.start()
        doubled(failing, "f0", [3])
        failing.send("double", {"IN": np.array([1.5], np.float32)}, rid="bad")
        _, error = failing.take()
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        thread.join(30)
        assert not errors, errors
        assert_closed(failing)
        doubled(healthy, "after", [5])
        assert healthy.nothing_more()
    finally:
        failing.close()
        healthy.close()


def _metric(dserver: RunningServer, name: str) -> float:
    text = httpx.get(f"http://{dserver.metrics_url}/metrics", timeout=10).text
    found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_decoupled_error_response_ends_the_stream_and_cancels_the_rest(dserver: RunningServer) -> None:
    """The model's error response ends the stream with its status (the responses before it
    delivered, none after it), and the stream's other requests are cancelled."""
    seen_before = _metric(dserver, "endless_cancellations_seen")
    s = Stream(dserver.grpc_url, ON)
    try:
        s.send("endless", {"SIZE": np.array([4], np.int32)}, rid="endless")
        first, error = s.take()
        assert error is None and first.get_response().id == "endless"
        s.send("square", {"IN": np.array([-1], np.int32)}, rid="mid")
        # endless keeps streaming: read until square's good response and then the status.
        square = []
        while True:
            result, error = s.take()
            if error is not None:
                break
            if result.get_response().id == "mid":
                square.append(int(result.as_numpy("OUT")[0]))
        assert square == [1]
        assert error.status() == "StatusCode.INTERNAL"
        assert "step 2 failed" in error.message()
        assert_closed(s)
    finally:
        s.close()
    deadline = time.monotonic() + 10
    while _metric(dserver, "endless_cancellations_seen") == seen_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(dserver, "endless_cancellations_seen") == seen_before + 1


def test_a_failed_execute_ends_the_stream(dserver: RunningServer) -> None:
    """As Triton's ``test_triton_grpc_error_error_on``: a model whose execute fails ends the
    stream with INTERNAL and Triton's message."""
    s = Stream(dserver.grpc_url, ON)
    try:
        s.send("square", {"IN": np.array([1000], np.int32)}, rid="raised")
        result, error = s.take()
        assert error is None and int(result.as_numpy("OUT")[0]) == 1
        _, error = s.take()
        assert error.status() == "StatusCode.INTERNAL"
        assert error.message() == "Failed to process the request(s) for model 'square', message: execute gave up"
        assert_closed(s)
    finally:
        s.close()


def test_a_server_fault_ends_the_stream_as_internal_error(
    dserver: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault of the server reads "internal error" with INTERNAL, never Python's words."""
    encode = InferCodec.encode_stream

    def faulty(self: InferCodec, response: Any) -> bytes:
        if response.id == "boom":
            raise RuntimeError("a secret the client must not read")
        return encode(self, response)

    monkeypatch.setattr(InferCodec, "encode_stream", faulty)
    s = Stream(dserver.grpc_url, ON)
    try:
        doubled(s, "good", [1])
        s.send("double", {"IN": np.array([1], np.int32)}, rid="boom")
        _, error = s.take()
        assert error.status() == "StatusCode.INTERNAL"
        assert error.message() == "internal error"
        assert_closed(s)
    finally:
        s.close()
    assert "a secret the client must not read" in caplog.text  # logged for the operator
