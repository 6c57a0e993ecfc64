"""Framework models built on the fly, and ONE server for every framework test.

Test modules load this file as a pytest plugin (``pytest_plugins = ["tests.framework_models"]``),
so the session-scoped ``framework_server`` fixture exists once however many modules use it:
importing tensorflow alone costs seconds. Models of a framework that is not installed are left
out, and their tests skip with the reason.

PYTEST_DONT_REWRITE: test modules import this file before pytest loads it as a plugin.
"""

from __future__ import annotations

import importlib.util
import shutil
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, save

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_TF = importlib.util.find_spec("tensorflow") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (pip install 'inferd[torch]')")
needs_tf = pytest.mark.skipif(not HAVE_TF, reason="tensorflow is not installed (pip install 'inferd[tensorflow]')")
# torch 2.13 deprecates torch.jit.*; the builders and the backend still use TorchScript on purpose.
quiet_torchscript = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.:DeprecationWarning")

FEATURES, CLASSES = 16, 8
# Long enough that concurrent requests surely meet in one batch, short enough to stay fast.
BATCH_DELAY_US = 20000


def config(name: str, platform: str, body: str = "") -> str:
    key = "backend" if platform == "python" else "platform"
    return f'name: "{name}"\n{key}: "{platform}"\n{textwrap.dedent(body)}'


def put(repo: Path, name: str, config_text: str | None, files: dict[str, Path | str | bytes]) -> Path:
    """A model folder: config.pbtxt and version-1 files (copied paths, text or bytes)."""
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if config_text is not None:
        (folder / "config.pbtxt").write_text(config_text)
    for filename, content in files.items():
        target = folder / "1" / filename
        if isinstance(content, Path):
            (shutil.copytree if content.is_dir() else shutil.copy)(content, target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content))
    return folder


# --- TorchScript ---------------------------------------------------------------------------
def _torch_modules() -> dict[str, Any]:
    import torch

    class TwoArgs(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, a * b

    class DictIO(torch.nn.Module):
        def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"SCALED": inputs["X"] * inputs["FACTOR"]}

    class Upper(torch.nn.Module):
        def forward(self, text: list[str]) -> list[str]:
            return [t.upper() for t in text]

    return {
        "mlp": bundled.torch_mlp(features=FEATURES, hidden=32, classes=CLASSES),
        "two_args": torch.jit.script(TwoArgs()),
        "dict_io": torch.jit.script(DictIO()),
        "upper": torch.jit.script(Upper()),
    }


def build_torch(repo: Path) -> None:
    mods = _torch_modules()
    files = {}
    for key, module in mods.items():
        files[key] = repo / ".build" / f"{key}.pt"
        bundled.save_torchscript(module, files[key])
    mlp_io = f"""
        input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]
        output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]
        """
    put(
        repo,
        "torch_mlp",
        config(
            "torch_mlp",
            "pytorch_libtorch",
            f"""
        max_batch_size: 16
        {mlp_io}
        dynamic_batching {{ max_queue_delay_microseconds: {BATCH_DELAY_US} }}
        """,
        ),
        {"model.pt": files["mlp"]},
    )
    put(
        repo,
        "torch_mlp_direct",
        config(
            "torch_mlp_direct",
            "pytorch_libtorch",
            f"""
        max_batch_size: 16
        {mlp_io}
        parameters {{ key: "INTRA_OP_THREAD_COUNT" value {{ string_value: "1" }} }}
        """,
        ),
        {"model.pt": files["mlp"]},
    )
    # Inputs by forward's argument names; outputs by config order; no batch dimension.
    put(
        repo,
        "torch_two_args",
        config(
            "torch_two_args",
            "pytorch_libtorch",
            """
        input [ { name: "b" data_type: TYPE_INT64 dims: [ 4 ] }, { name: "a" data_type: TYPE_INT64 dims: [ 4 ] } ]
        output [ { name: "SUM" data_type: TYPE_INT64 dims: [ 4 ] }, { name: "PRODUCT" data_type: TYPE_INT64 dims: [ 4 ] } ]
        """,
        ),
        {"model.pt": files["two_args"]},
    )
    put(
        repo,
        "torch_dict",
        config(
            "torch_dict",
            "pytorch_libtorch",
            """
        max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "FACTOR" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "SCALED" data_type: TYPE_FP32 dims: [ 3 ] } ]
        """,
        ),
        {"model.pt": files["dict_io"]},
    )
    put(
        repo,
        "torch_strings",
        config(
            "torch_strings",
            "pytorch_libtorch",
            """
        max_batch_size: 4
        input [ { name: "INPUT__0" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ 1 ] } ]
        """,
        ),
        {"model.pt": files["upper"]},
    )
    # Declares FP64 where the model returns FP32: every execution must fail with the reason.
    put(
        repo,
        "torch_wrong_dtype",
        config(
            "torch_wrong_dtype",
            "pytorch_libtorch",
            f"""
        max_batch_size: 16
        input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]
        output [ {{ name: "OUTPUT__0" data_type: TYPE_FP64 dims: [ {CLASSES} ] }} ]
        """,
        ),
        {"model.pt": files["mlp"]},
    )
    put(repo, "torch_no_config", None, {"model.pt": files["mlp"]})
    put(
        repo,
        "torch_gpu",
        config(
            "torch_gpu",
            "pytorch_libtorch",
            f"""
        max_batch_size: 16
        {mlp_io}
        instance_group [ {{ kind: KIND_GPU gpus: [ 0 ] }} ]
        """,
        ),
        {"model.pt": files["mlp"]},
    )


