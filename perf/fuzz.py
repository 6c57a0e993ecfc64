"""``inferd perf fuzz``: malformed requests at scale against a fresh ``inferd serve``.

A seeded generator sends, per transport, mutated valid requests (flipped, inserted, deleted
bytes; truncated; field values replaced), random field values (names, datatypes, shapes,
parameters, contents), random bytes, random JSON, wrong content types and encodings,
oversized bodies, malformed HTTP framing, and (gRPC) the same on ModelStreamInfer and the
other RPCs. Every answer is checked: no INTERNAL/UNKNOWN status, no HTTP 500, no Python
exception text, an answer within ``--timeout`` (else a hang). After each batch the server
must be alive, answer a valid add_sub request with the right sums, and its RSS must stay
under ``--rss-bound-mb``. The server runs with small limits (1 MiB messages and bodies,
65,536 decoded elements) so that oversized cases are cheap.

``make fuzz`` runs 100,000 requests per transport; tests/test_fuzz.py a few thousand.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from ..protocol.pb import grpc_service_pb2 as pb
from ..server.frontends.grpc_wire import encode_varint

SERVE_LIMITS = [
    "--grpc-max-message-bytes",
    str(1 << 20),
    "--http-max-body-bytes",
    str(1 << 20),
    "--max-request-elements",
    "65536",
]
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
OTHER_RPCS = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "TraceSetting",
    "LogSettings",
]
# What an answer must never look like: a server fault or Python's own words.
_LEAK = re.compile(r"Traceback|internal error|Error\(|Exception\b|File \"/", re.I)
MODELS = ["add_sub", "postprocess", "preprocess", "repeat_int32", "dense", "nope", ""]
DATATYPES = ["FP32", "FP16", "BF16", "FP64", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES", "fp32", ""]


@dataclass
class Tally:
    """What one transport's requests got back."""

    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    internal: list[str] = field(default_factory=list)  # the first few, for the report
    internal_count: int = 0
    hangs: int = 0

    def bad(self, what: str) -> None:
        self.internal_count += 1
        if len(self.internal) < 10:
            self.internal.append(what[:500])


@dataclass
class Report:
    transports: dict[str, Tally]
    crashes: int = 0
    failed_checks: list[str] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_max_mb: float = 0.0
    rss_bound_mb: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.crashes
            and not self.failed_checks
            and all(not t.internal_count and not t.hangs for t in self.transports.values())
        )

    def lines(self) -> list[str]:
        out = [
            f"inferd perf fuzz: {self.seconds:.0f} s, server RSS {self.rss_start_mb:.0f} MB at start, "
            f"{self.rss_max_mb:.0f} MB at most (bound {self.rss_bound_mb:.0f} MB)"
        ]
        for name, t in self.transports.items():
            common = ", ".join(f"{k} {v}" for k, v in t.statuses.most_common(8))
            out.append(
                f"  {name}: {t.requests} requests, {t.internal_count} internal errors, {t.hangs} hangs; {common}"
            )
            out += [f"    internal: {x}" for x in t.internal]
        out.append(f"  crashes: {self.crashes}; failed checks: {len(self.failed_checks)}")
        out += [f"    {x}" for x in self.failed_checks[:10]]
        return out


