"""Reading and checking ``config.pbtxt``.

The file is protobuf text format; it is parsed with ``google.protobuf.text_format`` into the
generated ``ModelConfig`` message, which stays the source of truth (the ModelConfig RPC returns it).
:class:`Signature` is the validated view of its tensors that request validation uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from ..protocol import codec
from ..protocol.errors import ModelLoadError
from ..protocol.pb import model_config_pb2 as mc
from .ragged_config import check_batch_io

CONFIG_FILE = "config.pbtxt"

ModelConfig = mc.ModelConfig


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: codec.DataType
    dims: tuple[int, ...]  # without the implicit batch dimension
    optional: bool = False
    reshape: tuple[int, ...] | None = None  # the shape the model itself has (reshape.py)


@dataclass(frozen=True, slots=True)
class Signature:
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def read_config(model_dir: Path, filename: str = CONFIG_FILE) -> tuple[mc.ModelConfig, bool]:
    """Parse ``<model_dir>/<filename>`` (``config.pbtxt``, or ``configs/<name>.pbtxt`` with
    ``--model-config-name``); returns (config, whether the file existed)."""
    path = model_dir / filename
    config = mc.ModelConfig()
    if not path.is_file():
        return config, False
    try:
        text = path.read_text(encoding="utf-8")
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read: {e}") from None
    return config, True


_LABEL_NAME = re.compile(r"[a-zA-Z0-9_]+\Z")


def check_metric_tags(config: mc.ModelConfig, source: str) -> None:
    """Each ``metric_tags`` key becomes the label ``_<key>`` (Triton's naming), so it must make a
    valid Prometheus label name, and not one Prometheus reserves (``__`` at the start)."""
    for key in config.metric_tags:
        if not _LABEL_NAME.match(key) or key.startswith("_"):
            raise ModelLoadError(
                f"{source}: metric_tags key '{key}' cannot make the label '_{key}': use letters, digits and "
                "underscores, not starting with '_'"
            )


def check_name(config: mc.ModelConfig, folder_name: str, source: str) -> None:
    if not config.name:
        config.name = folder_name
    elif config.name != folder_name:
        raise ModelLoadError(
            f"{source}: field 'name' is '{config.name}' but the model folder is '{folder_name}'; they must match"
        )


def signature(config: mc.ModelConfig, source: str) -> Signature:
    """Validate the tensor part of a (completed) config and return its checked view."""
    if config.max_batch_size < 0:
        raise ModelLoadError(f"{source}: field 'max_batch_size' must be >= 0")
    inputs = _tensors(config.input, "input", source, optional_ok=True, batched=config.max_batch_size > 0)
    outputs = _tensors(config.output, "output", source, optional_ok=False, batched=config.max_batch_size > 0)
    if not inputs and config.platform != "ensemble" and config.backend != "python":
        raise ModelLoadError(f"{source}: the model declares no 'input'")
    if not outputs:
        raise ModelLoadError(f"{source}: the model declares no 'output'")
    check_batch_io(config, source)
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            raise ModelLoadError(
                f"{source}: 'dynamic_batching' needs 'max_batch_size' > 0 "
                "(a model without a batch dimension cannot be batched)"
            )
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                raise ModelLoadError(
                    f"{source}: dynamic_batching.preferred_batch_size {size} must be in "
                    f"1..max_batch_size ({config.max_batch_size})"
                )
    return Signature(config.max_batch_size, inputs, outputs)


def check_values(config: mc.ModelConfig, source: str, backend: str, gpus: int) -> None:
    """What Triton refuses in a config's values (worded as Triton words it, after ``source``);
    ``gpus`` is how many GPUs this machine has."""
    _check_runtime(config, source, backend)
    for t in config.input:
        if t.format in (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW) and len(t.dims) != 3:
            raise ModelLoadError(f"{source}: input '{t.name}': model input NHWC/NCHW require 3 dims")
    if config.HasField("dynamic_batching"):
        _check_priorities(config.dynamic_batching, source)
    for group in config.instance_group:
        what = f"{source}: instance group {group.name} of model {config.name}"
        if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            raise ModelLoadError(f"{what} has kind KIND_CPU but specifies one or more GPUs")
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL and group.gpus:
            raise ModelLoadError(f"{what} has kind KIND_MODEL but specifies one or more GPUs")
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            if gpus == 0:
                raise ModelLoadError(f"{what} has kind KIND_GPU but no GPUs are available")
            for gpu in group.gpus:
                if not 0 <= gpu < gpus:
                    raise ModelLoadError(
                        f"{what} specifies invalid or unsupported gpu id {gpu}; this machine has {gpus} GPU(s)"
                    )


def _check_runtime(config: mc.ModelConfig, source: str, backend: str) -> None:
    # Triton loads ``runtime`` as the backend's library (or model.py for Python-based backends);
    # inferd accepts the names that mean the backend it already chose.
    if not config.runtime or config.runtime == f"libtriton_{backend}.so":
        return
    if backend == "python" and config.runtime == "model.py":
        return
    raise ModelLoadError(
        f"{source}: field 'runtime' is '{config.runtime}'; inferd serves this model with its "
        f"'{backend}' backend and supports only '' or 'libtriton_{backend}.so' here"
    )


def _check_priorities(section: mc.ModelDynamicBatching, source: str) -> None:
    levels = section.priority_levels
    if levels:
        if not 1 <= section.default_priority_level <= levels:
            raise ModelLoadError(f"{source}: default priority level must be in range [1, {levels}]")
        for level in section.priority_queue_policy:
            if not 1 <= level <= levels:
                raise ModelLoadError(f"{source}: priority queue policy must have priority level in range [1, {levels}]")
    elif section.default_priority_level or section.priority_queue_policy:
        raise ModelLoadError(
            f"{source}: 'default_priority_level' and 'priority_queue_policy' need 'priority_levels' > 0"
        )
    if section.preserve_ordering:
        if levels > 1:
            raise ModelLoadError(f"{source}: Only one priority level is allowed when 'preserve_ordering' is true")
        policies = [section.default_queue_policy, *section.priority_queue_policy.values()]
        if any(p.default_timeout_microseconds and p.timeout_action == mc.ModelQueuePolicy.DELAY for p in policies):
            raise ModelLoadError(
                f"{source}: Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true"
            )


def _tensors(items, kind: str, source: str, optional_ok: bool, batched: bool) -> dict[str, TensorSpec]:  # type: ignore[no-untyped-def]
    out: dict[str, TensorSpec] = {}
    for i, t in enumerate(items):
        where = f"{source}: {kind}[{i}]"
        if not t.name:
            raise ModelLoadError(f"{where}: field 'name' is empty")
        if t.name in out:
            raise ModelLoadError(f"{where}: duplicate {kind} name '{t.name}'")
        type_name = mc.DataType.Name(t.data_type)
        if type_name == "TYPE_INVALID":
            raise ModelLoadError(f"{where} '{t.name}': field 'data_type' is missing")
        try:
            dt = codec.from_config_type(type_name)
        except Exception:
            raise ModelLoadError(f"{where} '{t.name}': unsupported data_type {type_name}") from None
        dims = tuple(int(d) for d in t.dims)
        for d in dims:
            if d < -1 or d == 0:
                raise ModelLoadError(f"{where} '{t.name}': field 'dims' has {d}; dims must be > 0 or -1 (variable)")
        reshape = None
        if t.HasField("reshape"):
            reshape = tuple(int(d) for d in t.reshape.shape)
            _check_reshape(dims, reshape, f"{where} '{t.name}'", batched)
        optional = bool(getattr(t, "optional", False)) if optional_ok else False
        out[t.name] = TensorSpec(t.name, dt, dims, optional, reshape)
    return out


def _check_reshape(dims: tuple[int, ...], reshape: tuple[int, ...], where: str, batched: bool) -> None:
    """Triton's rules: the same element count, or the same counts between variable dimensions;
    an empty reshape (a scalar per batch item) only for dims [1] of a batching model."""
    if not reshape and not batched:
        raise ModelLoadError(
            f"{where}: cannot have empty reshape for non-batching model as scalar tensors are not supported"
        )
    if any(d < -1 or d == 0 for d in reshape):
        raise ModelLoadError(
            f"{where}: reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension"
        )
    if not reshape:
        if dims != (1,):
            raise ModelLoadError(f"{where}: has different size for dims and reshape")
        return
    if _segments(dims) != _segments(reshape):
        if dims.count(-1) != reshape.count(-1):
            raise ModelLoadError(f"{where}: has different number of variable-size dimensions for dims and reshape")
        raise ModelLoadError(f"{where}: has different size for dims and reshape")


def _segments(shape: tuple[int, ...]) -> list[int]:
    """Element counts of the runs between variable dimensions: [2, 4, -1, 6] -> [8, 6]."""
    counts, current = [], 1
    for d in shape:
        if d == -1:
            counts.append(current)
            current = 1
        else:
            current *= d
    counts.append(current)
    return counts


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)