# --- TensorFlow SavedModel -----------------------------------------------------------------
def tf_module() -> Any:
    """The MLP (signature ``serving_default``) plus an ``upper`` signature over strings."""
    import tensorflow as tf

    module = bundled.tf_mlp(features=FEATURES, hidden=32, classes=CLASSES)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.string, name="TEXT")])
    def upper(TEXT: Any) -> dict[str, Any]:  # noqa: N803 (the tensor's name)
        return {"UPPER": tf.strings.upper(TEXT)}

    module.upper = upper
    return module


def build_tf(repo: Path) -> None:
    module = tf_module()
    saved = repo / ".build" / "mlp.savedmodel"
    bundled.save_savedmodel(module, saved, {"serving_default": module.serve, "upper": module.upper})
    files = {"model.savedmodel": saved}
    put(repo, "tf_mlp", None, files)  # everything auto-completes
    put(
        repo,
        "tf_mlp_batched",
        config(
            "tf_mlp_batched",
            "tensorflow_savedmodel",
            f"""
        max_batch_size: 16
        dynamic_batching {{ max_queue_delay_microseconds: {BATCH_DELAY_US} }}
        """,
        ),
        files,
    )
    put(repo, "tf_mlp_direct", config("tf_mlp_direct", "tensorflow_savedmodel", "max_batch_size: 16\n"), files)
    put(
        repo,
        "tf_upper",
        config(
            "tf_upper",
            "tensorflow_savedmodel",
            """
        max_batch_size: 4
        parameters { key: "signature_def" value { string_value: "upper" } }
        """,
        ),
        files,
    )
    put(
        repo,
        "tf_bad_signature",
        config(
            "tf_bad_signature",
            "tensorflow_savedmodel",
            """
        parameters { key: "signature_def" value { string_value: "nope" } }
        """,
        ),
        files,
    )
    put(
        repo,
        "tf_wrong_input",
        config(
            "tf_wrong_input",
            "tensorflow_savedmodel",
            f"""
        max_batch_size: 4
        input [ {{ name: "IMAGE" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]
        """,
        ),
        files,
    )
    put(
        repo,
        "tf_wrong_dims",
        config(
            "tf_wrong_dims",
            "tensorflow_savedmodel",
            f"""
        max_batch_size: 4
        input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {FEATURES + 1} ] }} ]
        """,
        ),
        files,
    )


# --- Python models -------------------------------------------------------------------------
PY_ADD_SUB = """\
    import json

    import numpy as np

    import inferd.backends.python_api as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            out = pb_utils.get_output_config_by_name(config, "OUTPUT0")
            self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

        def execute(self, requests):
            responses = []
            for request in requests:
                a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                b = request.get_input_tensor_by_name("INPUT1").as_numpy()
                if np.isnan(a).any():
                    error = pb_utils.TritonError("INPUT0 has a NaN", pb_utils.TritonError.INVALID_ARG)
                    responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                    continue
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype)),
                    pb_utils.Tensor("OUTPUT1", a - b),
                ]))
            return responses
    """

PY_AUTO = """\
    import json

    import numpy as np

    import inferd.backends.python_api as pb_utils


    class TritonPythonModel:
        @staticmethod
        def auto_complete_config(auto_complete_model_config):
            auto_complete_model_config.add_input({"name": "INPUT", "data_type": "TYPE_FP32", "dims": [-1]})
            auto_complete_model_config.add_output({"name": "ECHO", "data_type": "TYPE_FP32", "dims": [-1]})
            auto_complete_model_config.add_output({"name": "ARGS", "data_type": "TYPE_STRING", "dims": [1]})
            auto_complete_model_config.set_max_batch_size(4)
            auto_complete_model_config.set_dynamic_batching()
            return auto_complete_model_config

        def initialize(self, args):
            self.args = {k: v for k, v in args.items() if k != "model_config"}
            self.args["max_batch_size"] = json.loads(args["model_config"])["max_batch_size"]

        def execute(self, requests):
            responses = []
            for request in requests:
                x = request.get_input_tensor_by_name("INPUT").as_numpy()
                args = np.array([[json.dumps(self.args).encode()]] * len(x), dtype=object)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("ECHO", x), pb_utils.Tensor("ARGS", args)]))
            return responses
    """

