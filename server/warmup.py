"""``model_warmup``: sample requests a new version runs before it is marked READY.

Follows Triton's config: each sample has a ``batch_size`` (the one sample is repeated along the
batch dimension), ``count`` executions (0 means once), and per input ``zero_data``,
``random_data`` or ``input_data_file`` (raw row-major bytes of one sample, BYTES elements with
their 4-byte length prefix) read from the model's ``warmup/`` folder.

Samples run on every instance's worker directly: the version is not routed yet, so the public
name lookup would not find it, and warmup executions stay out of the statistics. They run on the
instance threads, never on the event loop, so a long warmup does not stall other traffic; a
config asking for more than MAX_WARMUP_EXECUTIONS executions in all is refused, and a warmup
still running after MAX_WARMUP_SECONDS fails the load.

A sample's inputs are checked against the model's client inputs, as a request's are. For a model
with ``sequence_batching``, each execution is a whole sequence of one request, fed as the
sequence scheduler feeds a new sequence (sequence_controls.py, sequence_config.py): START, END and
READY true, CORRID the correlation id WARMUP_SEQUENCE_ID (the string "1" for a TYPE_STRING
CORRID), every implicit state input at its initial state, and a Python model's
``correlation_id()`` and ``flags()`` to match. A sample of ``batch_size`` N runs as one execution
of N one-row requests, each so fed (all with the same correlation id), as the scheduler batches
rows of different sequences. A sample may also name a control or state input, as Triton
repositories do: its value (repeated per row like any sample input) replaces the generated one.
The state outputs are computed and thrown away, so no state outlives warmup.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..protocol import codec
from ..protocol.errors import InferdError, ModelLoadError
from ..protocol.model_spec import SequenceBatching
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.types import RequestInfo
from .config import Signature
from .repository import Repository
from .reshape import Reshaper, needs_reshape
from .scheduling.sequence_controls import FLAG_END, FLAG_START, Controls, CorrId
from .scheduling.work import Work
from .scheduling.worker import InstanceWorker
from .sequence_config import initial_states
from .validation import validate

WARMUP_FOLDER = "warmup"
# A typo in dims must not allocate the machine away: warmup tensors are small by nature.
MAX_WARMUP_BYTES = 256 * 1024 * 1024
MAX_WARMUP_EXECUTIONS = 10_000  # over every sample's count and every instance
MAX_WARMUP_SECONDS = 600.0
WARMUP_SEQUENCE_ID = 1


@dataclass(frozen=True)
class Sample:
    name: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    batch_size: int
    count: int
    info: RequestInfo | None = None  # a sequence model's correlation id and flags

    def works(self) -> list[Work]:
        """One execution's requests: the sample as one request, or for a sequence model one
        request per row, as the sequence scheduler batches rows of different sequences."""
        now = time.monotonic_ns()
        if self.info is None or self.batch_size == 1:
            return [Work(self.inputs, self.outputs, self.batch_size, now, None, info=self.info)]
        return [
            Work({n: a[i : i + 1] for n, a in self.inputs.items()}, self.outputs, 1, now, None, info=self.info)
            for i in range(self.batch_size)
        ]


@dataclass(frozen=True)
class _SequenceFeed:
    """What the sequence scheduler adds to the one request of a new sequence."""

    inputs: dict[str, np.ndarray]  # control and state inputs, one row
    info: RequestInfo
    state_outputs: list[str]


def _sequence_feed(spec: SequenceBatching, batched: bool, model_dir: Path, label: str) -> _SequenceFeed:
    controls = Controls(spec, batched)
    text = controls.corrid is not None and controls.corrid[1] is codec.BYTES
    corr: CorrId = str(WARMUP_SEQUENCE_ID) if text else WARMUP_SEQUENCE_ID
    flags = FLAG_START | FLAG_END
    inputs = controls.inputs(flags, corr) | initial_states(spec, batched, model_dir, label)
    outputs = [s.output_name for s in spec.state]
    return _SequenceFeed(inputs, RequestInfo(correlation_id=corr, flags=flags), outputs)


def build_samples(
    repo: Repository,
    model_dir: Path,
    config: mc.ModelConfig,
    sig: Signature,
    label: str,
    instances: int = 1,
    sequence: SequenceBatching | None = None,
) -> list[Sample]:
    """Turn ``model_warmup`` into ready arrays; blocking (reads files), run it off the loop.
    ``sequence`` is the model's ``sequence_batching``, if any."""
    samples = []
    reshaper = Reshaper(label, sig) if needs_reshape(sig) else None
    batched = sig.max_batch_size > 0
    fed = _sequence_feed(sequence, batched, model_dir, label) if sequence is not None else None
    for i, w in enumerate(config.model_warmup):
        where = f"{label}: model_warmup[{i}]" + (f" '{w.name}'" if w.name else "")
        batch = w.batch_size
        if batch < 1 or (sig.max_batch_size == 0 and batch != 1) or batch > max(sig.max_batch_size, 1):
            raise ModelLoadError(
                f"{where}: batch_size {batch} must be 1 for models without batching, "
                f"else 1..max_batch_size ({sig.max_batch_size})"
            )
        if w.count < 0:
            raise ModelLoadError(f"{where}: count must be >= 0")
        inputs = {}
        for name, spec in w.inputs.items():
            one = _sample_input(repo, model_dir, f"{where} input '{name}'", spec)
            inputs[name] = np.repeat(one[np.newaxis], batch, axis=0) if batched else one
        given = {n: inputs.pop(n) for n in list(inputs) if fed is not None and n in fed.inputs}
        try:
            checked = validate(where, sig, inputs, None)
        except InferdError as e:
            raise ModelLoadError(e.message) from None
        model_inputs = reshaper.to_model(checked.inputs) if reshaper is not None else checked.inputs
        outputs, info = checked.outputs, None
        if fed is not None:
            for name, array in given.items():
                _check_given(f"{where} input '{name}'", array, fed.inputs[name])
            rows = {n: np.repeat(a, batch, axis=0) if batched else a for n, a in fed.inputs.items()}
            model_inputs = {**model_inputs, **rows, **given}
            outputs = outputs + [n for n in fed.state_outputs if n not in outputs]
            info = fed.info
        samples.append(Sample(w.name, model_inputs, outputs, batch, max(w.count, 1), info))
    executions = sum(s.count for s in samples) * instances
    if executions > MAX_WARMUP_EXECUTIONS:
        raise ModelLoadError(
            f"{label}: model_warmup asks for {executions} executions over {instances} instance(s); "
            f"at most {MAX_WARMUP_EXECUTIONS} are allowed"
        )
    return samples


