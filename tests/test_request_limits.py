"""What one request or connection may cost (server/frontends/request_limits.py): encodings that
expand when decoded are refused before they expand, malformed messages on any RPC are the
client's error, slow and surplus connections are closed and counted on /metrics."""

from __future__ import annotations

import socket
import struct
import time

import grpc
import httpx
import numpy as np
import pytest
from inferd.perf.request_memory import wire_field
from inferd.protocol.errors import InvalidArgument, ResourceExhausted
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.server.frontends import grpc_cost
from inferd.server.frontends import http_convert as conv
from inferd.server.frontends.grpc_convert import InferCodec
from inferd.server.frontends.grpc_wire import encode_varint
from inferd.server.frontends.request_limits import RequestLimits

from .conftest import start_server, test_settings

LIMIT = 1000


def _tensor(datatype: str, shape: list[int], contents: bytes = b"") -> bytes:
    t = (
        wire_field(1, b"INPUT0")
        + wire_field(2, datatype.encode())
        + wire_field(3, b"".join(encode_varint(d) for d in shape))
    )
    return t + (wire_field(5, contents) if contents else b"")


def _request(*fields: bytes) -> bytes:
    return wire_field(1, b"add_sub") + b"".join(fields)


# --- gRPC: expansion refused before protobuf parses ---------------------------------------------
EXPANDING = {
    # 2-byte fields that each become a message and a Python wrapper (~500 bytes)
    "empty inputs": _request(b"\x2a\x00" * 70000),
    "empty outputs": _request(b"\x32\x00" * 70000),
    "empty raw entries": _request(wire_field(5, _tensor("FP32", [1, 16])), b"\x3a\x00" * 70000),
    # 1-byte varints that become 8-byte int64s, twice (protobuf's array, then numpy's)
    "int64 contents": _request(wire_field(5, _tensor("INT64", [1, 100000], wire_field(3, bytes(100000))))),
    "shape dims": _request(
        wire_field(5, wire_field(1, b"INPUT0") + wire_field(2, b"FP32") + wire_field(3, b"\x01" * 100000))
    ),
    # 4-byte entries that become a 16-byte view and then a Python bytes object each
    "bytes contents": _request(wire_field(5, _tensor("BYTES", [1, 30000], b"\x42\x02ab" * 30000))),
    "fp32 contents": _request(wire_field(5, _tensor("FP32", [1, 30000], wire_field(6, bytes(120000))))),
}


@pytest.mark.parametrize("case", list(EXPANDING))
def test_expanding_grpc_messages_refused_before_parsing(case: str) -> None:
    data = EXPANDING[case]
    assert len(data) > grpc_cost.SCAN_MIN_BYTES
    t = time.perf_counter()
    with pytest.raises(ResourceExhausted):
        InferCodec(max_elements=LIMIT).decode(data)
    assert time.perf_counter() - t < 1.0


def test_cost_check_counts_values_exactly() -> None:
    """A message at the limit passes the check; one value more is refused."""
    contents = wire_field(3, b"\x01" * (LIMIT - 2 - 1) + b"\x80\x01")  # varints: 998 one-byte, 1 two-byte
    data = _request(wire_field(5, _tensor("INT64", [1, LIMIT - 2], contents)), b"\x00" * grpc_cost.SCAN_MIN_BYTES)
    # fields of the tensor: name, datatype (1 each), shape (2 dims), contents (LIMIT - 2 values)
    grpc_cost.check(data, LIMIT + 2)
    with pytest.raises(ResourceExhausted):
        grpc_cost.check(data, LIMIT + 1)


def test_contents_still_decode_under_the_limit() -> None:
    """The fromiter path gives what np.array gave, range errors included."""
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="A", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([1, -2, 3])
    f = msg.inputs.add(name="B", datatype="FP32", shape=[1, 2])
    f.contents.fp32_contents.extend([0.5, 1.5])
    b = msg.inputs.add(name="C", datatype="BYTES", shape=[2])
    b.contents.bytes_contents.extend([b"x", b""])
    request = InferCodec(max_elements=LIMIT).decode(msg.SerializeToString())
    assert request.inputs["A"].dtype == np.int8 and request.inputs["A"].tolist() == [1, -2, 3]
    assert request.inputs["B"].dtype == np.float32 and request.inputs["B"].tolist() == [[0.5, 1.5]]
    assert request.inputs["C"].tolist() == [b"x", b""]
    t.contents.int_contents[0] = 300
    with pytest.raises(InvalidArgument, match="does not fit INT8"):
        InferCodec().decode(msg.SerializeToString())


