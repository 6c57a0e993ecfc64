"""What to send: the model's signature (from its metadata and config) and the input tensors
built from it, following perf_analyzer's ``--input-data``, ``--shape`` and ``-b`` rules.

``--input-data random`` fills numeric tensors with random *bytes*, as perf_analyzer does, so
NaN and Inf floats are sent too; ``zero`` sends zeros; a JSON file holds
``{"data": [{"INPUT0": [...] | {"content": [...], "shape": [...]} | {"b64": "..."}}, ...]}``,
one entry per sample, used in turn.
"""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol import codec
from ..protocol.errors import InvalidArgument
from ..protocol.pb import model_config_pb2 as mc


class InputError(ValueError):
    """The requested inputs cannot be built for this model (a usage error)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension; -1 = variable
    optional: bool = False
    is_shape_tensor: bool = False


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[str, ...]
    decoupled: bool = False
    response_cache: bool = False

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], config: mc.ModelConfig, version: str = "") -> ModelInfo:
        """``metadata`` as KServe's JSON shape: name, inputs/outputs of {name, datatype, shape}."""
        batching = config.max_batch_size > 0
        by_name = {i.name: i for i in config.input}
        inputs = []
        for t in metadata["inputs"]:
            shape = [int(d) for d in t["shape"]]
            if batching:
                if not shape or shape[0] != -1:
                    raise InputError(f"input '{t['name']}': metadata shape {shape} lacks the batch dimension")
                shape = shape[1:]
            c = by_name.get(t["name"])
            inputs.append(
                TensorInfo(
                    t["name"],
                    t["datatype"],
                    tuple(shape),
                    optional=bool(c and c.optional),
                    is_shape_tensor=bool(c and c.is_shape_tensor),
                )
            )
        return cls(
            name=str(metadata["name"]),
            version=version,
            max_batch_size=config.max_batch_size,
            inputs=tuple(inputs),
            outputs=tuple(str(o["name"]) for o in metadata["outputs"]),
            decoupled=config.model_transaction_policy.decoupled,
            response_cache=config.response_cache.enable,
        )


@dataclass(frozen=True)
class DataOptions:
    batch_size: int = 1
    shapes: Mapping[str, Sequence[int]] | None = None  # --shape NAME:d1,d2 (no batch dim)
    input_data: str = "random"  # zero | random | path to a JSON file
    string_length: int = 128
    string_data: str | None = None
    seed: int = 0


