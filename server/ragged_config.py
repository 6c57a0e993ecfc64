"""Load-time checks of ragged batching: ``allow_ragged_batch``, ``batch_input`` and ``batch_output``.

Triton's own checks (model_config_utils.cc ValidateBatchIO, worded as Triton words them) come
first: one source input per kind, a known source, a batch input of TYPE_INT32 or TYPE_FP32, a
batch output's targets among the outputs and each named once. Then what would otherwise fail
only at the first execution, or silently: a batch input with no target name (it would feed
nothing), a target name that is already a client input or another batch input's target, and
a source or ragged input that may be left out (ONNX Runtime's backend refuses an optional
ragged input; a missing source has no shape to count). What happens at run time is in
scheduling/ragged.py.
"""

from __future__ import annotations

from ..protocol.errors import ModelLoadError
from ..protocol.pb import model_config_pb2 as mc

_BATCH_INPUT_TYPES = (mc.TYPE_INT32, mc.TYPE_FP32)


def check_batch_io(config: mc.ModelConfig, source: str) -> None:
    """Refuse a config whose ragged inputs, batch inputs or batch outputs Triton would refuse,
    or that could not be fed; ``source`` names the config in the message."""
    if not config.batch_input and not config.batch_output and not any(t.allow_ragged_batch for t in config.input):
        return
    inputs = {t.name: t for t in config.input}
    outputs = {t.name for t in config.output}
    for t in config.input:
        if t.allow_ragged_batch and t.optional:
            raise ModelLoadError(
                f"{source}: input '{t.name}': a ragged input (allow_ragged_batch) cannot be optional: "
                "the batch's requests are concatenated into it"
            )
    targets: set[str] = set()
    for b in config.batch_input:
        kind = mc.BatchInput.Kind.Name(b.kind)
        where = f"{source}: batch_input {list(b.target_name)}"
        if len(b.source_input) != 1:
            raise ModelLoadError(
                f"{where}: batch input kind '{kind}' expects 1 source input, got {len(b.source_input)}"
            )
        if b.data_type not in _BATCH_INPUT_TYPES:
            raise ModelLoadError(f"{where}: batch input data type must be TYPE_INT32 or TYPE_FP32")
        _check_source(where, b.source_input[0], inputs)
        if not b.target_name:
            raise ModelLoadError(f"{where}: batch input kind '{kind}' names no 'target_name': it would feed nothing")
        for name in b.target_name:
            if name in inputs:
                raise ModelLoadError(
                    f"{where}: target name '{name}' is also a model input; a batch input is computed by the "
                    "server and never sent by clients, so it must not be declared in 'input'"
                )
            if name in targets:
                raise ModelLoadError(f"{where}: target name '{name}' is the target of another batch input")
            targets.add(name)
    scattered: set[str] = set()
    for o in config.batch_output:
        kind = mc.BatchOutput.Kind.Name(o.kind)
        where = f"{source}: batch_output {list(o.target_name)}"
        if len(o.source_input) != 1:
            raise ModelLoadError(
                f"{where}: batch output kind '{kind}' expects 1 source input, got {len(o.source_input)}"
            )
        _check_source(where, o.source_input[0], inputs)
        if not o.target_name:
            raise ModelLoadError(f"{where}: batch output kind '{kind}' names no 'target_name'")
        for name in o.target_name:
            if name not in outputs:
                raise ModelLoadError(f"{where}: unknown target output name '{name}'")
            if name in scattered:
                raise ModelLoadError(f"{where}: target output name '{name}' can only be specified once")
            scattered.add(name)


def _check_source(where: str, name: str, inputs: dict[str, mc.ModelInput]) -> None:
    found = inputs.get(name)
    if found is None:
        raise ModelLoadError(f"{where}: unknown source input name '{name}'")
    if found.optional:
        raise ModelLoadError(
            f"{where}: source input '{name}' is optional; the batch's requests must all carry it to be counted"
        )