# --- the server ------------------------------------------------------------------------------
class Server:
    """``inferd serve`` in a child process on free ports, bundled models, no model control."""

    def __init__(self, extra: list[str]) -> None:
        argv = [sys.executable, "-m", "inferd.server.cli", "serve", "--grpc-port", "0", "--http-port", "0"]
        argv += ["--metrics-port", "0", "--model-control-mode", "none", *SERVE_LIMITS, *extra]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.ports: dict[str, int] = {}
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = re.search(r"serving: gRPC [^:]+:(\d+), HTTP [^:]+:(\d+)", line)
            if m:
                self.ports = {"grpc": int(m.group(1)), "http": int(m.group(2))}
                break
        if not self.ports:
            raise RuntimeError("inferd serve did not start")
        # Keep reading its log so that it never blocks on a full pipe.
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --- request generators ------------------------------------------------------------------------
def _valid_pb(rng: random.Random) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="add_sub", id=str(rng.randrange(1000)))
    for name in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=name, datatype="FP32", shape=[1, 16])
    msg.raw_input_contents.extend([np.arange(16, dtype=np.float32).tobytes()] * 2)
    return msg


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(10 if depth < 3 else 7)
    if k == 0:
        return None
    if k == 1:
        return rng.choice([True, False])
    if k == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**30, rng.randrange(-1000, 1000)])
    if k == 3:
        return rng.choice([0.5, -0.0, 1e308, float("nan"), float("inf"), 3.14])
    if k == 4:
        return rng.choice(["", "x", "FP32", "add_sub", "\u00b2", "\ud800", "a" * rng.randrange(300), "1" * 40])
    if k == 5:
        return rng.choice(MODELS + DATATYPES)
    if k == 6:
        return rng.randrange(-5, 20)
    if k == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if k == 8:
        return {rng.choice(["name", "shape", "datatype", "data", "parameters", "x"]): _random_value(rng, depth + 1)}
    return [[rng.random() for _ in range(rng.randrange(4))] for _ in range(rng.randrange(3))]


def _random_shape(rng: random.Random) -> list[int]:
    k = rng.randrange(6)
    if k == 0:
        return [rng.randrange(-3, 40) for _ in range(rng.randrange(5))]
    if k == 1:
        return [1] * rng.randrange(60, 200)
    if k == 2:
        return [2**62, 2**62] if rng.random() < 0.5 else [2**31, 2**31, 4]
    if k == 3:
        return [1, 16]
    if k == 4:
        return [rng.randrange(0, 70000)]
    return [0, rng.randrange(2**40)]


def _random_pb(rng: random.Random) -> bytes:
    """A message with random field values (structurally a ModelInferRequest)."""
    msg = pb.ModelInferRequest(
        model_name=rng.choice(MODELS), model_version=rng.choice(["", "1", "2", "-1", "\u00b2", "x"])
    )
    for i in range(rng.randrange(4)):
        dt = rng.choice(DATATYPES)
        t = msg.inputs.add(name=rng.choice(["INPUT0", "INPUT1", "IN", "RAW", "PROBS", "", f"i{i}"]), datatype=dt)
        t.shape.extend(_random_shape(rng))
        if rng.random() < 0.3:
            key = rng.choice(["shared_memory_region", "shared_memory_byte_size", "binary_data_size", "x"])
            p = t.parameters[key]
            if rng.random() < 0.5:
                p.string_param = rng.choice(["r", "", "x" * 40])
            else:
                p.int64_param = rng.choice([-1, 0, 16, 2**62])
        c = rng.randrange(6)
        if c == 1:
            t.contents.fp32_contents.extend([rng.random() for _ in range(rng.randrange(40))])
        elif c == 2:
            t.contents.int_contents.extend([rng.randrange(-(2**31), 2**31) for _ in range(rng.randrange(40))])
        elif c == 3:
            t.contents.bytes_contents.extend([os.urandom(rng.randrange(6)) for _ in range(rng.randrange(40))])
        elif c == 4:
            t.contents.int64_contents.extend([rng.randrange(-(2**63), 2**63) for _ in range(rng.randrange(40))])
    if rng.random() < 0.6:
        for _ in range(rng.randrange(4)):
            n = rng.choice([0, 4, 64, 65, rng.randrange(300)])
            if rng.random() < 0.3:  # BYTES wire format, sometimes lying about its lengths
                n = rng.randrange(20)
                msg.raw_input_contents.append(b"".join(struct.pack("<I", rng.randrange(8)) + b"ab" for _ in range(n)))
            else:
                msg.raw_input_contents.append(os.urandom(n))
    for _ in range(rng.randrange(3)):
        o = msg.outputs.add(name=rng.choice(["OUTPUT0", "OUTPUT1", "x", ""]))
        if rng.random() < 0.3:
            o.parameters[
                rng.choice(["classification", "binary_data", "shared_memory_region"])
            ].int64_param = rng.randrange(-2, 5)
    for _ in range(rng.randrange(3)):
        key = rng.choice(
            ["sequence_id", "sequence_start", "priority", "timeout", "triton_x", "x", "binary_data_output"]
        )
        p = msg.parameters[key]
        r = rng.randrange(4)
        if r == 0:
            p.bool_param = True
        elif r == 1:
            p.int64_param = rng.choice([-1, 0, 2**62])
        elif r == 2:
            p.string_param = "s"
        else:
            p.uint64_param = 2**64 - 1
    return msg.SerializeToString()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        k = rng.randrange(5)
        if not b:
            b += os.urandom(rng.randrange(1, 20))
        i = rng.randrange(len(b))
        if k == 0:
            b[i] = rng.randrange(256)
        elif k == 1:
            b.insert(i, rng.randrange(256))
        elif k == 2:
            del b[i]
        elif k == 3:
            del b[i:]
        else:
            b[i:i] = os.urandom(rng.randrange(1, 40))
    return bytes(b)


