"""Helpers the framework backends share: config parameters, datatypes through the one codec,
config auto-completion from a model's own tensor metadata, and output checks.

Auto-completion works on the protobuf config (it runs before the typed spec exists); everything
a backend does when it loads and executes reads the spec."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol import codec
from ..protocol.errors import Internal, ModelLoadError
from ..protocol.model_spec import Input, ModelSpec, Output
from ..protocol.pb import model_config_pb2 as mc

# Triton's default when auto-completing a batchable model.
DEFAULT_MAX_BATCH_SIZE = 4
# The server's default for the auto-complete in progress (Triton's --backend-config
# default-max-batch-size), set by the loader around a model's auto-complete.
AUTO_COMPLETE_MAX_BATCH: ContextVar[int] = ContextVar("auto_complete_max_batch", default=DEFAULT_MAX_BATCH_SIZE)


@dataclass(frozen=True)
class TensorInfo:
    """What a model file says about one of its tensors (dims include any batch dimension)."""

    name: str
    datatype: codec.DataType | None  # None when the framework type has no KServe datatype
    shape: tuple[int, ...] | None  # -1 for unknown dims; None for unknown rank


def int_param(params: Mapping[str, str], keys: Sequence[str], default: int) -> int:
    """An integer ``parameters`` entry; the first of ``keys`` present wins (spelling aliases)."""
    for key in keys:
        value = params.get(key)
        if value is None or value == "":
            continue
        try:
            return int(value)
        except ValueError:
            raise ModelLoadError(f"parameter '{key}' must be an integer, got '{value}'") from None
    return default


def usable_cpus() -> int:
    """CPUs this process may run on (a ``taskset`` or container limit counts, unlike cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(spec: ModelSpec) -> int:
    """Intra-op threads per instance so that a model's instances together fill the cores once."""
    instances = sum(max(g.count, 1) for g in spec.instance_group) or 1
    return max(1, usable_cpus() // instances)


def datatype_of(dtype: Any) -> codec.DataType | None:
    """The KServe datatype of a numpy dtype (or numpy scalar type), through the codec."""
    try:
        return codec.of_array(np.empty(0, dtype=dtype))
    except Exception:
        return None


def complete_config(
    config: mc.ModelConfig,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    max_batch_size: int | None = None,
) -> None:
    """Fill in the tensors a config leaves out, Triton style: a model whose every tensor has a
    variable first dimension gets ``max_batch_size`` (default: the server's default-max-batch-size,
    4 unless --backend-config changes it) and dynamic batching when the config names no tensors
    and no batch size; declared fields are never overwritten."""
    if max_batch_size is None:
        max_batch_size = AUTO_COMPLETE_MAX_BATCH.get()
    everything = list(inputs) + list(outputs)
    batchable = bool(everything) and all(t.shape and t.shape[0] < 0 for t in everything)
    if config.max_batch_size == 0 and not config.input and not config.output and batchable and max_batch_size > 0:
        config.max_batch_size = max_batch_size
        # As in Triton: the dynamic batcher where a batch can hold more than one request.
        if max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
            config.dynamic_batching.SetInParent()
    skip = 1 if config.max_batch_size > 0 else 0
    fed_inputs, kept_outputs = server_fed(config)
    for items, found, leave_out in ((config.input, inputs, fed_inputs), (config.output, outputs, kept_outputs)):
        by_name = {t.name: t for t in items}
        for info in found:
            if info.name in leave_out:
                continue
            t = by_name.get(info.name)
            if t is None:
                t = items.add()
                t.name = info.name
            if t.data_type == mc.TYPE_INVALID and info.datatype is not None:
                t.data_type = mc.DataType.Value(info.datatype.config_name)
            if not t.dims and info.shape is not None:
                t.dims.extend(info.shape[skip:])


def server_fed(config: mc.ModelConfig) -> tuple[set[str], set[str]]:
    """A sequence model's inputs the server feeds (control inputs, implicit state inputs) and the
    state outputs it keeps: never client tensors, so auto-complete leaves them out of the config."""
    section = config.sequence_batching
    inputs = {c.name for c in section.control_input} | {s.input_name for s in section.state}
    inputs |= batch_input_names(config)  # ragged batching's batch inputs, computed per batch
    return inputs, {s.output_name for s in section.state}


def batch_input_names(config: mc.ModelConfig | ModelSpec) -> set[str]:
    """The target names of ``batch_input``: model inputs the server computes for each batch."""
    return {name for b in config.batch_input for name in b.target_name}


def check_tensors(source: str, spec: ModelSpec, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> None:
    """Refuse a config whose tensor names, datatypes or batching disagree with the model file."""
    items: tuple[Input | Output, ...]
    scattered = {name for b in spec.batch_output for name in b.target_name}
    fed = batch_input_names(spec)
    missing = sorted(fed - {t.name for t in inputs})
    if missing:
        raise ModelLoadError(f"{source}: batch input target(s) {missing} are not inputs of the model")
    for kind, items, found in (("input", spec.input, inputs), ("output", spec.output, outputs)):
        by_name = {t.name: t for t in found}
        for t in items:
            info = by_name.get(t.name)
            if info is None:
                raise ModelLoadError(f"{source}: {kind} '{t.name}' is not in the model ({sorted(by_name)})")
            declared = t.data_type.config_name
            if info.datatype is not None and declared != info.datatype.config_name:
                raise ModelLoadError(
                    f"{source}: {kind} '{t.name}' is declared {declared} but the model has {info.datatype.config_name}"
                )
            if info.shape is None or t.name in scattered:
                continue  # a batch output's shape need not match the model's (Triton's backends)
            if isinstance(t, Input) and t.allow_ragged_batch:
                if len(info.shape) != 1 or info.shape[0] > 0:
                    raise ModelLoadError(
                        f"{source}: configuration expects model provides input with shape [-1] for ragged "
                        f"input '{t.name}', model provides {list(info.shape)}"
                    )
                continue
            if spec.max_batch_size > 0 and (not info.shape or info.shape[0] > 0):
                raise ModelLoadError(
                    f"{source}: max_batch_size is {spec.max_batch_size} but the model's {kind} "
                    f"'{t.name}' has shape {list(info.shape)} without a variable batch dimension"
                )
            model_dims = info.shape[1:] if spec.max_batch_size > 0 else info.shape
            dims = list(t.dims)
            if len(dims) != len(model_dims) or any(d > 0 and m > 0 and d != m for d, m in zip(dims, model_dims)):
                raise ModelLoadError(
                    f"{source}: {kind} '{t.name}' has dims {dims} but the model's shape is {list(info.shape)}"
                    + (" (the first dimension is the batch)" if spec.max_batch_size > 0 else "")
                )


def output_types(spec: ModelSpec) -> dict[str, codec.DataType]:
    return {t.name: t.data_type for t in spec.output}


def check_output(label: str, name: str, array: np.ndarray, expected: codec.DataType | None) -> np.ndarray:
    """Fail an execution whose output datatype contradicts config.pbtxt, as Triton does."""
    if expected is None:
        return array
    got = codec.of_array(array)
    if got is not expected:
        raise Internal(f"{label}: output '{name}' came back as {got.name} but config.pbtxt declares {expected.name}")
    return array
