"""Per-tensor parameters of an infer request (an input's or a requested output's), read the same
way by both front ends.

Triton defines ``shared_memory_region``, ``shared_memory_offset`` and ``shared_memory_byte_size``
(inputs and outputs; ``server/shm.py``) and ``classification`` (outputs;
``server/classification.py``). Both are read here, once for both protocols: an input becomes a
numpy view of its region, an output becomes the writable bytes it is written into after the
model runs, or the number of classes it asks for. Every region is looked up through
``SharedMemoryRegistry.view``, whichever kind registered the name: a CUDA region
(``server/cuda_shm.py``) gives an input as a fresh host copy, and an output as a target that is
copied to the device. While the server runs without
``--allow-client-shm=true`` the shared-memory parameters are refused as UNIMPLEMENTED, naming
the parameter and the flag: ignored, the client would silently get other data than it asked for. ``binary_data_size`` and ``binary_data`` belong to
HTTP's binary tensor extension (``http_convert`` reads them). Any other name is ignored on both
protocols, as Triton does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...protocol import codec
from ...protocol.errors import InvalidArgument, Unimplemented
from ..shm import FLAG, SharedMemoryRegistry

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
SHARED_MEMORY = (REGION, OFFSET, BYTE_SIZE)


def uses_shared_memory(params: Mapping[str, object]) -> bool:
    # Three tests, not any() over a generator: this runs for every tensor of every request.
    return REGION in params or OFFSET in params or BYTE_SIZE in params


@dataclass(frozen=True, slots=True)
class RegionUse:
    """What a tensor's parameters ask of shared memory, checked against nothing but themselves:
    which bytes of which region, and for an input how to read them. Front ends that see the same
    parameters again (grpc_wire's templates) keep this and look the region up per request."""

    region: str
    offset: int
    byte_size: int
    what: str
    datatype: codec.DataType | None = None  # inputs only
    shape: tuple[int, ...] = ()


def input_use(
    params: Mapping[str, object],
    datatype: str,
    shape: Sequence[int],
    what: str,
    regions: SharedMemoryRegistry | None,
) -> RegionUse | None:
    """The region an input's parameters name, or None when they name none; ``what`` names the
    tensor, e.g. "model 'm' input 'A'"."""
    if not uses_shared_memory(params):
        return None
    name, offset, byte_size = _region_parameters(params, what, regions)
    dt = codec.datatype(datatype)
    count = codec.element_count(shape, what)
    if dt.itemsize and byte_size != count * dt.itemsize:
        raise InvalidArgument(
            f"{what}: shared_memory_byte_size {byte_size} does not match shape {list(shape)} of {dt.name}, "
            f"which needs {count * dt.itemsize} bytes"
        )
    return RegionUse(name, offset, byte_size, what, dt, tuple(shape))


def read_input(use: RegionUse, regions: SharedMemoryRegistry) -> np.ndarray:
    """The input's array from its region as registered now. Numeric inputs are views of the
    mapping (no copy); BYTES are decoded (and their lengths checked) by the codec."""
    assert use.datatype is not None
    view = regions.view(use.region, use.offset, use.byte_size, use.what)
    array = codec.from_raw(view, use.datatype, use.shape, use.what)
    return array if array.flags.aligned else array.copy()  # backends may assume aligned arrays


def input_from_region(
    params: Mapping[str, object],
    datatype: str,
    shape: Sequence[int],
    what: str,
    regions: SharedMemoryRegistry | None,
) -> np.ndarray | None:
    """The input's array read from its shared-memory region, or None when its parameters name
    no region."""
    use = input_use(params, datatype, shape, what, regions)
    if use is None:
        return None
    assert regions is not None
    return read_input(use, regions)


def output_use(params: Mapping[str, object], what: str, regions: SharedMemoryRegistry | None) -> RegionUse | None:
    """The region a requested output's parameters name, or None when they name none."""
    if not uses_shared_memory(params):
        return None
    name, offset, byte_size = _region_parameters(params, what, regions)
    if "classification" in params:
        raise InvalidArgument(f"{what}: Output can't set both 'shared_memory_region' and 'classification'")
    return RegionUse(name, offset, byte_size, what)


def output_target(use: RegionUse, regions: SharedMemoryRegistry) -> memoryview:
    """The writable bytes of the output's region as registered now."""
    return regions.view(use.region, use.offset, use.byte_size, use.what, writable=True)


def output_region(params: Mapping[str, object], what: str, regions: SharedMemoryRegistry | None) -> memoryview | None:
    """The writable bytes a requested output goes into, or None when it names no region."""
    use = output_use(params, what, regions)
    if use is None:
        return None
    assert regions is not None
    return output_target(use, regions)


def classification_count(params: Mapping[str, object], what: str) -> int:
    """How many classes an output asks for (``classification``; 0 or absent: none)."""
    value = params.get("classification")
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what}: invalid value for 'classification' parameter, expected an integer >= 0")
    return value


def refuse_if_disabled(params: Mapping[str, object], what: str, regions: SharedMemoryRegistry | None) -> None:
    """UNIMPLEMENTED, naming the parameter and the flag, while shared memory is off."""
    if regions is None or not regions.enabled:
        key = next(k for k in SHARED_MEMORY if k in params)
        raise Unimplemented(
            f"{what}: parameter '{key}' asks for shared memory, which is disabled; start the server with '{FLAG}' "
            "to enable it"
        )


def _region_parameters(
    params: Mapping[str, object], what: str, regions: SharedMemoryRegistry | None
) -> tuple[str, int, int]:
    refuse_if_disabled(params, what, regions)
    name = params.get(REGION)
    if name is None:
        key = next(k for k in SHARED_MEMORY if k in params)
        raise InvalidArgument(f"{what}: '{key}' can not be specified without the '{REGION}' parameter")
    if not isinstance(name, str):
        raise InvalidArgument(f"{what}: parameter '{REGION}' must be a string")
    offset = params.get("shared_memory_offset", 0)
    byte_size = params.get("shared_memory_byte_size")
    if byte_size is None:
        raise InvalidArgument(f"{what}: parameter 'shared_memory_byte_size' is required with '{REGION}'")
    for key, value in (("shared_memory_offset", offset), ("shared_memory_byte_size", byte_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"{what}: parameter '{key}' must be a non-negative integer")
    return name, offset, byte_size  # type: ignore[return-value]