def grpc_case(rng: random.Random) -> tuple[str, bytes]:
    """(method, request bytes)."""
    k = rng.randrange(100)
    if k < 30:
        return INFER, _mutate(rng, _valid_pb(rng).SerializeToString())
    if k < 60:
        return INFER, _random_pb(rng)
    if k < 70:
        return INFER, os.urandom(rng.randrange(300))
    if k < 75:  # over the 1 MiB message limit, or an expanding encoding under it
        choice = rng.randrange(3)
        if choice == 0:
            return INFER, b"\x0a\x07add_sub" + b"\x3a\x00" * rng.randrange(40000, 70000)
        if choice == 1:
            body = b"\x1a\x08" + struct.pack("<Q", 0)
            return INFER, b"\x0a\x07add_sub\x2a" + encode_varint(len(body) + 900000) + body + b"\x00" * 900000
        return INFER, os.urandom((1 << 20) + rng.randrange(100))
    if k < 85:
        return f"/inference.GRPCInferenceService/{rng.choice(OTHER_RPCS)}", _mutate(rng, _other_message(rng))
    return STREAM, _mutate(rng, _valid_pb(rng).SerializeToString()) if rng.random() < 0.5 else _random_pb(rng)


def _other_message(rng: random.Random) -> bytes:
    name = rng.choice(MODELS).encode()
    return b"\x0a" + encode_varint(len(name)) + name + (b"\x12\x011" if rng.random() < 0.5 else b"")


def _valid_json() -> dict[str, Any]:
    data = list(range(16))
    return {
        "id": "1",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": data},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": data},
        ],
    }


def _mutate_json(rng: random.Random, doc: Any, depth: int = 0) -> Any:
    if isinstance(doc, dict) and doc and depth < 6:
        key = rng.choice(list(doc))
        r = rng.randrange(4)
        if r == 0:
            del doc[key]
        elif r == 1:
            doc[key] = _random_value(rng)
        else:
            doc[key] = _mutate_json(rng, doc[key], depth + 1)
        if rng.random() < 0.2:
            doc[rng.choice(["parameters", "outputs", "binary_data_output", "id", "inputs"])] = _random_value(rng)
        return doc
    if isinstance(doc, list) and doc and depth < 6:
        i = rng.randrange(len(doc))
        doc[i] = _mutate_json(rng, doc[i], depth + 1) if rng.random() < 0.6 else _random_value(rng)
        return doc
    return _random_value(rng)


