"""KServe's Python ModelServer serving the bundled ``add_sub`` ONNX model with onnxruntime, over
the v2 gRPC protocol, so that inferd can be compared with it under the same perf_analyzer load.

    python -m inferd.perf.kserve_server --grpc-port 0    # prints "kserve gRPC listening on HOST:PORT"

The model is a plain ``kserve.Model`` as KServe's documentation writes one: ``load()`` opens the
session, a synchronous ``predict()`` runs it and answers with raw (binary) outputs. Requests go
through KServe's own gRPC servicer, interceptors and data plane unchanged. Two things are added
around it, neither on the inference path:

- the bound gRPC port is printed, so that the harness can start it on port 0 (KServe binds
  ``[::]:PORT`` and logs the port it was given, not the one bound);
- ``ModelConfig`` is answered (max_batch_size and the inputs' dims): KServe's v2 protocol has no
  such RPC, and perf_analyzer and ``inferd perf`` need it to know the model batches.

KServe also starts its REST server; it is put on a free port and not used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ..protocol.pb import grpc_service_pb2 as pb
from ..protocol.pb import model_config_pb2 as mc

MODEL = "add_sub"
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "model_repository" / MODEL / "1" / "model.onnx"
READY_LINE = "kserve gRPC listening on"
_DATATYPES = {"tensor(float)": ("FP32", mc.TYPE_FP32)}


def _signature(session: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """KServe's metadata dicts of the session's inputs and outputs (the batch dim as -1)."""

    def describe(args: Any) -> list[dict[str, Any]]:
        return [
            {"name": a.name, "datatype": _DATATYPES[a.type][0], "shape": [-1, *(int(d) for d in a.shape[1:])]}
            for a in args
        ]

    return describe(session.get_inputs()), describe(session.get_outputs())


def model_config(name: str, session: Any, max_batch_size: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    for field, args in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        for a in args:
            field.add(name=a.name, data_type=_DATATYPES[a.type][1], dims=[int(d) for d in a.shape[1:]])
    return config


def _config_handler(config: mc.ModelConfig) -> grpc.GenericRpcHandler:
    response = pb.ModelConfigResponse(config=config).SerializeToString()

    async def model_config_rpc(request: bytes, context: Any) -> bytes:
        return response

    method = grpc.unary_unary_rpc_method_handler(model_config_rpc)
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelConfig": method})


def build_model(name: str, onnx_path: Path, threads: int) -> Any:
    """The kserve.Model (built here so that kserve is imported only once argv is parsed)."""
    import kserve
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name)
            self.session: Any = None
            self.load()

        def load(self) -> bool:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            self.inputs, self.outputs = _signature(self.session)
            self.output_names = [o["name"] for o in self.outputs]
            self.ready = True
            return self.ready

        def get_input_types(self) -> list[dict[str, Any]]:
            return self.inputs

        def get_output_types(self) -> list[dict[str, Any]]:
            return self.outputs

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            feeds = {i.name: i.as_numpy() for i in payload.inputs}
            results = self.session.run(self.output_names, feeds)
            outputs = []
            for out_name, value in zip(self.output_names, results):
                out = InferOutput(name=out_name, shape=list(value.shape), datatype="FP32")
                out.set_data_from_numpy(np.ascontiguousarray(value), binary_data=True)
                outputs.append(out)
            return InferResponse(model_name=name, infer_outputs=outputs, response_id=payload.id)

    return OnnxModel()


def install_grpc_server(host: str, extra_handler: grpc.GenericRpcHandler) -> None:
    """Make ModelServer start KServe's gRPC server with the bound port printed and
    ``extra_handler`` added; everything else as kserve.protocol.grpc.server.GRPCServer.start."""
    from concurrent import futures

    import kserve.model_server
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

    class AnnouncingGRPCServer(GRPCServer):  # type: ignore[misc]
        async def start(self, max_workers: int) -> None:
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            self._server = grpc.aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[
                    ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                    ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length")),
                ],
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            self._server.add_generic_rpc_handlers((extra_handler,))
            port = self._server.add_insecure_port(f"{host}:{self._port}")
            await self._server.start()
            print(f"{READY_LINE} {host}:{port}", flush=True)
            await self._server.wait_for_termination()

    # ModelServer.start() names GRPCServer from its own module.
    kserve.model_server.GRPCServer = AnnouncingGRPCServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.kserve_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="gRPC bind address (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=8081, help="0 = any free port (printed on start)")
    p.add_argument("--http-port", type=int, default=0, help="KServe's REST port (default any free port; unused)")
    p.add_argument("--model-name", default=MODEL)
    p.add_argument("--onnx", type=Path, default=BUNDLED_MODEL, help="the ONNX file (default: bundled add_sub)")
    p.add_argument("--max-batch-size", type=int, default=8, help="what ModelConfig reports (default 8, as add_sub)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1, as inferd)")
    a = p.parse_args(argv)
    # kserve.model_server parses sys.argv when imported: leave it only the program name.
    sys.argv = sys.argv[:1]
    from kserve import ModelServer

    model = build_model(a.model_name, a.onnx, a.threads)
    install_grpc_server(a.host, _config_handler(model_config(a.model_name, model.session, a.max_batch_size)))
    ModelServer(http_port=a.http_port, grpc_port=a.grpc_port, workers=1).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
