"""Restricted API categories (``--grpc-restricted-protocol``, ``--http-restricted-api``): every
route and RPC has a category, a restricted one answers 403 / PERMISSION_DENIED without its
header (or with a wrong value) and works with it, and the others stay open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.protocol.pb import grpc_service_pb2, health_pb2
from inferd.server.core import InferenceCore
from inferd.server.frontends import access
from inferd.server.frontends.http_service import build_app
from inferd.server.manager import ModelManager
from inferd.server.repository import Repository
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write

ADMIN = ("model-repository,model-config,statistics,trace,logging,shared-memory", "admin-key", "s3cret")
INFER = ("inference", "infer-key", "let-me-in")


def restrictions(prefix: str = "") -> access.Restrictions:
    groups = [(tuple(c.split(",")), k, v) for c, k, v in (ADMIN, INFER)]
    return access.build_restrictions(groups, "--flag", prefix)


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("access-repo")
    write(root, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    running = start_server(
        test_settings(
            root,
            grpc_restrictions=restrictions(access.GRPC_HEADER_PREFIX),
            http_restrictions=restrictions(),
            allow_openai=True,
        )
    )
    yield running
    running.stop()


def test_every_http_route_has_a_category(tmp_path: Path) -> None:
    core = InferenceCore(ModelManager(Repository(tmp_path)))
    app = build_app(core, 1024, openai=True)
    paths = [route.path for route in app.app.app.routes]  # type: ignore[attr-defined]  # OriginGuard, HotRoutes, Starlette
    assert "/v2/models/{model}/infer" in paths and "/v1" in paths
    for path in paths:
        assert access.category_of_route(path) in access.CATEGORIES, path


def test_every_grpc_method_has_a_category() -> None:
    methods = [
        f"/{service.full_name}/{m.name}"
        for module in (grpc_service_pb2, health_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    ]
    assert len(methods) >= 22
    for method in methods:
        assert access.category_of_method(method) in access.CATEGORIES, method
    assert set(access.CATEGORIES) == set(access.GRPC_CATEGORIES.values())


def test_flag_syntax_and_errors() -> None:
    assert access.parse_restriction("health,inference:k=v=w", "--f") == (("health", "inference"), "k", "v=w")
    for bad in ("health", "health:k", ":k=v", "health:=v", "nope:k=v"):
        with pytest.raises(ValueError, match="--f"):
            access.parse_restriction(bad, "--f")
    with pytest.raises(ValueError, match="multiple config groups"):
        access.build_restrictions([(("health",), "a", "1"), (("health", "trace"), "b", "2")], "--f")
    r = access.build_restrictions([(("trace",), "My-Key", "v")], "--f", "triton-grpc-protocol-")
    assert r["trace"].header == "triton-grpc-protocol-my-key"
    assert r["trace"].allows("v") and not r["trace"].allows("v ") and not r["trace"].allows(None)


def test_http_restricted_categories(restricted: RunningServer) -> None:
    doc = {
        "inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")]
    }
    with httpx.Client(base_url=f"http://{restricted.http_url}", timeout=10) as c:
        # Open categories: health and metadata.
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/models/add_sub").status_code == 200
        for method, path, body in [
            ("POST", "/v2/models/add_sub/infer", doc),
            ("GET", "/v2/models/add_sub/config", None),
            ("GET", "/v2/models/stats", None),
            ("POST", "/v2/repository/index", {}),
            ("GET", "/v2/trace/setting", None),
            ("GET", "/v2/logging", None),
            ("GET", "/v2/systemsharedmemory/status", None),
            ("GET", "/v1/models", None),
        ]:
            denied = c.request(method, path, json=body)
            assert denied.status_code == 403, (path, denied.text)
            key = "infer-key" if path.endswith("/infer") or path.startswith("/v1") else "admin-key"
            assert denied.json()["error"] == f"This API is restricted, expecting header '{key}'"
            wrong = c.request(method, path, json=body, headers={key: "guess"})
            assert wrong.status_code == 403
            value = "let-me-in" if key == "infer-key" else "s3cret"
            allowed = c.request(method, path, json=body, headers={key: value})
            assert allowed.status_code not in (403, 404, 405), (path, allowed.text)


def test_tritonclient_http_with_headers(restricted: RunningServer) -> None:
    client = httpclient.InferenceServerClient(restricted.http_url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = httpclient.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
        inputs.append(i)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.infer("add_sub", inputs)
    result = client.infer("add_sub", inputs, headers={"infer-key": "let-me-in"})
    assert result.as_numpy("OUTPUT0").sum() == 32
    assert client.get_model_config("add_sub", headers={"admin-key": "s3cret"})["name"] == "add_sub"
    client.close()


def test_grpc_restricted_categories(restricted: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(restricted.grpc_url)
    assert client.is_server_ready() and client.get_model_metadata("add_sub").name == "add_sub"
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
        inputs.append(i)
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", inputs)
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "expecting header 'triton-grpc-protocol-infer-key'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", inputs, headers={"triton-grpc-protocol-infer-key": "nope"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    good = client.infer("add_sub", inputs, headers={"triton-grpc-protocol-infer-key": "let-me-in"})
    assert good.as_numpy("OUTPUT0").sum() == 32
    admin = {"triton-grpc-protocol-admin-key": "s3cret"}
    for call in (client.get_model_config, client.get_inference_statistics):
        with pytest.raises(InferenceServerException) as info:
            call("add_sub")
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        call("add_sub", headers=admin)
    with pytest.raises(InferenceServerException) as info:
        client.get_trace_settings()
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    assert client.get_trace_settings(headers=admin, as_json=True)["settings"]["trace_level"]["value"] == ["OFF"]


def test_grpc_stream_is_guarded(restricted: RunningServer) -> None:
    from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc

    request = grpc_service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    with grpc.insecure_channel(restricted.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(iter([request])))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        (ok,) = stub.ModelStreamInfer(iter([request]), metadata=[("triton-grpc-protocol-infer-key", "let-me-in")])
        assert not ok.error_message
        health = grpc.insecure_channel(restricted.grpc_url).unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        assert health(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