HTTP_PATHS = [
    "/v2/models/add_sub/infer",
    "/v2/models/add_sub/versions/1/infer",
    "/v2/models/add_sub/versions/\u00b2/infer",
    "/v2/models/postprocess/infer",
    "/v2/models/repeat_int32/infer",
    "/v2/models/nope/infer",
    "/v2/models/add_sub/generate",
    "/v2/models/add_sub/generate_stream",
    "/v2/repository/index",
    "/v2/repository/models/add_sub/load",
    "/v2/repository/models/add_sub/unload",
    "/v2/systemsharedmemory/region/r/register",
    "/v2/models/add_sub",
    "/v2/models/add_sub/config",
    "/v2/models/add_sub/stats",
    "/v1/completions",
    "/v1/chat/completions",
    "/v2/trace/setting",
    "/v2/logging",
    "/v2",
]
CONTENT_TYPES = [
    "application/json",
    "application/octet-stream",
    None,
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "application/json; charset=latin-1",
    "\u00e9",
]


def http_case(rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers, body)."""
    k = rng.randrange(100)
    path = "/v2/models/add_sub/infer" if rng.random() < 0.6 else rng.choice(HTTP_PATHS)
    headers: dict[str, str] = {}
    ct = rng.choice(CONTENT_TYPES) if rng.random() < 0.3 else "application/json"
    if ct is not None:
        headers["content-type"] = ct
    if k < 35:
        body = json.dumps(_mutate_json(rng, _valid_json())).encode()
    elif k < 50:
        body = json.dumps(_random_value(rng)).encode()
    elif k < 60:
        body = _mutate(rng, json.dumps(_valid_json()).encode())
    elif k < 70:  # the binary tensor extension, with lying sizes
        doc = _valid_json()
        for t in doc["inputs"]:
            del t["data"]
            t["parameters"] = {"binary_data_size": rng.choice([64, 0, 63, 65, -1, 2**40, "64"])}
            t["datatype"] = rng.choice(["FP32", "BYTES", "FP16"])
        head = json.dumps(doc).encode()
        body = head + os.urandom(rng.choice([128, 0, 127, 200]))
        headers["inference-header-content-length"] = rng.choice(
            [str(len(head)), str(len(head) + 5), "-1", "x", str(2**70), "0"]
        )
        headers["content-type"] = "application/octet-stream"
    elif k < 78:
        body = os.urandom(rng.randrange(400))
    elif k < 84:
        body = json.dumps(_valid_json()).encode()
        if rng.random() < 0.5:
            body = gzip.compress(body)
        else:
            body = _mutate(rng, gzip.compress(body))
        headers["content-encoding"] = rng.choice(["gzip", "deflate", "br", "gzip, gzip"])
    elif k < 90:  # nesting and value counts past the limits
        n = rng.choice([70, 1000, 100000])
        body = (
            b'{"inputs":' + b"[" * n + b"]" * n + b"}" if rng.random() < 0.5 else b'{"x":[' + b"[]," * 70000 + b"[]]}"
        )
    elif k < 95:  # over the body limit
        body = b'{"inputs":[' + b" " * ((1 << 20) + rng.randrange(1000)) + b"]}"
    else:
        body = json.dumps(_valid_json()).encode()
        headers[rng.choice(["content-length", "origin", "inference-header-content-length", "accept-encoding"])] = (
            rng.choice(["-5", "abc", "http://evil.example", "99999999999999999999", "gzip;q=x", ""])
        )
    method = "POST" if rng.random() < 0.95 else rng.choice(["GET", "PUT", "DELETE", "OPTIONS"])
    return method, path, headers, body


# --- running ----------------------------------------------------------------------------------
def _check_grpc_status(tally: Tally, code: grpc.StatusCode, details: str, what: str) -> None:
    tally.statuses[code.name] += 1
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) or _LEAK.search(details or ""):
        tally.bad(f"{what}: {code.name}: {details}")


async def _grpc_one(ch: grpc.aio.Channel, method: str, data: bytes, tally: Tally, timeout: float) -> None:
    tally.requests += 1
    try:
        if method == STREAM:
            call = ch.stream_stream(STREAM)(iter([data, data]), timeout=timeout)
            async for resp in call:
                msg = pb.ModelStreamInferResponse.FromString(resp)
                if msg.error_message and _LEAK.search(msg.error_message):
                    tally.bad(f"stream: {msg.error_message}")
            tally.statuses["OK"] += 1
            return
        await ch.unary_unary(method)(data, timeout=timeout)
        tally.statuses["OK"] += 1
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.hangs += 1
            tally.bad(f"{method}: no answer within {timeout} s")
            return
        _check_grpc_status(tally, e.code(), e.details() or "", method.rsplit("/", 1)[-1])


async def _http_one(client: httpx.AsyncClient, case: tuple[str, str, dict[str, str], bytes], tally: Tally) -> None:
    method, path, headers, body = case
    tally.requests += 1
    try:
        r = await client.request(method, path, headers=headers, content=body if method != "GET" else None)
    except httpx.TimeoutException:
        tally.hangs += 1
        tally.bad(f"{method} {path}: no answer")
        return
    except Exception as e:  # noqa: BLE001 - refused by the client library (bad headers), or the connection closed
        tally.statuses[type(e).__name__] += 1
        return
    tally.statuses[str(r.status_code)] += 1
    text = r.text[:2000]
    if r.status_code >= 500 and r.status_code not in (501, 503, 504) or _LEAK.search(text):
        tally.bad(f"{method} {path}: {r.status_code} {text}")


async def _raw_http(port: int, rng: random.Random, tally: Tally, timeout: float) -> None:
    """Malformed HTTP framing: broken request lines, headers, chunked bodies, early EOF."""
    tally.requests += 1
    lines = [
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02garbage\r\n\r\n",
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n{}",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 100000 + b"\r\n\r\n",
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{",
    ]
    data = _mutate(rng, rng.choice(lines)) if rng.random() < 0.5 else rng.choice(lines)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(data)
        if rng.random() < 0.5:
            writer.write_eof()
        await writer.drain()
        head = await asyncio.wait_for(reader.read(200), 2.0)
        writer.close()
    except (asyncio.TimeoutError, TimeoutError):
        tally.statuses["waiting"] += 1  # an unfinished request: the server may wait (its timeouts close it)
        return
    except OSError:
        tally.statuses["closed"] += 1
        return
    status = head[9:12].decode("latin-1")
    tally.statuses[status or "closed"] += 1
    if status.startswith("5") and status not in ("501", "503", "504"):
        tally.bad(f"raw http: {status} {head!r}")


async def _health(server: Server, report: Report) -> None:
    """Between batches: alive, a valid request answered right, RSS under the bound."""
    if not server.alive():
        report.crashes += 1
        raise RuntimeError(f"the server exited with status {server.proc.returncode}")
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.ports['http']}", timeout=30) as client:
        body = {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [1, 16], "data": a.ravel().tolist()}
                for n in ("INPUT0", "INPUT1")
            ]
        }
        r = await client.post("/v2/models/add_sub/infer", json=body)
        outs = {o["name"]: o["data"] for o in r.json().get("outputs", [])} if r.status_code == 200 else {}
        if outs.get("OUTPUT0") != (a * 2).ravel().tolist() or outs.get("OUTPUT1") != [0.0] * 16:
            report.failed_checks.append(f"HTTP add_sub answered {r.status_code} {r.text[:200]}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as ch:
        data = _valid_pb(random.Random(0)).SerializeToString()
        try:
            raw = await ch.unary_unary(INFER)(data, timeout=30)
            resp = pb.ModelInferResponse.FromString(raw)
            out0 = np.frombuffer(resp.raw_output_contents[0], np.float32)
            if not np.array_equal(out0, (a * 2).ravel()):
                report.failed_checks.append("gRPC add_sub answered wrong sums")
        except grpc.aio.AioRpcError as e:
            report.failed_checks.append(f"gRPC add_sub failed: {e.code().name} {e.details()}")
    rss = server.rss_mb()
    report.rss_max_mb = max(report.rss_max_mb, rss)
    if rss > report.rss_bound_mb:
        report.failed_checks.append(f"RSS {rss:.0f} MB is over the bound of {report.rss_bound_mb:.0f} MB")


async def run(
    requests: int,
    seed: int = 1,
    transports: tuple[str, ...] = ("grpc", "http"),
    batch: int = 2000,
    concurrency: int = 32,
    timeout: float = 30.0,
    rss_bound_mb: float = 0.0,
    serve_args: list[str] | None = None,
    progress: bool = False,
) -> Report:
    """Send ``requests`` malformed requests per transport; returns what came back."""
    started = time.monotonic()
    server = Server(serve_args or [])
    report = Report({t: Tally() for t in transports})
    try:
        await asyncio.sleep(0.5)
        report.rss_start_mb = report.rss_max_mb = server.rss_mb()
        report.rss_bound_mb = rss_bound_mb or report.rss_start_mb + 400
        await _health(server, report)
        rng = random.Random(seed)
        options = [("grpc.max_send_message_length", 1 << 22), ("grpc.max_receive_message_length", 1 << 22)]
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{server.ports['grpc']}", options=options) as ch,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{server.ports['http']}",
                timeout=timeout,
                limits=httpx.Limits(max_connections=concurrency),
            ) as client,
        ):
            sem = asyncio.Semaphore(concurrency)

            async def bounded(coro: Any) -> None:
                async with sem:
                    await coro

            for transport in transports:
                tally = report.transports[transport]
                sent = 0
                while sent < requests:
                    n = min(batch, requests - sent)
                    jobs = []
                    for _ in range(n):
                        if transport == "grpc":
                            method, data = grpc_case(rng)
                            jobs.append(bounded(_grpc_one(ch, method, data, tally, timeout)))
                        elif rng.random() < 0.03:
                            jobs.append(bounded(_raw_http(server.ports["http"], rng, tally, timeout)))
                        else:
                            jobs.append(bounded(_http_one(client, http_case(rng), tally)))
                    await asyncio.gather(*jobs)
                    sent += n
                    await _health(server, report)
                    if progress:
                        print(
                            f"  {transport}: {sent}/{requests}, {tally.internal_count} internal, {tally.hangs} hangs, "
                            f"RSS {server.rss_mb():.0f} MB, {time.monotonic() - started:.0f} s",
                            file=sys.stderr,
                            flush=True,
                        )
    except RuntimeError as e:
        report.failed_checks.append(str(e))
    finally:
        server.stop()
        report.seconds = time.monotonic() - started
    return report


def fuzz_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="inferd perf fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--requests", type=int, default=100_000, help="malformed requests per transport (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--transport", choices=["grpc", "http", "both"], default="both")
    p.add_argument("--batch", type=int, default=2000, help="requests between health checks")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds an answer may take before it is a hang")
    p.add_argument("--rss-bound-mb", type=float, default=0.0, help="default: the server's RSS at start + 400 MB")
    p.add_argument(
        "--memory",
        action="store_true",
        help="instead: measure the peak memory of the worst single requests at the default limits (request_memory.py)",
    )
    args = p.parse_args(argv)
    if args.memory:
        from .request_memory import memory_main

        return memory_main()
    transports = ("grpc", "http") if args.transport == "both" else (args.transport,)
    report = asyncio.run(
        run(
            args.requests,
            args.seed,
            transports,
            args.batch,
            args.concurrency,
            args.timeout,
            args.rss_bound_mb,
            progress=True,
        )
    )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
