"""The gRPC infer codec's wire-level decoding and encoding (server/frontends/grpc_wire.py) give
exactly what the message path gives: every request is decoded twice, the second time through the
template learnt from the first, and compared field by field with ``request_from_pb``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from inferd.protocol import codec
from inferd.protocol.errors import InvalidArgument
from inferd.protocol.fields import set_parameter
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.types import InferRequest, InferResponse
from inferd.server.frontends import grpc_wire
from inferd.server.frontends.grpc_convert import InferCodec, request_from_pb

RNG = np.random.default_rng(7)


def message(
    inputs: dict[str, np.ndarray],
    *,
    model: str = "m",
    version: str = "",
    rid: str = "",
    outputs: tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=rid)
    for name, a in inputs.items():
        dt = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "bool": "BOOL", "uint8": "UINT8"}[a.dtype.name]
        msg.inputs.add(name=name, datatype=dt, shape=a.shape)
        msg.raw_input_contents.append(a.tobytes())
    for o in outputs:
        msg.outputs.add(name=o)
    for k, v in (params or {}).items():
        set_parameter(msg.parameters[k], v)
    return msg


def assert_same(got: InferRequest, want: InferRequest) -> None:
    assert (got.model_name, got.model_version, got.id, got.outputs) == (
        want.model_name,
        want.model_version,
        want.id,
        want.outputs,
    )
    assert dict(got.parameters) == dict(want.parameters)
    assert list(got.inputs) == list(want.inputs)
    for name, a in want.inputs.items():
        b = got.inputs[name]
        assert (b.dtype, b.shape) == (a.dtype, a.shape), name
        np.testing.assert_array_equal(b, a)


def fresh(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Same dtypes and shapes, other values: what a client's next request looks like."""
    return {k: (RNG.random(a.shape) * 100).astype(a.dtype) for k, a in inputs.items()}


