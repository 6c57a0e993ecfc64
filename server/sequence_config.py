"""``sequence_batching`` at load: Triton's defaults, Triton's checks (in Triton's words), and the
initial state tensors read once from the model folder.

Control inputs and implicit state inputs are fed by the server, never by clients: a config that
also lists one of them under ``input`` is refused, and auto-complete leaves them out
(backends/common.py). Implicit state lives in the server between the steps of a sequence, so
the GPU-oriented state options (a buffer shared by the state's input and output, growable GPU
memory) and ``iterative_sequence`` (a TensorRT-LLM scheduling mode) are refused by the config
table instead (config_fields.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..protocol import codec
from ..protocol.errors import ModelLoadError
from ..protocol.model_spec import SequenceBatching, SequenceState
from ..protocol.pb import model_config_pb2 as mc

IDLE_DEFAULT_MICROSECONDS = 1_000_000  # Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS
INITIAL_STATE_FOLDER = "initial_state"
START, END, READY, CORRID = (
    "CONTROL_SEQUENCE_START",
    "CONTROL_SEQUENCE_END",
    "CONTROL_SEQUENCE_READY",
    "CONTROL_SEQUENCE_CORRID",
)
BOOLEAN_KINDS = (START, END, READY)
# Backends that take inputs the server adds (control and state inputs) by name.
FED_BACKENDS = ("onnxruntime", "python")
CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")


def complete(config: mc.ModelConfig) -> None:
    """Triton's normalisation, so the ModelConfig RPC shows what the scheduler does: the idle
    timeout's default, and the oldest strategy's preferred batch size (max_batch_size)."""
    if not config.HasField("sequence_batching"):
        return
    section = config.sequence_batching
    if section.max_sequence_idle_microseconds == 0:
        section.max_sequence_idle_microseconds = IDLE_DEFAULT_MICROSECONDS
    if section.HasField("oldest") and not section.oldest.preferred_batch_size and config.max_batch_size > 0:
        section.oldest.preferred_batch_size.append(config.max_batch_size)


def check(config: mc.ModelConfig, source: str, backend: str) -> None:
    """What Triton refuses in ``sequence_batching`` (its wording, after ``source``), control or
    state inputs that the config also declares as client inputs, and control or state inputs on
    a backend that does not take inputs beyond its config's (those inferd has not tested)."""
    if not config.HasField("sequence_batching"):
        return
    section = config.sequence_batching
    name = config.name
    if (section.control_input or section.state) and backend not in FED_BACKENDS:
        raise ModelLoadError(
            f"{source}: sequence batching control inputs and implicit state are supported by the "
            f"{' and '.join(FED_BACKENDS)} backends, not by '{backend}'"
        )
    seen: set[str] = set()
    kinds: set[int] = set()
    for control_input in section.control_input:
        if not control_input.name:
            raise ModelLoadError(f"{source}: sequence batching control tensor must have a name for {name}")
        if control_input.name in seen or len(control_input.control) > 1:
            raise ModelLoadError(
                f"{source}: sequence batching control tensor '{control_input.name}' is specified for "
                f"multiple control kinds for {name}"
            )
        seen.add(control_input.name)
        for c in control_input.control:
            kind = mc.ModelSequenceBatching.Control.Kind.Name(c.kind)
            if c.kind in kinds:
                raise ModelLoadError(f"{source}: sequence batching specifies multiple {kind} tensors for {name}")
            kinds.add(c.kind)
            _check_control(c, kind, name, source)
    if section.HasField("oldest"):
        for size in section.oldest.preferred_batch_size:
            if size <= 0:
                raise ModelLoadError(f"{source}: sequence batching preferred batch size must be positive for {name}")
            if size > config.max_batch_size:
                raise ModelLoadError(
                    f"{source}: sequence batching preferred batch size must be <= max batch size for {name}"
                )
    if section.HasField("direct") and not 0.0 <= section.direct.minimum_slot_utilization <= 1.0:
        raise ModelLoadError(
            f"{source}: sequence batching minimum slot utilization must be in range (0.0, 1.0] for {name}"
        )
    if section.state and config.model_transaction_policy.decoupled:
        raise ModelLoadError(
            f"{source}: implicit state ('sequence_batching.state') is not supported with a decoupled model: "
            "its state output would have to come back in one response"
        )
    states: set[str] = set()
    for state in section.state:
        _check_state(config, state, states, source)
    declared = {t.name for t in config.input}
    for fed in sorted(seen | states):
        if fed in declared:
            raise ModelLoadError(
                f"{source}: input '{fed}' is a sequence batching {'control' if fed in seen else 'state'} input, "
                "which the server feeds the model; it must not be listed under 'input' (clients never send it)"
            )


def _check_control(c: mc.ModelSequenceBatching.Control, kind: str, name: str, source: str) -> None:
    pairs = {
        "int32_false_true": len(c.int32_false_true),
        "fp32_false_true": len(c.fp32_false_true),
        "bool_false_true": len(c.bool_false_true),
    }
    given = [k for k, n in pairs.items() if n]
    if kind == CORRID:
        if given:
            raise ModelLoadError(
                f"{source}: sequence batching must not specify either 'int32_false_true', 'fp32_false_true' "
                f"or 'bool_false_true' for {kind} for {name}"
            )
        if mc.DataType.Name(c.data_type) not in CORRID_TYPES:
            raise ModelLoadError(
                f"{source}: unexpected data type for control {kind} for {name}. Allowed data types are "
                "TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
            )
        return
    if not given:
        raise ModelLoadError(
            f"{source}: sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
            f"'bool_false_true' for {kind} for {name}"
        )
    if len(given) > 1:
        raise ModelLoadError(
            f"{source}: sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' "
            f"and 'bool_false_true' for {kind} for {name}"
        )
    if pairs[given[0]] != 2:
        raise ModelLoadError(
            f"{source}: sequence batching control '{given[0]}' must have exactly 2 entries for {kind} for {name}"
        )


