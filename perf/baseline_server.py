"""The protocol-overhead baseline: the least a Python gRPC server can do to answer
KServe v2 ModelInfer for the bundled element-wise ``add_sub`` model.

A bare ``grpc.aio`` servicer on inferd's generated stubs: it decodes the two raw FP32 inputs
with numpy, adds and subtracts, and answers with raw outputs - no validation, no scheduling,
no executor hop, no timing statistics (ModelStatistics answers request and row counts only, so
that a benchmark can divide the server's CPU time by the requests it served). What inferd
achieves relative to this is the cost of its own layers; what this achieves is the ceiling of
the Python protocol layer on this machine.

Because it is a baseline, the model is hard-coded: ModelMetadata and ModelConfig describe
add_sub (FP32 [-1, 16] inputs INPUT0/INPUT1, outputs OUTPUT0/OUTPUT1, max_batch_size 8) whatever
name is asked for, and ServerMetadata lists no extensions, so perf_analyzer and ``inferd perf``
skip the statistics API. Those, plus the health RPCs, are all the start-up calls they make.

    python -m inferd.perf.baseline_server --port 0     # prints "baseline listening on HOST:PORT"

``--compute onnxruntime`` answers through the bundled add_sub ONNX file instead of numpy (one
intra-op thread, no spinning, as inferd runs it): the same bare servicer paying for a real
backend's call, which separates what onnxruntime costs per request from what inferd's own
layers cost.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from ..protocol.pb import grpc_service_pb2 as pb
from ..protocol.pb import grpc_service_pb2_grpc as pb_grpc
from ..protocol.pb import model_config_pb2 as mc
from ..server import event_loop  # stdlib only (uvloop if asked for)
from ..server.frontends.io_threads import apply_io_policy  # stdlib only

MODEL = "add_sub"
SIZE = 16


def add_sub_config() -> mc.ModelConfig:
    config = mc.ModelConfig(name=MODEL, platform="onnxruntime_onnx", max_batch_size=8)
    for name in ("INPUT0", "INPUT1"):
        config.input.add(name=name, data_type=mc.TYPE_FP32, dims=[SIZE])
    for name in ("OUTPUT0", "OUTPUT1"):
        config.output.add(name=name, data_type=mc.TYPE_FP32, dims=[SIZE])
    return config


# (flat input 0, flat input 1, request shape) -> (output 0, output 1)
Compute = Callable[[np.ndarray, np.ndarray, list[int]], tuple[np.ndarray, np.ndarray]]


def numpy_add_sub(a: np.ndarray, b: np.ndarray, shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return a + b, a - b  # flat is enough: the bytes are the same


def onnxruntime_add_sub() -> Compute:
    import onnxruntime as ort  # only for --compute onnxruntime

    from ..backends.ort import binding_run
    from ..server.settings import BUNDLED_REPOSITORY  # stdlib only

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(BUNDLED_REPOSITORY / MODEL / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    run = binding_run(session)  # as inferd's backend calls it
    names = ["OUTPUT0", "OUTPUT1"]

    def add_sub(a: np.ndarray, b: np.ndarray, shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
        out0, out1 = run(names, {"INPUT0": a.reshape(shape), "INPUT1": b.reshape(shape)}, None)
        return out0, out1

    return add_sub


class BaselineServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, compute: Compute = numpy_add_sub) -> None:
        self._compute = compute
        T = pb.ModelMetadataResponse.TensorMetadata
        self._metadata = pb.ModelMetadataResponse(
            name=MODEL,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[T(name=n, datatype="FP32", shape=[-1, SIZE]) for n in ("INPUT0", "INPUT1")],
            outputs=[T(name=n, datatype="FP32", shape=[-1, SIZE]) for n in ("OUTPUT0", "OUTPUT1")],
        )
        self._config = pb.ModelConfigResponse(config=add_sub_config())
        self._requests = 0
        self._rows = 0

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="inferd-baseline", version="0", extensions=[])

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        return self._metadata

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        return self._config

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        stats = pb.ModelStatistics(name=MODEL, version="1", inference_count=self._rows, execution_count=self._requests)
        stats.inference_stats.success.count = self._requests
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        raw = request.raw_input_contents
        shape = list(request.inputs[0].shape)
        self._requests += 1
        self._rows += shape[0]
        a = np.frombuffer(raw[0], dtype="<f4")
        b = np.frombuffer(raw[1], dtype="<f4")
        out0, out1 = self._compute(a, b, shape)
        response = pb.ModelInferResponse(model_name=MODEL, model_version="1", id=request.id)
        response.outputs.add(name="OUTPUT0", datatype="FP32", shape=shape)
        response.outputs.add(name="OUTPUT1", datatype="FP32", shape=shape)
        response.raw_output_contents.extend([out0.tobytes(), out1.tobytes()])
        return response


async def serve(host: str, port: int, io_sched: str = "other", compute: str = "numpy") -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    fn = onnxruntime_add_sub() if compute == "onnxruntime" else numpy_add_sub
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(BaselineServicer(fn), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"cannot bind {host}:{port}")
    await server.start()
    if io_sched != "other":  # only for a like-for-like comparison with inferd's default
        apply_io_policy(io_sched)
    print(f"baseline listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.baseline_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="0 = any free port (printed on start)")
    p.add_argument(
        "--io-sched",
        choices=["other", "batch"],
        default="other",
        help="scheduling policy of grpc's I/O threads (default: the kernel's, untouched)",
    )
    p.add_argument(
        "--event-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop (default asyncio's; uvloop to compare like for like with inferd)",
    )
    p.add_argument(
        "--compute",
        choices=["numpy", "onnxruntime"],
        default="numpy",
        help="how add_sub is computed (default numpy; onnxruntime: the bundled ONNX file)",
    )
    args = p.parse_args(argv)
    event_loop.run(serve(args.host, args.port, args.io_sched, args.compute), args.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