def parse_shape(text: str) -> tuple[str, list[int]]:
    """``NAME:d1,d2,...`` (perf_analyzer's --shape); the name itself may contain ':'."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise InputError(f"--shape expects NAME:d1,d2,... (got '{text}')")
    try:
        values = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        raise InputError(f"--shape {text}: dimensions must be integers") from None
    if any(d < 0 for d in values):
        raise InputError(f"--shape {text}: dimensions must not be negative")
    return name, values


def _dims(info: TensorInfo, opts: DataOptions, override: Sequence[int] | None = None) -> tuple[int, ...]:
    given = override if override is not None else (opts.shapes or {}).get(info.name)
    if given is not None:
        given = tuple(given)
        if len(given) != len(info.dims) or any(d != g for d, g in zip(info.dims, given) if d != -1):
            raise InputError(f"input '{info.name}': shape {list(given)} does not fit the model's {list(info.dims)}")
        return given
    if any(d < 0 for d in info.dims):
        raise InputError(
            f"input '{info.name}' has variable dimensions {list(info.dims)}; give its shape with "
            f"--shape {info.name}:" + ",".join("N" if d < 0 else str(d) for d in info.dims)
        )
    return info.dims


def _dtype(info: TensorInfo) -> np.dtype:
    try:
        return codec.datatype(info.datatype).dtype
    except InvalidArgument as e:
        raise InputError(f"input '{info.name}': {e}") from None


def _sample(info: TensorInfo, dims: tuple[int, ...], opts: DataOptions, rng: np.random.Generator) -> np.ndarray:
    """One sample (no batch dim) of zero or random data."""
    count = int(np.prod(dims)) if dims else 1
    if info.datatype == "BYTES":
        if opts.string_data is not None:
            text = opts.string_data
        elif opts.input_data == "zero":
            text = "0"
        else:
            alphabet = np.array(list(string.ascii_letters + string.digits))
            text = "".join(rng.choice(alphabet, opts.string_length))
        out = np.empty(count, dtype=object)
        out[:] = [text.encode()] * count
        return out.reshape(dims)
    dtype = _dtype(info)
    if opts.input_data == "zero":
        return np.zeros(dims, dtype=dtype)
    if info.datatype == "BOOL":
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    raw = rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8).tobytes()
    return np.frombuffer(raw, dtype=dtype).reshape(dims).copy()


def _from_json(info: TensorInfo, value: Any, opts: DataOptions) -> np.ndarray:
    shape_override = None
    if isinstance(value, dict):
        shape_override = value.get("shape")
        if "b64" in value:
            raw = base64.b64decode(value["b64"])
            dims = _dims(info, opts, shape_override)
            if info.datatype == "BYTES":
                try:
                    return codec.from_raw(raw, codec.BYTES, dims, f"input '{info.name}'")
                except InvalidArgument as e:
                    raise InputError(str(e)) from None
            return np.frombuffer(raw, dtype=_dtype(info)).reshape(dims).copy()
        value = value.get("content")
        if value is None:
            raise InputError(f"input '{info.name}': a JSON entry needs 'content' or 'b64'")
    dims = _dims(info, opts, shape_override)
    flat = np.asarray(value, dtype=object if info.datatype == "BYTES" else _dtype(info)).ravel()
    if info.datatype == "BYTES":
        flat = np.array([v.encode() if isinstance(v, str) else bytes(v) for v in flat], dtype=object)
    expected = int(np.prod(dims)) if dims else 1
    if flat.size != expected:
        raise InputError(
            f"input '{info.name}': {flat.size} values in the JSON data, shape {list(dims)} needs {expected}"
        )
    return flat.reshape(dims)


def _json_samples(model: ModelInfo, opts: DataOptions) -> list[dict[str, np.ndarray]]:
    try:
        doc = json.loads(Path(opts.input_data).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--input-data {opts.input_data}: {e}") from None
    entries = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f'--input-data {opts.input_data}: expected {{"data": [ {{input: values}}, ... ]}}')
    samples = []
    for i, entry in enumerate(entries):
        sample = {}
        for t in model.inputs:
            if t.name not in entry:
                if t.optional:
                    continue
                raise InputError(f"--input-data entry {i} has no value for input '{t.name}'")
            sample[t.name] = _from_json(t, entry[t.name], opts)
        samples.append(sample)
    return samples


def build_requests(model: ModelInfo, opts: DataOptions) -> list[dict[str, np.ndarray]]:
    """The input tensors of each distinct request to send (in turn), batch dim included."""
    if opts.batch_size < 1:
        raise InputError("-b must be at least 1")
    if model.max_batch_size == 0 and opts.batch_size > 1:
        raise InputError(f"model '{model.name}' does not support batching (max_batch_size 0); -b must be 1")
    if model.max_batch_size > 0 and opts.batch_size > model.max_batch_size:
        raise InputError(f"-b {opts.batch_size} exceeds the model's max_batch_size {model.max_batch_size}")
    if model.decoupled:
        raise InputError(f"model '{model.name}' is decoupled (0..N responses per request); not supported")
    if opts.input_data in ("zero", "random"):
        rng = np.random.default_rng(opts.seed)
        samples = [{t.name: _sample(t, _dims(t, opts), opts, rng) for t in model.inputs if not t.optional}]
    else:
        samples = _json_samples(model, opts)
    if model.max_batch_size == 0:
        return samples
    b = opts.batch_size
    # One request stacks b consecutive samples (cycling), so every sample is sent.
    count = max(len(samples) // b, 1) if len(samples) % b == 0 else len(samples)
    requests = []
    for r in range(count):
        group = [samples[(r * b + k) % len(samples)] for k in range(b)]
        requests.append({name: np.stack([s[name] for s in group]) for name in group[0]})
    return requests