def _check_state(config: mc.ModelConfig, state: mc.ModelSequenceBatching.State, seen: set[str], source: str) -> None:
    label = state.input_name or "?"
    if not state.input_name or not state.output_name:
        raise ModelLoadError(f"{source}: state '{label}' must set both 'input_name' and 'output_name'")
    if state.input_name in seen:
        raise ModelLoadError(f"{source}: State input name '{state.input_name}' specified more than once.")
    seen.add(state.input_name)
    if mc.DataType.Name(state.data_type) not in codec.BY_CONFIG_NAME:
        raise ModelLoadError(f"{source}: state '{state.input_name}' has no supported 'data_type'")
    for d in state.dims:
        if d < -1 or d == 0:
            raise ModelLoadError(f"{source}: state '{state.input_name}': dims must be > 0 or -1 (variable)")
    if len(state.initial_state) > 1:
        raise ModelLoadError(
            f"{source}: initial_state field for state input '{state.input_name}' must contain exactly one or "
            f"zero element. Found '{len(state.initial_state)}' elements."
        )
    for initial in state.initial_state:
        if initial.data_type != state.data_type:
            raise ModelLoadError(
                f"{source}: The data type used for 'initial_state' field of state '{state.input_name}' does not "
                "match the state data type."
            )
        if not initial.name:
            raise ModelLoadError(
                f"{source}: Field 'name' must be set when using initial_state for state input '{state.input_name}'."
            )
        if len(initial.dims) != len(state.dims):
            raise ModelLoadError(
                f"{source}: Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions "
                f"for state input '{state.input_name}'. {len(initial.dims)} != {len(state.dims)}"
            )
        for i, s in zip(initial.dims, state.dims):
            if i == -1:
                raise ModelLoadError(
                    f"{source}: 'initial_state' field for state input name '{state.input_name}' contains "
                    "variable dimensions."
                )
            if i <= 0:
                raise ModelLoadError(f"{source}: 'initial_state' dims of '{state.input_name}' must be > 0")
            if s != -1 and i != s:
                raise ModelLoadError(
                    f"{source}: 'initial_state' dim for input name '{state.input_name}' doesn't match 'state' dim "
                    f"description. {i} != {s}"
                )
        if initial.WhichOneof("state_data") is None:
            raise ModelLoadError(
                f"{source}: initial_state setting expects state'{state.input_name}' to have state_data set"
            )


# --- implicit state at a sequence's start --------------------------------------------------
def initial_states(spec: SequenceBatching, batched: bool, model_dir: Path | None, label: str) -> dict[str, np.ndarray]:
    """Each state input's tensor at a sequence's start (read-only): its ``initial_state`` (zeros
    or the raw bytes of ``initial_state/<data_file>``), else zeros with variable dims as 1, as
    Triton does. A leading 1 is the batch dimension of a batching model."""
    out: dict[str, np.ndarray] = {}
    for state in spec.state:
        out[state.input_name] = initial_state(state, batched, model_dir, label)
    return out


def initial_state(state: SequenceState, batched: bool, model_dir: Path | None, label: str) -> np.ndarray:
    assert state.data_type is not None  # check() refused the rest
    dt = state.data_type
    lead = (1,) if batched else ()
    if not state.initial_state:
        shape = lead + tuple(1 if d == -1 else d for d in state.dims)
        return _readonly(_zeros(dt, shape))
    initial = state.initial_state[0]
    shape = lead + initial.dims
    if initial.zero_data:
        return _readonly(_zeros(dt, shape))
    if model_dir is None:
        raise ModelLoadError(f"{label}: initial_state '{initial.name}' reads a file, but no model folder is known")
    folder = (model_dir / INITIAL_STATE_FOLDER).resolve()
    path = (folder / initial.data_file).resolve()
    if folder not in path.parents:
        raise ModelLoadError(f"{label}: initial_state data_file '{initial.data_file}' is outside {folder}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{label}: initial_state '{initial.name}': cannot read {path}: {e}") from None
    count = int(np.prod(shape, dtype=np.int64))
    if dt is codec.BYTES:
        array = codec.from_raw(raw, dt, shape, f"initial_state '{initial.name}'")
        return _readonly(array)
    need = count * dt.itemsize
    if len(raw) < need:
        raise ModelLoadError(
            f"{label}: initial_state setting expects {need} bytes, but the data provided from "
            f"{initial.data_file} only has {len(raw)} bytes."
        )
    return _readonly(np.frombuffer(raw[:need], dtype=dt.wire).reshape(shape))


def _zeros(dt: codec.DataType, shape: tuple[int, ...]) -> np.ndarray:
    if dt is codec.BYTES:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=dt.dtype)


def _readonly(*arrays: np.ndarray) -> np.ndarray:
    for a in arrays:
        a.flags.writeable = False
    return arrays[0]
