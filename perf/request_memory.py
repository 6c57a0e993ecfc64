"""``inferd perf fuzz --memory``: the most memory one request can make the server take.

Each case is one hostile request of the worst kind for its transport, sized to the default
limits (256 MiB gRPC messages, 64 MiB HTTP bodies, 4 Mi decoded elements), sent to a fresh
``inferd serve`` with no models (decoding happens before the model is looked up). The figure is
the server's peak RSS (VmHWM, reset first through /proc/PID/clear_refs) minus its RSS before.
The README's "Limits" section quotes these figures.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from ..server.frontends.grpc_wire import encode_varint
from .fuzz import Server

GRPC_LIMIT = 256 << 20
HTTP_LIMIT = 64 << 20
ELEMENTS = 4 << 20


def wire_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand so it can say anything."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def _tensor(datatype: str, shape: list[int], contents: bytes = b"") -> bytes:
    t = (
        wire_field(1, b"INPUT0")
        + wire_field(2, datatype.encode())
        + wire_field(3, b"".join(encode_varint(d) for d in shape))
    )
    return wire_field(5, t + (wire_field(5, contents) if contents else b""))


def _grpc_cases() -> dict[str, bytes]:
    n = GRPC_LIMIT - 4096
    k = ELEMENTS - 16
    return {
        "raw FP32 tensor at the message limit": wire_field(1, b"m")
        + _tensor("FP32", [n // 4])
        + wire_field(7, bytes(n // 4 * 4)),
        "raw BYTES, 1-byte elements, at the element limit": wire_field(1, b"m")
        + _tensor("BYTES", [k])
        + wire_field(7, (struct.pack("<I", 1) + b"a") * k),
        "bytes_contents, 2-byte elements, at the element limit": wire_field(1, b"m")
        + _tensor("BYTES", [k], b"\x42\x02ab" * k),
        "int64_contents, 1-byte varints, at the element limit": wire_field(1, b"m")
        + _tensor("INT64", [k], wire_field(3, b"\x01" * k)),
        "fp32_contents at the element limit": wire_field(1, b"m") + _tensor("FP32", [k], wire_field(6, bytes(4 * k))),
        "empty inputs up to the message limit (refused)": wire_field(1, b"m") + b"\x2a\x00" * (n // 2),
        "int64_contents up to the message limit (refused)": wire_field(1, b"m")
        + _tensor("INT64", [n], wire_field(3, bytes(n - 64))),
    }


def _http_cases() -> dict[str, tuple[bytes, dict[str, str]]]:
    k = ELEMENTS - 16
    js = {"content-type": "application/json"}

    def infer(datatype: str, shape: list[int], data: bytes) -> bytes:
        head = json.dumps({"name": "INPUT0", "datatype": datatype, "shape": shape})[:-1].encode()
        return b'{"inputs":[' + head + b',"data":[' + data + b"]}]}"

    f = (HTTP_LIMIT - 4096) // 4
    hdr = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [f], "parameters": {"binary_data_size": 4 * f}}]}
    ).encode()
    b = k
    hdr_b = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [b], "parameters": {"binary_data_size": 6 * b}}]}
    ).encode()
    return {
        "JSON 2-character strings at the element limit": (infer("BYTES", [k], b",".join([b'"ab"'] * k)), js),
        "JSON numbers at the element limit": (infer("FP32", [k], b",".join([b"0.5"] * k)), js),
        "JSON empty lists at the element limit": (infer("FP32", [k], b",".join([b"[]"] * k)), js),
        "JSON empty lists at the body limit (refused)": (
            infer("FP32", [1], b",".join([b"[]"] * ((HTTP_LIMIT - 200) // 3))),
            js,
        ),
        "binary FP32 at the body limit": (
            hdr + bytes(4 * f),
            {"content-type": "application/octet-stream", "inference-header-content-length": str(len(hdr))},
        ),
        "binary BYTES, 2-byte elements, at the element limit": (
            hdr_b + (struct.pack("<I", 2) + b"ab") * b,
            {"content-type": "application/octet-stream", "inference-header-content-length": str(len(hdr_b))},
        ),
    }


def _status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _measure(send: Callable[[Server], str]) -> tuple[float, float, str]:
    """(peak growth MB, seconds, answer) of one request against a fresh server."""
    limits = ["--grpc-max-message-bytes", str(GRPC_LIMIT), "--http-max-body-bytes", str(HTTP_LIMIT)]
    server = Server([*limits, "--max-request-elements", str(ELEMENTS)])
    try:
        time.sleep(1.0)
        pid = server.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status(pid)["VmRSS"]
        t = time.perf_counter()
        answer = send(server)
        seconds = time.perf_counter() - t
        time.sleep(0.2)
        return _status(pid)["VmHWM"] - before, seconds, answer
    finally:
        server.stop()


def memory_main() -> int:
    rows = []
    for name, data in _grpc_cases().items():

        def send_grpc(server: Server, data: bytes = data) -> str:
            options = [("grpc.max_send_message_length", 2**31 - 1)]
            with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}", options=options) as ch:
                try:
                    ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(data, timeout=600)
                    return "OK"
                except grpc.RpcError as e:
                    return e.code().name  # type: ignore[no-any-return]

        rows.append(("gRPC", name, len(data), *_measure(send_grpc)))
        print(rows[-1], flush=True)
    for name, (body, headers) in _http_cases().items():

        def send_http(server: Server, body: bytes = body, headers: dict[str, str] = headers) -> str:
            url = f"http://127.0.0.1:{server.ports['http']}/v2/models/m/infer"
            return str(httpx.post(url, content=body, headers=headers, timeout=600).status_code)

        rows.append(("HTTP", name, len(body), *_measure(send_http)))
        print(rows[-1], flush=True)
    print("| transport | request | size | peak RSS growth | time | answer |\n|---|---|---|---|---|---|")
    for transport, name, size, mb, seconds, answer in rows:
        print(f"| {transport} | {name} | {size / 2**20:.0f} MiB | {mb:.0f} MB | {seconds:.1f} s | {answer} |")
    return 0