CASES = {
    "plain": dict(inputs={"A": np.ones((1, 16), np.float32), "B": np.zeros((1, 16), np.float32)}),
    "perf_analyzer-like": dict(
        inputs={"INPUT0": np.ones((1, 16), np.float32)},
        rid="0",
        outputs=("OUTPUT0", "OUTPUT1"),
        params={"triton_enable_empty_final_response": False},
    ),
    "version and id": dict(inputs={"X": np.arange(6, dtype=np.int64).reshape(2, 3)}, version="3", rid="req-1"),
    "dtypes": dict(
        inputs={
            "h": np.ones((2, 2), np.float16),
            "b": np.array([[True, False]]),
            "u": np.arange(300, dtype=np.uint8).reshape(3, 100),
        }
    ),
    "scalar and empty": dict(inputs={"s": np.float32(2.5).reshape(()), "e": np.zeros((0, 4), np.float32)}),
    "big tensor": dict(inputs={"big": np.ones((64, 256), np.float32)}, params={"priority": 2, "note": "x"}),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_template_decoding_matches_the_message_path(case: str) -> None:
    spec = CASES[case]
    wire = InferCodec()
    first = message(**spec).SerializeToString()
    assert_same(wire.decode(first), request_from_pb(pb.ModelInferRequest.FromString(first)))
    for n in range(3):  # new values (and a new id of another length when there is one)
        kw = dict(spec, inputs=fresh(spec["inputs"]))
        if spec.get("rid"):
            kw["rid"] = spec["rid"] + "9" * n
        data = message(**kw).SerializeToString()
        assert wire._wire.fit(data, None) is not None, "the learnt template should fit"
        assert_same(wire.decode(data, 5.0), request_from_pb(pb.ModelInferRequest.FromString(data)))


def test_another_layout_of_the_same_model_is_not_read_with_a_stale_template() -> None:
    wire = InferCodec()
    wire.decode(message({"A": np.ones((1, 4), np.float32)}).SerializeToString())
    for other in (
        message({"A": np.ones((2, 4), np.float32)}),  # another shape
        message({"A": np.ones((1, 4), np.float32)}, rid="7"),  # an id where there was none
        message({"A": np.ones((1, 4), np.int64)}),  # another datatype, same shape
        message({"A": np.ones((1, 4), np.float32)}, outputs=("Y",)),
    ):
        data = other.SerializeToString()
        assert_same(wire.decode(data), request_from_pb(pb.ModelInferRequest.FromString(data)))


def test_bytes_that_differ_only_in_the_tail_take_the_message_path() -> None:
    wire = InferCodec()
    good = message({"A": np.ones((1, 4), np.float32)})
    wire.decode(good.SerializeToString())
    short = pb.ModelInferRequest()
    short.CopyFrom(good)
    short.raw_input_contents[0] = b"\0" * 12  # 3 floats for a [1, 4] tensor
    with pytest.raises(InvalidArgument, match="'A'"):
        wire.decode(short.SerializeToString())
    # An extra field after the tensors: still the same request to a parser.
    data = good.SerializeToString() + pb.ModelInferRequest(id="late").SerializeToString()
    got = wire.decode(data)
    assert got.id == "late"
    assert_same(got, request_from_pb(pb.ModelInferRequest.FromString(data)))


def test_requests_with_contents_or_strings_are_decoded_but_not_templated() -> None:
    wire = InferCodec()
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="A", datatype="FP32", shape=[2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    s = message({}, model="m")
    s.inputs.add(name="S", datatype="BYTES", shape=[1])
    s.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    for m in (msg, s):
        data = m.SerializeToString()
        assert_same(wire.decode(data), request_from_pb(pb.ModelInferRequest.FromString(data)))
        assert wire._wire.fit(data, None) is None
    assert wire.decode(s.SerializeToString()).inputs["S"].tolist() == [b"hi"]


def test_invalid_bytes_are_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="not a valid ModelInferRequest"):
        InferCodec().decode(b"\x0a\x05ab")


def test_templates_and_headers_stay_bounded() -> None:
    wire = InferCodec()
    for i in range(grpc_wire.MAX_MODELS + 10):
        wire.decode(message({"A": np.ones((1, 2), np.float32)}, model=f"m{i}").SerializeToString())
        wire.encode(InferResponse(f"m{i}", "1", {"Y": np.ones(2, np.float32)}))
    assert len(wire._wire._templates) <= grpc_wire.MAX_MODELS
    assert len(wire._wire._headers) <= grpc_wire.MAX_MODELS
    for batch in range(1, 10):
        wire.decode(message({"A": np.ones((batch, 2), np.float32)}, model="many").SerializeToString())
    assert len(wire._wire._templates[b"\x0a\x04many"]) == grpc_wire.TEMPLATES_PER_MODEL


def response_to_pb(response: InferResponse) -> pb.ModelInferResponse:
    """The reference: the response as a message, as Triton answers (always raw_output_contents)."""
    msg = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    for name, array in response.outputs.items():
        msg.outputs.add(name=name, datatype=codec.of_array(array).name, shape=array.shape)
        msg.raw_output_contents.append(codec.to_raw(array))
    for key, v in response.parameters.items():
        set_parameter(msg.parameters[key], v)
    return msg


RESPONSES = {
    "two outputs": InferResponse(
        "add_sub", "1", {"OUTPUT0": np.ones((1, 16), np.float32), "OUTPUT1": np.zeros((1, 16), np.float32)}
    ),
    "id and version": InferResponse("m", "12", {"Y": np.arange(4, dtype=np.int64)}, id="abc"),
    "no version": InferResponse("m", "", {"Y": np.arange(4, dtype=np.int64)}),
    "strings": InferResponse("m", "1", {"S": np.array([b"a", b"bcd"], dtype=object)}),
    "fp16, bool, scalar": InferResponse(
        "m", "1", {"h": np.ones((2, 3), np.float16), "b": np.array([True]), "s": np.float32(3).reshape(())}
    ),
    "wide dims": InferResponse("m", "1", {"Y": np.ones((1, 300, 2), np.float32)}),
    "not contiguous": InferResponse("m", "1", {"Y": np.arange(12, dtype=np.float32).reshape(3, 4).T}),
    "parameters": InferResponse(
        "m", "1", {"Y": np.ones(1, np.float32)}, id="x", parameters={"sequence_end": True, "count": 3, "why": "test"}
    ),
}


@pytest.mark.parametrize("case", RESPONSES, ids=list(RESPONSES))
def test_encoded_responses_are_what_the_message_serializes_to(case: str) -> None:
    wire = InferCodec()
    response = RESPONSES[case]
    for _ in range(2):  # the second time from the cached header
        got = wire.encode(response)
        want = response_to_pb(response).SerializeToString()
        if response.parameters:  # map entries may come in another order
            assert pb.ModelInferResponse.FromString(got) == pb.ModelInferResponse.FromString(want)
        else:
            assert got == want
