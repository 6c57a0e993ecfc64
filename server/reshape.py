"""``reshape`` on inputs and outputs: clients see ``dims``, the model sees ``reshape.shape``.

An input arrives in the shape its ``dims`` allow and reaches the model as its ``reshape``; an
output leaves the model in its ``reshape`` and reaches the client as its ``dims``. Variable
dimensions (-1) carry over in order: the n-th variable dimension of one side takes the n-th
variable size of the other, which load-time checks (config._check_reshape) make consistent.
Reshaping a contiguous array is a view, so no tensor is copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..protocol.errors import Internal
from ..protocol.types import ModelOutputs
from .config import Signature


@dataclass(frozen=True, slots=True)
class _Pair:
    client: tuple[int, ...]  # ``dims``
    model: tuple[int, ...]  # ``reshape.shape``


def needs_reshape(signature: Signature) -> bool:
    return any(s.reshape is not None for s in (*signature.inputs.values(), *signature.outputs.values()))


class Reshaper:
    """The reshapes of one model version; built only when a tensor of it has ``reshape``."""

    def __init__(self, label: str, signature: Signature) -> None:
        self.label = label
        self.batched = signature.max_batch_size > 0
        self.inputs = {n: _Pair(s.dims, s.reshape) for n, s in signature.inputs.items() if s.reshape is not None}
        self.outputs = {n: _Pair(s.dims, s.reshape) for n, s in signature.outputs.items() if s.reshape is not None}

    def to_model(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked client inputs (validation.validate) to the shapes the model declares."""
        for name, pair in self.inputs.items():
            array = inputs.get(name)
            if array is not None:
                inputs[name] = array.reshape(self._shape(array.shape, pair.client, pair.model))
        return inputs

    def to_client(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # (keeps the response parameters a Python model set)
        out = ModelOutputs(outputs, outputs.parameters) if isinstance(outputs, ModelOutputs) else dict(outputs)
        for name, pair in self.outputs.items():
            array = out.get(name)
            if array is None:
                continue
            try:
                out[name] = array.reshape(self._shape(array.shape, pair.model, pair.client))
            except ValueError:
                raise Internal(
                    f"{self.label}: output '{name}' came back with shape {list(array.shape)}, which does not "
                    f"fit its reshape {list(pair.model)} (dims {list(pair.client)})"
                ) from None
        return out

    def _shape(self, shape: tuple[int, ...], source: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
        batch, item = (shape[:1], shape[1:]) if self.batched else ((), shape)
        if len(item) != len(source):
            raise ValueError(shape)
        variable = iter(size for size, dim in zip(item, source) if dim == -1)
        return (*batch, *(next(variable) if dim == -1 else dim for dim in target))
