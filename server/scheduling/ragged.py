"""Ragged batching: what a model with ``allow_ragged_batch``, ``batch_input`` or ``batch_output``
is fed and how its outputs go back, as Triton's framework backends do it (backend repository,
backend_input_collector.cc and backend_output_responder.cc; onnxruntime_backend's ragged inputs).

* Requests whose ragged inputs differ in shape share a batch; every other input must still match
  (the batcher keys them by :meth:`RaggedBatching.batch_key`).
* A ragged input reaches the model as one 1-D tensor: each request's elements, flattened, one
  request after the other. There is no batch dimension.
* Each batch input is computed from the shapes its source input has in the batch's requests
  (batch dimension included) and fed under every one of its target names, in its data_type:

  ============================================  =========================  =============================
  kind                                          shape                      values
  ============================================  =========================  =============================
  BATCH_ELEMENT_COUNT                           [requests]                 each request's element count
  BATCH_ACCUMULATED_ELEMENT_COUNT               [requests]                 running sums of those counts
  BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO     [requests + 1]             0, then the running sums
  BATCH_MAX_ELEMENT_COUNT_AS_SHAPE              [largest count]            zeros (only the shape says)
  BATCH_ITEM_SHAPE                              [batch items, rank - 1]    each item's shape, one row
                                                                           per batch item
  BATCH_ITEM_SHAPE_FLATTEN                      [items * (rank - 1)]       the same values, flat
  ============================================  =========================  =============================

* A batch output (BATCH_SCATTER_WITH_INPUT_SHAPE) is read as one flat buffer: each request in
  turn takes the elements of the output's shape (``[-1] + dims`` with batching) whose -1s take
  the sizes of the source input's dimensions at the same positions in that request.
* Every other output is split along its batch dimension, as without ragged batching.

A backend that takes its requests one by one (Python models) gets them as they came, without
batch inputs, as in Triton's Python backend: only the batching of different shapes applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

import numpy as np

from ...protocol.errors import Internal
from ...protocol.model_spec import BatchInput, ModelSpec
from .work import Work


class RaggedBatching:
    """One model's ragged inputs, batch inputs and batch outputs (see the module docstring)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.ragged = frozenset(t.name for t in spec.input if t.allow_ragged_batch)
        self.batch_inputs = spec.batch_input
        self.batched = spec.max_batch_size > 0
        dims = {t.name: t.dims for t in spec.output}
        lead = (-1,) if self.batched else ()
        # Batch output target -> (source input, its shape with -1 where the source's size goes).
        self.scatter: dict[str, tuple[str, tuple[int, ...]]] = {
            name: (b.source_input[0], lead + tuple(dims[name])) for b in spec.batch_output for name in b.target_name
        }

    @classmethod
    def of(cls, spec: ModelSpec) -> RaggedBatching | None:
        """None for a model without ragged batching (the common case: no cost anywhere)."""
        if spec.batch_input or spec.batch_output or any(t.allow_ragged_batch for t in spec.input):
            return cls(spec)
        return None

    def batch_key(self, work: Work) -> tuple[Any, ...]:
        """Work.batch_key, except that a ragged input's shape does not keep requests apart."""
        ragged = self.ragged
        return tuple(
            (name, a.dtype.str, None if name in ragged else a.shape[1:]) for name, a in sorted(work.inputs.items())
        ) + (tuple(work.outputs),)

    def merge(self, items: Sequence[Work]) -> dict[str, np.ndarray]:
        """The model's inputs for ``items``: ragged ones flat, the rest stacked, batch inputs added."""
        first = items[0].inputs
        inputs: dict[str, np.ndarray] = {}
        for name, array in first.items():
            if name in self.ragged:
                inputs[name] = (
                    array.reshape(-1)
                    if len(items) == 1
                    else np.concatenate([w.inputs[name].reshape(-1) for w in items])
                )
            else:
                inputs[name] = array if len(items) == 1 else np.concatenate([w.inputs[name] for w in items])
        for b in self.batch_inputs:
            value = batch_input_value(b, [w.inputs[b.source_input[0]].shape for w in items])
            for target in b.target_name:
                inputs[target] = value
        return inputs

    def split(
        self, label: str, items: Sequence[Work], produced: Mapping[str, Any], outputs: Sequence[str], total: int
    ) -> list[dict[str, np.ndarray]]:
        """Each request's outputs: batch outputs scattered by their source's shapes, the rest
        split along the batch dimension (``total`` rows)."""
        results: list[dict[str, np.ndarray]] = [{} for _ in items]
        for name in outputs:
            if name not in produced:
                missing = [n for n in outputs if n not in produced]
                raise Internal(f"{label}: backend did not produce output(s) {missing}")
            array = np.asarray(produced[name])
            scatter = self.scatter.get(name)
            if scatter is not None:
                self._scatter(label, name, array, scatter, items, results)
            elif not self.batched:
                results[0][name] = array  # one request per execution
            else:
                if array.ndim == 0 or array.shape[0] != total:
                    raise Internal(
                        f"{label}: output '{name}' has shape {list(array.shape)} but the batch has {total} rows"
                    )
                start = 0
                for w, r in zip(items, results):
                    r[name] = array[start : start + w.batch_size]
                    start += w.batch_size
        return results

    @staticmethod
    def _scatter(
        label: str,
        name: str,
        array: np.ndarray,
        scatter: tuple[str, tuple[int, ...]],
        items: Sequence[Work],
        results: list[dict[str, np.ndarray]],
    ) -> None:
        source, shape = scatter
        flat = array.reshape(-1)
        offset = 0
        for w, r in zip(items, results):
            given = w.inputs[source].shape
            if any(d == -1 and i >= len(given) for i, d in enumerate(shape)):
                raise Internal(
                    f"{label}: batch output '{name}' has shape {list(shape)}, which its source input "
                    f"'{source}' of shape {list(given)} cannot fill"
                )
            want = tuple(given[i] if d == -1 else d for i, d in enumerate(shape))
            count = prod(want)
            if offset + count > flat.size:
                raise Internal(
                    f"{label}: batch output '{name}' came back with {flat.size} elements, fewer than its "
                    f"requests' shapes from input '{source}' need"
                )
            r[name] = flat[offset : offset + count].reshape(want)
            offset += count


def batch_input_value(b: BatchInput, shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """The tensor of batch input ``b`` for requests whose source input has ``shapes``."""
    dtype = b.data_type.dtype
    kind = b.kind
    if kind == "BATCH_ITEM_SHAPE" or kind == "BATCH_ITEM_SHAPE_FLATTEN":
        # One row per batch item: the item's shape (the request's shape without the batch dim).
        width = max(len(shapes[-1]) - 1, 0) if shapes else 0
        rows = [s[1:] for s in shapes for _ in range(s[0] if s else 1)]
        value = np.array(rows, dtype=dtype).reshape(len(rows), width)
        return value if kind == "BATCH_ITEM_SHAPE" else value.reshape(-1)
    counts = np.array([prod(s) for s in shapes], dtype=np.int64)
    if kind == "BATCH_ELEMENT_COUNT":
        return counts.astype(dtype)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
        return np.cumsum(counts).astype(dtype)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
        return np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)]).astype(dtype)
    # BATCH_MAX_ELEMENT_COUNT_AS_SHAPE: Triton leaves the values unset; zeros here.
    return np.zeros(int(counts.max(initial=0)), dtype=dtype)