def _check_given(where: str, array: np.ndarray, generated: np.ndarray) -> None:
    got, want = codec.of_array(array), codec.of_array(generated)
    if got is not want:
        raise ModelLoadError(
            f"{where}: data_type {got.config_name} but the model's sequence input is {want.config_name}"
        )


def _sample_input(repo: Repository, model_dir: Path, where: str, spec: mc.ModelWarmup.Input) -> np.ndarray:
    try:
        dt = codec.from_config_type(mc.DataType.Name(spec.data_type))
    except InferdError:
        raise ModelLoadError(f"{where}: unsupported data_type {mc.DataType.Name(spec.data_type)}") from None
    dims = list(spec.dims)
    if any(d < 1 for d in dims):
        raise ModelLoadError(f"{where}: dims {dims} must all be >= 1 (warmup shapes are concrete)")
    count = math.prod(dims)
    if count * max(dt.itemsize, 1) > MAX_WARMUP_BYTES:
        raise ModelLoadError(f"{where}: dims {dims} exceed the {MAX_WARMUP_BYTES >> 20} MiB warmup limit")
    source = spec.WhichOneof("input_data_type")
    if source == "input_data_file":
        return _from_file(repo, model_dir, where, spec.input_data_file, dt, dims)
    if dt is codec.BYTES:
        out = np.empty(count, dtype=object)
        out[:] = [b""] * count  # Triton warms string inputs with empty elements
        return out.reshape(dims)
    if source == "random_data":
        rng = np.random.default_rng(0)
        if dt.dtype.kind == "b":
            return rng.integers(0, 2, size=dims).astype(dt.dtype)
        if dt.dtype.kind in "iu":
            return rng.integers(0, 64, size=dims).astype(dt.dtype)
        return rng.random(size=dims).astype(dt.dtype)
    if source == "zero_data":
        return np.zeros(dims, dtype=dt.dtype)
    raise ModelLoadError(f"{where}: set one of zero_data, random_data or input_data_file")


def _from_file(
    repo: Repository, model_dir: Path, where: str, relative: str, dt: codec.DataType, dims: list[int]
) -> np.ndarray:
    path = repo.file_in(model_dir / WARMUP_FOLDER, relative, f"{where}: input_data_file")
    if not path.is_file():
        raise ModelLoadError(f"{where}: input_data_file {path} not found")
    size = path.stat().st_size
    if size > MAX_WARMUP_BYTES:
        raise ModelLoadError(f"{where}: input_data_file {path} is larger than {MAX_WARMUP_BYTES >> 20} MiB")
    try:
        return codec.from_raw(path.read_bytes(), dt, dims, f"{where}: input_data_file {path}").copy()
    except InferdError as e:
        raise ModelLoadError(e.message) from None


async def run_samples(
    workers: Sequence[InstanceWorker], samples: Sequence[Sample], label: str, limit_s: float = MAX_WARMUP_SECONDS
) -> float:
    """Run every sample ``count`` times on every instance, on its thread; returns the seconds
    it took. Fails once ``limit_s`` has passed."""
    started = time.monotonic()
    for worker in workers:
        for s in samples:
            for _ in range(s.count):
                if time.monotonic() - started > limit_s:
                    raise ModelLoadError(f"{label}: warmup did not finish within {limit_s:g} s")
                try:
                    results, _ = await worker.run_on_thread(s.works())
                except InferdError as e:
                    raise ModelLoadError(f"{label}: warmup sample '{s.name}' failed: {e.message}") from None
                for result in results:
                    if isinstance(result, InferdError):
                        raise ModelLoadError(f"{label}: warmup sample '{s.name}' failed: {result.message}")
    return time.monotonic() - started
