"""Model repositories for the generate and OpenAI tests: the bundled charlm (decoupled), the same
model.py not decoupled, add_sub, and small Python models that fail on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "model_repository"

# A decoupled model that sends two pieces, then an error, then the final flag alone.
FAILS_MIDWAY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for piece in (b"a", b"b"):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", np.array([piece], dtype=object))]))
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("the model broke")))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
FAILS_MIDWAY_CONFIG = """\
name: "fails_midway"
backend: "python"
model_transaction_policy { decoupled: true }
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]
parameters { key: "openai_contract" value { string_value: "text" } }
"""
# An ordinary model with an input named like the generate schema's nested object.
NESTED_CLASH = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "parameters").as_numpy())]) for r in requests]
"""
NESTED_CLASH_CONFIG = """\
name: "nested_clash"
backend: "python"
input [ { name: "parameters" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


def build_repository(root: Path) -> Path:
    """charlm (decoupled) and charlm_whole (the same model.py, not decoupled), add_sub, and the
    models above."""
    shutil.copytree(BUNDLED / "charlm", root / "charlm")
    shutil.copytree(BUNDLED / "add_sub", root / "add_sub")
    shutil.copytree(BUNDLED / "charlm", root / "charlm_whole")
    config = (root / "charlm_whole" / "config.pbtxt").read_text()
    config = config.replace('name: "charlm"', 'name: "charlm_whole"').replace(
        "model_transaction_policy { decoupled: true }\n", ""
    )
    (root / "charlm_whole" / "config.pbtxt").write_text(config)
    models = (
        ("fails_midway", FAILS_MIDWAY, FAILS_MIDWAY_CONFIG),
        ("nested_clash", NESTED_CLASH, NESTED_CLASH_CONFIG),
        ("broken_contract", NESTED_CLASH, BROKEN_CONTRACT_CONFIG),
    )
    for name, code, cfg in models:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        (root / name / "config.pbtxt").write_text(cfg)
    return root


# Declares the contract without a text_output.
BROKEN_CONTRACT_CONFIG = """\
name: "broken_contract"
backend: "python"
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
parameters { key: "openai_contract" value { string_value: "text" } }
"""
