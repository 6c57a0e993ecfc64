"""The gRPC infer codec's wire-level decoding and encoding (server/frontends/grpc_wire.py) give
exactly what the message path gives: every request is decoded twice, the second time through the
template learnt from the first, and compared field by field with ``request_from_pb``."""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from inferd.protocol import codec
from inferd.protocol.errors import InvalidArgument, NotFound
from inferd.protocol.fields import set_parameter
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.types import InferRequest, InferResponse
from inferd.server.frontends import grpc_wire
from inferd.server.frontends.grpc_convert import InferCodec, request_from_pb
from inferd.server.shm import SharedMemoryRegistry

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


# --- tensors in shared memory: templated, with the regions looked up per request -------------
@pytest.fixture
def registry() -> Iterator[tuple[SharedMemoryRegistry, np.ndarray]]:
    """A registry with region "in" (64 bytes at offset 0) and "out" (64 bytes at offset 64) of
    one POSIX object, and the object's bytes as an array the test writes into."""
    key = f"inferd_wire_{uuid.uuid4().hex[:12]}"
    fd = os.open(f"/dev/shm/{key}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 4096)
    mapping = mmap.mmap(fd, 4096)
    regions = SharedMemoryRegistry(enabled=True)
    regions.register("in", key, 0, 64)
    regions.register("out", key, 64, 64)
    try:
        yield regions, np.frombuffer(mapping, np.uint8)
    finally:
        regions.close()
        os.close(fd)
        os.unlink(f"/dev/shm/{key}")


def shm_message(rid: str = "", *, raw: np.ndarray | None = None, bytes_input: bool = False) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", id=rid)
    if raw is not None:  # a raw input before the region's, as the message path orders them
        msg.inputs.add(name="R", datatype="FP32", shape=raw.shape)
        msg.raw_input_contents.append(raw.tobytes())
    t = msg.inputs.add(name="X", datatype="BYTES" if bytes_input else "FP32", shape=[1, 4] if not bytes_input else [1])
    t.parameters["shared_memory_region"].string_param = "in"
    t.parameters["shared_memory_byte_size"].int64_param = 16
    o = msg.outputs.add(name="Y")
    o.parameters["shared_memory_region"].string_param = "out"
    o.parameters["shared_memory_offset"].int64_param = 8
    o.parameters["shared_memory_byte_size"].int64_param = 32
    return msg


def test_shared_memory_requests_are_templated_and_read_the_region_each_time(registry) -> None:  # type: ignore[no-untyped-def]
    regions, memory = registry
    wire = InferCodec(regions)
    raw = np.ones((1, 2), np.float32)
    wire.decode(shm_message("a", raw=raw).SerializeToString())
    for n in range(3):
        memory[:16] = np.arange(4, dtype=np.float32).view(np.uint8) + n  # the client's next input
        data = shm_message("b" * (n + 1), raw=raw * n).SerializeToString()
        assert wire._wire.fit(data, None) is not None, "the learnt template should fit"
        got = wire.decode(data)
        want = request_from_pb(pb.ModelInferRequest.FromString(data), regions=regions)
        assert_same(got, want)
        assert list(got.inputs) == ["R", "X"]
        assert got.shared_epoch is not None and len(got.shared_regions) == 2
        assert got.output_regions is not None and want.output_regions is not None
        assert bytes(got.output_regions["Y"]) == bytes(want.output_regions["Y"]) and len(got.output_regions["Y"]) == 32
        got.output_regions["Y"][:4] = b"\x01\x02\x03\x04"  # writable, at the output's offset
        assert memory[72:76].tolist() == [1, 2, 3, 4]


def test_bytes_in_shared_memory_are_decoded_per_request(registry) -> None:  # type: ignore[no-untyped-def]
    regions, memory = registry
    wire = InferCodec(regions)
    for text in (b"hello world!", b"other bytes!"):
        memory[:16] = np.frombuffer(len(text).to_bytes(4, "little") + text, np.uint8)
        got = wire.decode(shm_message(bytes_input=True).SerializeToString())
        assert got.inputs["X"].tolist() == [text]
    assert wire._wire.fit(shm_message(bytes_input=True).SerializeToString(), None) is not None
    memory[:4] = np.frombuffer((99).to_bytes(4, "little"), np.uint8)  # a length past the region's end
    with pytest.raises(InvalidArgument):
        wire.decode(shm_message(bytes_input=True).SerializeToString())


def test_a_templated_request_sees_regions_unregistered_and_registered_again(registry) -> None:  # type: ignore[no-untyped-def]
    regions, _ = registry
    wire = InferCodec(regions)
    data = shm_message().SerializeToString()
    wire.decode(data)
    key = regions.status("in")[0].key
    regions.unregister("in")
    for decode in (wire.decode, lambda d: request_from_pb(pb.ModelInferRequest.FromString(d), regions=regions)):
        with pytest.raises(NotFound, match="Unable to find shared memory region: 'in'"):
            decode(data)
    regions.register("in", key, 0, 8)  # too small now for the 16 bytes asked for
    for decode in (wire.decode, lambda d: request_from_pb(pb.ModelInferRequest.FromString(d), regions=regions)):
        with pytest.raises(InvalidArgument, match="Invalid offset \\+ byte size"):
            decode(data)


def test_requests_asking_for_classification_are_not_templated() -> None:
    wire = InferCodec()
    msg = message({"A": np.ones((1, 4), np.float32)}, outputs=("Y",))
    msg.outputs[0].parameters["classification"].int64_param = 2
    data = msg.SerializeToString()
    assert wire.decode(data).classification == {"Y": 2}
    assert wire._wire.fit(data, None) is None