def test_small_contents_counted_too() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="A", datatype="BYTES", shape=[20])
    t.contents.bytes_contents.extend([b"x"] * 20)
    with pytest.raises(ResourceExhausted, match="--max-request-elements"):
        InferCodec(max_elements=10).decode(msg.SerializeToString())


def test_raw_bytes_elements_counted_after_the_size_check() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="A", datatype="BYTES", shape=[20])
    msg.raw_input_contents.append(b"".join(struct.pack("<I", 1) + b"x" for _ in range(20)))
    with pytest.raises(ResourceExhausted):
        InferCodec(max_elements=10).decode(msg.SerializeToString())
    msg.inputs[0].shape[:] = [10**6]  # more elements than the bytes can hold: the client's error first
    with pytest.raises(InvalidArgument, match="cannot hold"):
        InferCodec(max_elements=10).decode(msg.SerializeToString())


def test_a_group_field_is_not_a_request() -> None:
    with pytest.raises(InvalidArgument, match="not a valid ModelInferRequest"):
        grpc_cost.check(_request(b"\x0b" + b"\x00" * grpc_cost.SCAN_MIN_BYTES), LIMIT)


# --- HTTP: JSON values and BYTES elements -------------------------------------------------------
@pytest.mark.parametrize("item", [b"[]", b"{}", b"0", b'"ab"'])
def test_json_with_too_many_values_refused_before_parsing(item: bytes) -> None:
    text = b'{"inputs":[' + b",".join([item] * 2000) + b"]}"
    with pytest.raises(ResourceExhausted, match="JSON body"):
        conv.parse_json(text, LIMIT)
    assert conv.parse_json(text, 10 * LIMIT)["inputs"][0] is not None


def test_binary_bytes_elements_counted() -> None:
    raw = b"".join(struct.pack("<I", 1) + b"x" for _ in range(20))
    doc = b'{"inputs":[{"name":"A","datatype":"BYTES","shape":[20],"parameters":{"binary_data_size":%d}}]}' % len(raw)
    body = memoryview(doc + raw)
    with pytest.raises(ResourceExhausted):
        conv.decode_request("m", "", body, len(doc), max_elements=10)
    request, _ = conv.decode_request("m", "", body, len(doc), max_elements=20)
    assert len(request.inputs["A"]) == 20


def test_json_strings_decode_to_bytes() -> None:
    doc = {"inputs": [{"name": "A", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["\u00e9"]]}]}
    request, _ = conv.request_from_json("m", "", doc, memoryview(b""))
    assert request.inputs["A"].tolist() == [[b"a"], ["\u00e9".encode()]]


# --- servers ------------------------------------------------------------------------------------
FAST = RequestLimits(
    max_elements=LIMIT,
    http_header_timeout_s=0.5,
    http_body_timeout_s=0.5,
    http_max_connections=4,
    grpc_stream_max_inflight=1,
    grpc_handshake_timeout_s=0.5,
)


@pytest.fixture(scope="module")
def limited(model_repo):  # type: ignore[no-untyped-def]
    running = start_server(test_settings(model_repo, request_limits=FAST))
    yield running
    running.stop()


def _refused(running, protocol: str, reason: str) -> float:  # type: ignore[no-untyped-def]
    text = httpx.get(f"http://{running.metrics_url}/metrics").text
    line = f'inferd_refused_total{{protocol="{protocol}",reason="{reason}"}}'
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass  # a response (e.g. 400) before the close is fine
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _connect(url: str) -> socket.socket:
    host, port = url.rsplit(":", 1)
    return socket.create_connection((host, int(port)))


def test_http_headers_never_finished_are_timed_out(limited) -> None:  # type: ignore[no-untyped-def]
    before = _refused(limited, "http", "header_timeout")
    with _connect(limited.http_url) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert _closed_within(s, 5)
    with _connect(limited.http_url) as s:  # nothing at all
        assert _closed_within(s, 5)
    assert _refused(limited, "http", "header_timeout") == before + 2


def test_http_body_stalled_is_timed_out(limited) -> None:  # type: ignore[no-untyped-def]
    before = _refused(limited, "http", "body_timeout")
    with _connect(limited.http_url) as s:
        s.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        assert _closed_within(s, 5)
    assert _refused(limited, "http", "body_timeout") == before + 1


