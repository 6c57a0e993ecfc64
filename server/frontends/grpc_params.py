"""gRPC ``map<string, InferParameter>`` fields <-> the core's scalar parameters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ...protocol.fields import set_parameter
from ...protocol.types import Scalar

_UNSET = object()
_U64 = 1 << 64


class PbParameters(Mapping[str, Scalar]):
    """A parameter map read from the message when asked for: the core looks at one or two keys,
    and converting the whole map up front would cost more than that."""

    __slots__ = ("_map",)

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._map = params

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self._map:
            return default
        p = self._map[key]
        which = p.WhichOneof("parameter_choice")
        if which is None:
            return default
        value = getattr(p, which)
        if which == "int64_param" and value < 0 and key == "sequence_id":
            # Triton's clients send a uint64 correlation id as int64_param (the C++ client's
            # set_int64_param(uint64_t)), so ids from 2**63 up arrive negative: read back the
            # same bits, as Triton does. HTTP has no such wire type: a negative id is refused there.
            value += _U64
        return value

    def __getitem__(self, key: str) -> Scalar:
        value = self.get(key, _UNSET)
        if value is _UNSET:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return (k for k, p in self._map.items() if p.WhichOneof("parameter_choice") is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return len(self._map) > 0  # a parameter with no value set is as good as absent, and rare


def parameters_to_pb(values: Mapping[str, Scalar], target: Any) -> None:
    for key, v in values.items():
        set_parameter(target[key], v)
