"""The two front ends treat the same request alike: per-tensor parameters inferd does not
implement are refused on gRPC (UNIMPLEMENTED, also on a stream) and HTTP (501) with the same
message naming the parameter, unknown ones are ignored on both, and statistics carry the same
fields on both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from inferd.protocol.messages import message_to_dict
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server.frontends import http_metadata
from inferd.server.frontends.grpc_metadata import statistics_to_pb
from inferd.server.stats import ExecutionTimes, ModelStats

from .conftest import RunningServer

ONES = np.ones((1, 16), np.float32)


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as c:
        yield c


def grpc_request(where: str, params: dict[str, Any]) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="add_sub", id="p-1")
    for name in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        msg.raw_input_contents.append(ONES.tobytes())
    target = msg.inputs[0].parameters if where == "input" else msg.outputs.add(name="OUTPUT0").parameters
    for key, v in params.items():
        if isinstance(v, bool):
            target[key].bool_param = v
        elif isinstance(v, int):
            target[key].int64_param = v
        else:
            target[key].string_param = v
    return msg


def http_request(where: str, params: dict[str, Any]) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [
        {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")
    ]
    doc: dict[str, Any] = {"id": "p-1", "inputs": inputs}
    if where == "input":
        inputs[0]["parameters"] = params
    else:
        doc["outputs"] = [{"name": "OUTPUT0", "parameters": params}]
    return doc


REFUSED = {
    "input shared_memory_region": ("input", {"shared_memory_region": "r", "shared_memory_byte_size": 64}),
    "input shared_memory_offset": ("input", {"shared_memory_offset": 0}),
    "input shared_memory_byte_size": ("input", {"shared_memory_byte_size": 64}),
    "output shared_memory_region": ("output", {"shared_memory_region": "r"}),
    "output shared_memory_offset": ("output", {"shared_memory_offset": 8}),
    "output shared_memory_byte_size": ("output", {"shared_memory_byte_size": 64}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_tensor_parameter(case: str, stub: pb_grpc.GRPCInferenceServiceStub, http: httpx.Client) -> None:
    where, params = REFUSED[case]
    key = case.split()[1]
    tensor = f"{where} '{'INPUT0' if where == 'input' else 'OUTPUT0'}'"

    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(grpc_request(where, params))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    message = info.value.details()
    assert f"model 'add_sub' {tensor}" in message and f"parameter '{key}'" in message, message

    (streamed,) = stub.ModelStreamInfer(iter([grpc_request(where, params)]))
    assert streamed.error_message == message and streamed.infer_response.id == "p-1"

    response = http.post("/v2/models/add_sub/infer", json=http_request(where, params))
    assert response.status_code == 501, response.text
    assert response.json()["error"] == message


ACCEPTED = {
    "classification 0": ("output", {"classification": 0}),
    "unknown input parameter": ("input", {"my_flag": True, "note": "x"}),
    "unknown output parameter": ("output", {"my_count": 2}),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_tensor_parameter(case: str, stub: pb_grpc.GRPCInferenceServiceStub, http: httpx.Client) -> None:
    where, params = ACCEPTED[case]
    response = stub.ModelInfer(grpc_request(where, params))
    names = [o.name for o in response.outputs]
    assert names == (["OUTPUT0", "OUTPUT1"] if where == "input" else ["OUTPUT0"])
    http_response = http.post("/v2/models/add_sub/infer", json=http_request(where, params))
    assert http_response.status_code == 200, http_response.text
    assert [o["name"] for o in http_response.json()["outputs"]] == names


def test_http_only_parameters_are_ignored_on_grpc(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # binary_data/binary_data_size are HTTP's binary tensor extension; gRPC always answers raw.
    assert len(stub.ModelInfer(grpc_request("output", {"binary_data": True})).raw_output_contents) == 1
    assert len(stub.ModelInfer(grpc_request("input", {"binary_data_size": 64})).raw_output_contents) == 2


def test_statistics_json_is_the_message_with_every_field() -> None:
    stats = ModelStats("m", "3")
    stats.record_execution(ExecutionTimes(4, 10, 20, 30))
    stats.record_success(100, 5, ExecutionTimes(4, 10, 20, 30))
    stats.record_failure(7)
    message = pb.ModelStatistics()
    statistics_to_pb(stats, message)
    assert http_metadata.statistics_json([stats])["model_stats"][0] == message_to_dict(message)


def _fields(doc: Any) -> Any:
    """The field names of a statistics document, recursively (values left out)."""
    if isinstance(doc, dict):
        return {k: _fields(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_fields(doc[0])] if doc else []
    return None


def test_statistics_carry_the_same_fields_on_both_protocols(
    stub: pb_grpc.GRPCInferenceServiceStub, http: httpx.Client
) -> None:
    stub.ModelInfer(grpc_request("input", {}))  # so that batch_stats has an entry
    over_grpc = message_to_dict(stub.ModelStatistics(pb.ModelStatisticsRequest(name="add_sub")))
    over_http = http.get("/v2/models/add_sub/stats").json()
    assert _fields(over_http) == _fields(over_grpc)
    stats = over_grpc["model_stats"][0]
    assert set(stats) == set(pb.ModelStatistics.DESCRIPTOR.fields_by_name)
    assert set(stats["inference_stats"]) == set(pb.InferStatistics.DESCRIPTOR.fields_by_name)