def test_http_keeps_a_connection_that_makes_progress(limited) -> None:  # type: ignore[no-untyped-def]
    """Timers run per request: a keep-alive connection serves request after request."""
    with httpx.Client(base_url=f"http://{limited.http_url}") as client:
        for _ in range(3):
            assert client.get("/v2/health/live").status_code == 200
            time.sleep(0.3)


def test_http_connections_over_the_cap_are_closed(limited) -> None:  # type: ignore[no-untyped-def]
    before = _refused(limited, "http", "too_many_connections")
    held = [_connect(limited.http_url) for _ in range(4)]
    try:
        time.sleep(0.1)
        with _connect(limited.http_url) as extra:
            assert _closed_within(extra, 0.4)  # at once, not at the header timeout
    finally:
        for s in held:
            s.close()
    assert _refused(limited, "http", "too_many_connections") >= before + 1


def test_grpc_connection_without_http2_is_closed(limited) -> None:  # type: ignore[no-untyped-def]
    with _connect(limited.grpc_url) as s:  # connects, never sends the HTTP/2 preface
        t = time.monotonic()
        assert _closed_within(s, 10)
        assert time.monotonic() - t < 5  # grpc's own default would hold it 120 s


def test_grpc_malformed_messages_are_invalid_argument(limited) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(limited.grpc_url) as channel:
        for method in ("ServerLive", "ModelMetadata", "RepositoryIndex", "LogSettings"):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(f"/inference.GRPCInferenceService/{method}")(b"\xff\xff\xff", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "DecodeError" not in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_refusals_counted(limited) -> None:  # type: ignore[no-untyped-def]
    before = _refused(limited, "grpc", "too_many_elements")
    options = [("grpc.max_send_message_length", 1 << 24)]
    with grpc.insecure_channel(limited.grpc_url, options=options) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                EXPANDING["empty raw entries"], timeout=10
            )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with grpc.insecure_channel(limited.grpc_url, options=options) as channel:
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(EXPANDING["int64 contents"], timeout=10)
    assert _refused(limited, "grpc", "too_many_elements") == before + 1


def test_stream_with_one_request_in_flight_answers_all_in_order(limited) -> None:  # type: ignore[no-untyped-def]
    a = np.ones((1, 16), np.float32)
    requests = []
    for i in range(20):
        msg = pb.ModelInferRequest(model_name="add_sub", id=str(i), raw_input_contents=[a.tobytes()] * 2)
        for name in ("INPUT0", "INPUT1"):
            msg.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        requests.append(msg.SerializeToString())
    with grpc.insecure_channel(limited.grpc_url) as channel:
        answers = list(
            channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(iter(requests), timeout=30)
        )
    ids = [pb.ModelStreamInferResponse.FromString(r).infer_response.id for r in answers]
    assert ids == [str(i) for i in range(20)]


def test_stream_error_for_a_refused_message_names_its_request(limited) -> None:  # type: ignore[no-untyped-def]
    data = wire_field(3, b"req-7") + EXPANDING["empty raw entries"]
    with grpc.insecure_channel(limited.grpc_url, options=[("grpc.max_send_message_length", 1 << 24)]) as channel:
        (answer,) = list(
            channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(iter([data]), timeout=30)
        )
    msg = pb.ModelStreamInferResponse.FromString(answer)
    assert "top-level fields" in msg.error_message
    assert msg.infer_response.id == "req-7" and msg.infer_response.model_name == "add_sub"


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_http_timeouts_with_either_uvicorn_parser(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn uses httptools when installed, else h11 (a plain `pip install uvicorn`)."""
    import asyncio

    from inferd.server.frontends import http_connections
    from inferd.server.frontends.asgi_server import AsgiServer
    from inferd.server.frontends.request_limits import Refusals
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    if parser == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        monkeypatch.setattr(http_connections, "_uvicorn_protocol", lambda: H11Protocol)

    async def echo(request: Request) -> Response:
        return Response(await request.body())

    async def main() -> None:
        refusals = Refusals()
        app = Starlette(routes=[Route("/", echo, methods=["POST"])])
        server = AsgiServer(app, "127.0.0.1", 0, 1.0, limits=FAST, refusals=refusals)
        port = await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(2):  # a keep-alive connection that makes progress is served
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
                head = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                await asyncio.sleep(0.3)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nok")  # then stalls
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert refusals.get("http", "body_timeout") == 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert refusals.get("http", "header_timeout") == 1
        finally:
            await server.stop()

    asyncio.run(main())