PY_BLS = """\
    import inferd.backends.python_api as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                call = pb_utils.InferenceRequest(
                    model_name="add_sub",
                    inputs=[request.get_input_tensor_by_name("INPUT0"), request.get_input_tensor_by_name("INPUT1")],
                    requested_output_names=["OUTPUT0"],
                )
                result = call.exec()
                if result.has_error():
                    responses.append(pb_utils.InferenceResponse(error=result.error()))
                else:
                    out = pb_utils.get_output_tensor_by_name(result, "OUTPUT0").as_numpy()
                    responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", out)]))
            return responses
    """

PY_BLS_ASYNC = """\
    import asyncio

    import inferd.backends.python_api as pb_utils


    class TritonPythonModel:
        async def execute(self, requests):
            responses = []
            for request in requests:
                a = request.get_input_tensor_by_name("INPUT0").as_numpy()
                b = request.get_input_tensor_by_name("INPUT1").as_numpy()

                def call(x, y, model="add_sub"):
                    return pb_utils.InferenceRequest(
                        model_name=model,
                        inputs=[pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", y)],
                        requested_output_names=["OUTPUT1"],
                    ).async_exec()

                forward, backward, missing = await asyncio.gather(call(a, b), call(b, a), call(a, b, "no_such_model"))
                assert missing.has_error() and "no_such_model" in missing.error().message()
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("DIFF", forward.output_tensors()[0].as_numpy()),
                    pb_utils.Tensor("NEG_DIFF", backward.output_tensors()[0].as_numpy()),
                ]))
            return responses
    """

PY_BLS_MISSING = """\
    import inferd.backends.python_api as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            call = pb_utils.InferenceRequest(model_name="no_such_model", inputs=[], requested_output_names=[])
            result = call.exec()
            return [pb_utils.InferenceResponse(error=result.error()) for _ in requests]
    """

PY_ERRORS = """\
    import numpy as np

    import inferd.backends.python_api as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            mode = int(requests[0].get_input_tensor_by_name("MODE").as_numpy()[0])
            if mode == 1:
                raise ValueError("mode one is not allowed")
            if mode == 2:
                raise pb_utils.TritonError("unavailable on purpose", pb_utils.TritonError.UNAVAILABLE)
            if mode == 3:
                return [pb_utils.InferenceResponse([]) for _ in requests]  # no outputs
            if mode == 4:
                return []  # too few responses
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([mode], np.int32))]) for _ in requests]
    """

PY_INSTANCES = """\
    import numpy as np

    import inferd.backends.python_api as pb_utils

    CALLS = []  # module state: each instance imports its own copy of this file


    class TritonPythonModel:
        def initialize(self, args):
            self.instance = args["model_instance_name"]

        def execute(self, requests):
            CALLS.append(len(requests))
            name = np.array([f"{__name__}|{self.instance}".encode()], dtype=object)
            return [pb_utils.InferenceResponse([pb_utils.Tensor("WHO", name)]) for _ in requests]
    """

PY_FINALIZE = """\
    import json
    from pathlib import Path

    import numpy as np

    import inferd.backends.python_api as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            self.marker = Path(config["parameters"]["marker"]["string_value"])

        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.ones(1, np.float32))]) for _ in requests]

        def finalize(self):
            self.marker.write_text("finalized")
    """


