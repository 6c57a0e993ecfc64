"""Request validation against a model's signature, before anything reaches a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol import codec
from ..protocol.errors import InvalidArgument
from .config import Signature, TensorSpec


@dataclass(slots=True)
class Validated:
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    batch_size: int
    nbytes: int  # of all inputs


def validate(label: str, sig: Signature, inputs: dict[str, np.ndarray], requested: list[str] | None) -> Validated:
    """Check names, datatypes, shapes and batch size; ``label`` names the model in messages."""
    if inputs.keys() != sig.inputs.keys():
        _check_names(label, sig, inputs)
    batch: int | None = None
    nbytes = 0
    for spec in sig.inputs.values():
        array = inputs.get(spec.name)
        if array is None:
            continue  # optional (_check_names refused a missing required input)
        rows = _check_tensor(label, sig.max_batch_size, spec, array)
        nbytes += array.nbytes
        if batch is None:
            batch = rows
        elif rows != batch:
            raise InvalidArgument(
                f"{label}: input '{spec.name}' has batch size {rows} but other inputs have {batch}; "
                "all inputs must share the batch dimension"
            )
    if requested is None:
        outputs = list(sig.outputs)
    else:
        seen = set()
        for name in requested:
            if name not in sig.outputs:
                raise InvalidArgument(
                    f"{label}: unknown requested output '{name}'; the model's outputs are {sorted(sig.outputs)}"
                )
            if name in seen:
                raise InvalidArgument(f"{label}: output '{name}' is requested twice")
            seen.add(name)
        outputs = list(requested) or list(sig.outputs)
    return Validated(inputs, outputs, batch if batch is not None else 1, nbytes)


def _check_names(label: str, sig: Signature, inputs: dict[str, np.ndarray]) -> None:
    """The slow path, when the input names differ from the signature's: unknown or missing."""
    for name in inputs:
        if name not in sig.inputs:
            raise InvalidArgument(f"{label}: unexpected input '{name}'; the model's inputs are {sorted(sig.inputs)}")
    for spec in sig.inputs.values():
        if spec.name not in inputs and not spec.optional:
            raise InvalidArgument(f"{label}: missing required input '{spec.name}'")


def _check_tensor(label: str, max_batch_size: int, spec: TensorSpec, array: np.ndarray) -> int:
    # Arrays decoded from the wire carry the datatype's own wire dtype: an identity test.
    if array.dtype is not spec.datatype.wire and (got := codec.of_array(array)) is not spec.datatype:
        raise InvalidArgument(
            f"{label}: input '{spec.name}' has datatype {got.name} but the model expects {spec.datatype.name}"
        )
    shape = array.shape
    dims = spec.dims
    rows = 1
    if max_batch_size > 0:
        if len(shape) != len(dims) + 1:
            raise InvalidArgument(
                f"{label}: input '{spec.name}' has shape {list(shape)} but the model expects "
                f"{[-1, *dims]} (batch dimension first)"
            )
        rows = shape[0]
        if rows < 1 or rows > max_batch_size:
            raise InvalidArgument(
                f"{label}: input '{spec.name}' has batch size {rows}; it must be between 1 and "
                f"max_batch_size ({max_batch_size})"
            )
        shape = shape[1:]
    if shape != dims and (len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape))):
        expected = [-1, *dims] if max_batch_size > 0 else list(dims)
        raise InvalidArgument(
            f"{label}: input '{spec.name}' has shape {list(array.shape)} but the model expects {expected}"
        )
    return rows
