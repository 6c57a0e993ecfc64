"""Per-tensor parameters of an infer request (an input's or a requested output's), read the same
way by both front ends.

Triton defines ``shared_memory_region``, ``shared_memory_offset`` and ``shared_memory_byte_size``
(inputs and outputs) and ``classification`` (outputs). inferd implements neither extension, so
they are refused as UNIMPLEMENTED, naming the parameter: ignored, the client would silently get
other data than it asked for. ``binary_data_size`` and ``binary_data`` belong to HTTP's binary
tensor extension (``http_convert`` reads them). Any other name is ignored on both protocols, as
Triton does.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...protocol.errors import Unimplemented

SHARED_MEMORY = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


def check_input(params: Mapping[str, object], what: str) -> None:
    """Refuse what inferd does not implement; ``what`` names the tensor, e.g. "model 'm' input 'A'"."""
    _check_shared_memory(params, what)


def check_output(params: Mapping[str, object], what: str) -> None:
    _check_shared_memory(params, what)
    if params.get("classification"):  # 0 or false asks for no classification
        raise Unimplemented(
            f"{what}: parameter 'classification' asks for the classification extension, which inferd does not support"
        )


def _check_shared_memory(params: Mapping[str, object], what: str) -> None:
    for key in SHARED_MEMORY:
        if key in params:
            raise Unimplemented(f"{what}: parameter '{key}' asks for shared memory, which inferd does not support")