def build_python(repo: Path) -> None:
    add_sub_io = """
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        """
    put(
        repo,
        "py_add_sub",
        config(
            "py_add_sub",
            "python",
            f"""
        max_batch_size: 8
        {add_sub_io}
        output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        dynamic_batching {{ max_queue_delay_microseconds: {BATCH_DELAY_US} }}
        """,
        ),
        {"model.py": PY_ADD_SUB},
    )
    put(repo, "py_auto", None, {"model.py": PY_AUTO})
    put(
        repo,
        "py_bls",
        config(
            "py_bls",
            "python",
            f"""
        max_batch_size: 8
        {add_sub_io}
        output [ {{ name: "SUM" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        """,
        ),
        {"model.py": PY_BLS},
    )
    put(
        repo,
        "py_bls_async",
        config(
            "py_bls_async",
            "python",
            f"""
        max_batch_size: 8
        {add_sub_io}
        output [ {{ name: "DIFF" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "NEG_DIFF" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        """,
        ),
        {"model.py": PY_BLS_ASYNC},
    )
    put(
        repo,
        "py_bls_missing",
        config(
            "py_bls_missing",
            "python",
            f"""
        max_batch_size: 8
        {add_sub_io}
        output [ {{ name: "SUM" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        """,
        ),
        {"model.py": PY_BLS_MISSING},
    )
    put(
        repo,
        "py_errors",
        config(
            "py_errors",
            "python",
            """
        input [ { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
        """,
        ),
        {"model.py": PY_ERRORS},
    )
    put(
        repo,
        "py_instances",
        config(
            "py_instances",
            "python",
            """
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "WHO" data_type: TYPE_STRING dims: [ 1 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
        """,
        ),
        {"model.py": PY_INSTANCES},
    )
    marker = repo / ".build" / "finalized.txt"
    put(
        repo,
        "py_finalize",
        config(
            "py_finalize",
            "python",
            f"""
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "marker" value {{ string_value: "{marker}" }} }}
        """,
        ),
        {"model.py": PY_FINALIZE},
    )
    put(
        repo,
        "py_import_error",
        config(
            "py_import_error",
            "python",
            """
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        """,
        ),
        {"model.py": "import numpy\n\nVALUE = 1 / 0\n"},
    )
    put(
        repo,
        "py_init_error",
        config(
            "py_init_error",
            "python",
            """
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        """,
        ),
        {
            "model.py": """\
            class TritonPythonModel:
                def initialize(self, args):
                    raise RuntimeError("no weights found")

                def execute(self, requests):
                    return []
            """
        },
    )
    # The bundled pre/post-processing example, around a copy of the bundled classifier.
    put(repo, "dense_classify", None, {"model.py": bundled.HERE / "dense_classify" / "1" / "model.py"})
    shutil.copy(bundled.HERE / "dense_classify" / "config.pbtxt", repo / "dense_classify" / "config.pbtxt")


def build_framework_repository(repo: Path) -> Path:
    (repo / ".build").mkdir(parents=True, exist_ok=True)  # hidden: not a model folder
    save(bundled.add_sub_model(), repo / "add_sub" / "1" / "model.onnx")
    (repo / "add_sub" / "config.pbtxt").write_text(bundled.ADD_SUB_CONFIG)
    save(bundled.dense_model(), repo / "dense" / "1" / "model.onnx")
    (repo / "dense" / "config.pbtxt").write_text(bundled.DENSE_CONFIG)
    build_python(repo)
    put(
        repo,
        "trt_junk",
        config(
            "trt_junk",
            "tensorrt_plan",
            """
        max_batch_size: 8
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
        """,
        ),
        {"model.plan": b"\x00not a TensorRT engine\xff" * 8},
    )
    if HAVE_TORCH:
        build_torch(repo)
    if HAVE_TF:
        build_tf(repo)
    return repo


# --- the shared server and client helpers --------------------------------------------------
@dataclass
class FrameworkServer:
    running: RunningServer
    repo: Path
    client: grpcclient.InferenceServerClient

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        return infer(self.client, model, inputs, outputs)

    def infer_concurrently(self, model: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Every request at once from 16 threads, so the dynamic batcher can merge them."""
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda r: self.infer(model, r), requests))

    def counts(self, model: str) -> tuple[int, int]:
        """(inference_count, execution_count): fewer executions than inferences means batches."""
        stats = self.running.server.core.model_statistics(model)[0]
        return stats.inference_count, stats.execution_count

    def reason(self, model: str) -> str:
        """The load error of a model that must be UNAVAILABLE."""
        entries = [e for e in self.running.server.core.repository_index() if e.name == model]
        if not entries or entries[0].state != "UNAVAILABLE":
            raise AssertionError(f"model '{model}' should be UNAVAILABLE: {entries}")
        return entries[0].reason


def infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
) -> dict[str, np.ndarray]:
    wire = []
    for name, array in inputs.items():
        t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        t.set_data_from_numpy(array)
        wire.append(t)
    requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = client.infer(model, wire, outputs=requested)
    names = outputs or [o.name for o in result.get_response().outputs]
    return {n: result.as_numpy(n) for n in names}


@pytest.fixture(scope="session")
def framework_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrameworkServer]:
    repo = build_framework_repository(tmp_path_factory.mktemp("framework_repo"))
    # Explicit control, everything loaded at start: tests may unload a model.
    running = start_server(test_settings(repo, model_control_mode="explicit", load_models=["*"]))
    client = grpcclient.InferenceServerClient(running.grpc_url)
    yield FrameworkServer(running, repo, client)
    client.close()
    running.stop()
