"""Triton's classification extension: an output requested with the parameter
``classification: k`` comes back as a BYTES tensor of its k largest values, each as
``"<value>:<index>"`` or ``"<value>:<index>:<label>"`` where the output's ``label_filename``
names one; per batch item for a batching model, shape ``[batch, k]`` (else ``[k]``), with k
capped at the number of values per item. Values are printed as C's ``%f`` (floats) and ``%d``
(integers), as Triton prints them, and equal values keep index order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..protocol import codec
from ..protocol.errors import InvalidArgument, ModelLoadError
from ..protocol.pb import model_config_pb2 as mc

MAX_ELEMENTS = 1_000_000  # per batch item, as Triton bounds it
_CLASSIFIABLE = frozenset("INT8 INT16 INT32 INT64 UINT8 UINT16 UINT32 UINT64 FP32 FP64".split())


def read_labels(model_dir: Path, config: mc.ModelConfig, source: str) -> dict[str, tuple[str, ...]]:
    """Each output's labels from its ``label_filename`` (one per line, in the model folder)."""
    labels: dict[str, tuple[str, ...]] = {}
    root = model_dir.resolve()
    for t in config.output:
        if not t.label_filename:
            continue
        path = (root / t.label_filename).resolve()
        if Path(t.label_filename).is_absolute() or not path.is_relative_to(root):
            raise ModelLoadError(f"{source}: output '{t.name}': label_filename must name a file in the model folder")
        try:
            labels[t.name] = tuple(path.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError):
            raise ModelLoadError(
                f"{source}: output '{t.name}': cannot read label_filename '{t.label_filename}'"
            ) from None
    return labels


def classify(
    outputs: Mapping[str, np.ndarray],
    counts: Mapping[str, int],
    labels: Mapping[str, Sequence[str]],
    batched: bool,
    label: str,
) -> dict[str, np.ndarray]:
    """``outputs`` with each output named in ``counts`` replaced by its classification."""
    out = dict(outputs)
    for name, k in counts.items():
        array = out.get(name)
        if array is not None:
            out[name] = _top(array, k, labels.get(name, ()), batched, f"{label} output '{name}'")
    return out


def _top(array: np.ndarray, k: int, labels: Sequence[str], batched: bool, what: str) -> np.ndarray:
    dt = codec.of_array(array)
    if dt.name not in _CLASSIFIABLE:
        raise InvalidArgument(f"{what}: class result not available for output due to unsupported type '{dt.name}'")
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim > 0 else array.reshape(1, -1)
    if rows.shape[1] > MAX_ELEMENTS:
        raise InvalidArgument(f"{what}: classification output tensor too large")
    n = min(k, rows.shape[1])
    # Descending, ties in index order: a stable sort of the negated values (exact for every
    # type but 64-bit integers beyond 2**53, which is far past any score).
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :n]
    fmt = "%f" if dt.dtype.kind == "f" else "%d"
    out = np.empty(order.shape, dtype=object)
    for r, indexes in enumerate(order):
        values = rows[r]
        for c, i in enumerate(indexes.tolist()):
            text = f"{fmt % values[i]}:{i}"
            if i < len(labels) and labels[i]:
                text += f":{labels[i]}"
            out[r, c] = text.encode()
    return out if batched and array.ndim > 0 else out.reshape(n)
