"""What a sequence model receives besides the client's tensors: the correlation id and flags read
from the request's parameters, and the control input tensors of ``sequence_batching`` (START,
END, READY with the config's false/true values; CORRID with the request's correlation id).

Tensors have shape [1], or [1, 1] for a batching model (one row per request), as in Triton.
Boolean controls are built once and shared read-only; only CORRID is built per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...protocol import codec
from ...protocol.errors import InvalidArgument
from ...protocol.model_spec import SequenceBatching, SequenceControl
from ...protocol.types import Scalar

CorrId = int | str  # an unsigned 64-bit integer or a string; 0 and "" mean "none"

# Triton's TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END.
FLAG_START = 1
FLAG_END = 2
_U64 = 1 << 64

START, END, READY, CORRID = (
    "CONTROL_SEQUENCE_START",
    "CONTROL_SEQUENCE_END",
    "CONTROL_SEQUENCE_READY",
    "CONTROL_SEQUENCE_CORRID",
)


def sequence_parameters(params: Mapping[str, Scalar]) -> tuple[CorrId, int]:
    """The request's correlation id (0 when it sent none) and flags, from the parameters
    ``sequence_id`` (an unsigned 64-bit integer or a string: a negative number, one past 2**64 - 1,
    a fraction or a boolean is refused; the gRPC front end reads a negative int64_param as the
    uint64 of the same bits, grpc_params.py), ``sequence_start`` and ``sequence_end``."""
    corr: CorrId = 0
    value = params.get("sequence_id")
    if value is not None:
        if isinstance(value, str):
            corr = value
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64:
            corr = value
        else:
            raise InvalidArgument(
                "invalid value type for 'sequence_id' parameter, expected an unsigned integer or a string"
            )
    flags = 0
    for key, bit in (("sequence_start", FLAG_START), ("sequence_end", FLAG_END)):
        flag = params.get(key)
        if flag is None:
            continue
        if not isinstance(flag, bool):
            raise InvalidArgument(f"invalid value type for '{key}' parameter, expected a boolean")
        if flag:
            flags |= bit
    return corr, flags


class Controls:
    """The control inputs of one sequence model, ready to add to a request's inputs."""

    def __init__(self, spec: SequenceBatching, batched: bool) -> None:
        self.shape = (1, 1) if batched else (1,)
        by_kind: dict[str, tuple[str, SequenceControl]] = {
            c.kind: (ci.name, c) for ci in spec.control_input for c in ci.control
        }
        # Index: a real request's flags (0..3); READY is true for every real request.
        self.by_flags: list[dict[str, np.ndarray]] = [{} for _ in range(4)]
        self.not_ready: dict[str, np.ndarray] = {}  # a batch slot without a request
        for kind in (START, END, READY):
            if kind not in by_kind:
                continue
            name, control = by_kind[kind]
            false, true = self._false_true(control)
            for flags in range(4):
                on = kind == READY or (kind == START and flags & FLAG_START) or (kind == END and flags & FLAG_END)
                self.by_flags[flags][name] = true if on else false
            self.not_ready[name] = false
        self.corrid: tuple[str, codec.DataType] | None = None
        if CORRID in by_kind:
            name, control = by_kind[CORRID]
            assert control.data_type is not None  # sequence_config.check refused the rest
            self.corrid = (name, control.data_type)
            self.not_ready[name] = self._corrid_tensor("" if control.data_type is codec.BYTES else 0)

    def _false_true(self, c: SequenceControl) -> tuple[np.ndarray, np.ndarray]:
        values: tuple[object, ...]
        dtype: np.dtype[Any]
        if c.int32_false_true:
            dtype, values = np.dtype(np.int32), c.int32_false_true
        elif c.fp32_false_true:
            dtype, values = np.dtype(np.float32), c.fp32_false_true
        else:
            dtype, values = np.dtype(np.bool_), c.bool_false_true
        false, true = (np.full(self.shape, v, dtype) for v in values[:2])
        false.flags.writeable = true.flags.writeable = False
        return false, true

    def check(self, corr: CorrId, model: str) -> None:
        """Triton's check that the correlation id's type fits the CORRID control's data type."""
        if self.corrid is None:
            return
        name, dt = self.corrid
        if isinstance(corr, str) and dt is not codec.BYTES:
            got = "BYTES"
        elif isinstance(corr, int) and dt is codec.BYTES:
            got = "UINT64"
        else:
            return
        raise InvalidArgument(
            f"sequence batching control '{name}' data-type is '{got}', but model '{model}' expects '{dt.name}'"
        )

    def inputs(self, flags: int, corr: CorrId) -> dict[str, np.ndarray]:
        """The control tensors of a request with these flags and correlation id (a new dict)."""
        out = dict(self.by_flags[flags & 3])
        if self.corrid is not None:
            out[self.corrid[0]] = self._corrid_tensor(corr)
        return out

    def _corrid_tensor(self, corr: CorrId) -> np.ndarray:
        assert self.corrid is not None
        dt = self.corrid[1]
        if dt is codec.BYTES:
            return np.full(self.shape, str(corr).encode(), dtype=object)
        value = int(corr)
        if dt.itemsize == 4:  # Triton copies the low bytes of the uint64
            bits = np.full(self.shape, value & 0xFFFFFFFF, np.uint32)
        else:
            bits = np.full(self.shape, value, np.uint64)
        return bits.view(dt.dtype)
