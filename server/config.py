"""Reading and checking ``config.pbtxt``.

The file is protobuf text format; it is parsed with ``google.protobuf.text_format`` into the
generated ``ModelConfig`` message, which stays the source of truth (the ModelConfig RPC returns it).
:class:`Signature` is the validated view of its tensors that request validation uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from ..protocol import codec
from ..protocol.errors import ModelLoadError
from ..protocol.pb import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"

ModelConfig = mc.ModelConfig


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: codec.DataType
    dims: tuple[int, ...]  # without the implicit batch dimension
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Signature:
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def read_config(model_dir: Path) -> tuple[mc.ModelConfig, bool]:
    """Parse ``<model_dir>/config.pbtxt``; returns (config, whether the file existed)."""
    path = model_dir / CONFIG_FILE
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
    inputs = _tensors(config.input, "input", source, optional_ok=True)
    outputs = _tensors(config.output, "output", source, optional_ok=False)
    if not inputs and config.platform != "ensemble" and config.backend != "python":
        raise ModelLoadError(f"{source}: the model declares no 'input'")
    if not outputs:
        raise ModelLoadError(f"{source}: the model declares no 'output'")
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


def _tensors(items, kind: str, source: str, optional_ok: bool) -> dict[str, TensorSpec]:  # type: ignore[no-untyped-def]
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
        if t.HasField("reshape"):
            raise ModelLoadError(f"{where} '{t.name}': 'reshape' is not supported yet")
        for d in dims:
            if d < -1 or d == 0:
                raise ModelLoadError(f"{where} '{t.name}': field 'dims' has {d}; dims must be > 0 or -1 (variable)")
        optional = bool(getattr(t, "optional", False)) if optional_ok else False
        out[t.name] = TensorSpec(t.name, dt, dims, optional)
    return out


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)
