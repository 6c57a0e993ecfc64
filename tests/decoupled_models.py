"""Python models for the decoupled-model and response-parameter tests, written as for Triton
(``import triton_python_backend_utils as pb_utils``), and the repository they form."""

from __future__ import annotations

from pathlib import Path

from .models import write_python

# Triton's repeat example, in its flow: IN's elements come back one response each, the i-th
# after DELAY[i] ms, from a thread the model starts; execute returns after WAIT ms; the final
# flag is sent alone. A response's parameters carry its index.
REPEAT = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("repeat must be decoupled")

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
            wait = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()
            sender = request.get_response_sender()
            threading.Thread(target=self.respond, args=(sender, values, delays), daemon=True).start()
            time.sleep(wait[0] / 1000)
        return None

    def respond(self, sender, values, delays):
        for i, (value, delay) in enumerate(zip(values, delays)):
            time.sleep(delay / 1000)
            out = [
                pb_utils.Tensor("OUT", np.array([value], np.int32)),
                pb_utils.Tensor("IDX", np.array([i], np.uint32)),
            ]
            sender.send(pb_utils.InferenceResponse(out, parameters={"index": i, "last": i == len(values) - 1}))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""
REPEAT_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] }},
  {{ name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
output [
  {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
"""

# Triton's square example's flow, from execute itself: N responses for input N, the last one
# with the final flag on it; N = 0 sends the flag alone. N < 0: an error response between two
# good ones, then the final flag; N = 1000: execute raises after one response.
SQUARE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            sender = request.get_response_sender()
            if n == 1000:
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))]))
                raise pb_utils.TritonModelException("execute gave up")
            if n < 0:
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))]))
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("step 2 failed")))
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([3], np.int32))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            if n == 0:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            for i in range(n):
                response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([n], np.int32))])
                last = i == n - 1
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0)
        return None
"""
SQUARE_CONFIG = """name: "square"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
# Warmup runs a decoupled model too: nobody reads what it sends.
model_warmup [ { name: "three" batch_size: 1 inputs { key: "IN" value { data_type: TYPE_INT32 dims: [ 1 ] input_data_file: "three" } } } ]
"""

# Streams until the client goes away (async execute, run in the background as in Triton), then
# counts the cancellation it saw in a custom metric and sends the final flag. SIZE elements a
# response: big ones fill the transport so that the server's bound is what gives.
ENDLESS = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        family = pb_utils.MetricFamily(
            name="endless_cancellations_seen", description="cancelled requests seen", kind=pb_utils.MetricFamily.COUNTER
        )
        self.seen = family.Metric(labels={"model": "endless"})
        errors = pb_utils.MetricFamily(
            name="endless_send_errors", description="sends that raised", kind=pb_utils.MetricFamily.COUNTER
        )
        self.errors = errors.Metric(labels={"model": "endless"})

    async def execute(self, requests):
        await asyncio.gather(*(self.stream(r) for r in requests))

    async def stream(self, request):
        size = int(pb_utils.get_input_tensor_by_name(request, "SIZE").as_numpy()[0])
        sender = request.get_response_sender()
        data = np.zeros(size, np.uint8)
        while not request.is_cancelled():
            try:
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("DATA", data)]))
            except pb_utils.TritonError:
                self.errors.increment(1)
            await asyncio.sleep(0.001 if size < 1000 else 0)
        self.seen.increment(1)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""
ENDLESS_CONFIG = """name: "endless"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "SIZE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "DATA" data_type: TYPE_UINT8 dims: [ -1 ] } ]
"""

# An ordinary model that sets response parameters and keeps custom metrics of each kind.
PARAMS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        counter = pb_utils.MetricFamily("params_requests", "requests seen", pb_utils.MetricFamily.COUNTER)
        gauge = pb_utils.MetricFamily("params_last_value", "the last X", pb_utils.MetricFamily.GAUGE)
        histogram = pb_utils.MetricFamily("params_x", "X values", pb_utils.MetricFamily.HISTOGRAM)
        self.requests = counter.Metric(labels={"model": "params", "version": "1"})
        self.last = gauge.Metric(labels={"model": "params"})
        self.values = histogram.Metric(labels={"model": "params"}, buckets=[1.0, 10.0])

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            value = float(x.reshape(-1)[0])
            self.requests.increment(1)
            self.last.set(value)
            self.values.observe(value)
            parameters = {"sum": int(x.sum()), "model": "params", "big": value > 5, "ratio": 0.5}
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)], parameters=parameters))
        return out
"""
PARAMS_CONFIG = """name: "params"
backend: "python"
max_batch_size: 8
dynamic_batching { }
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""

# An ensemble whose last step is decoupled: "double" doubles IN, "repeat" streams the result.
DOUBLE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 2)]
            )
            for r in requests
        ]
"""
DOUBLE_CONFIG = """name: "double"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
"""
PIPELINE_CONFIG = """name: "double_then_repeat"
platform: "ensemble"
max_batch_size: 0
input [
  { name: "VALUES" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAYS" data_type: TYPE_UINT32 dims: [ -1 ] },
  { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [ { name: "REPEATED" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "double" input_map { key: "IN" value: "VALUES" } output_map { key: "OUT" value: "DOUBLED" } },
  { model_name: "repeat"
    input_map [ { key: "IN" value: "DOUBLED" }, { key: "DELAY" value: "DELAYS" }, { key: "WAIT" value: "WAIT" } ]
    output_map { key: "OUT" value: "REPEATED" } }
] }
"""


def build(repo: Path) -> Path:
    write_python(repo, "repeat", REPEAT_CONFIG.format(name="repeat"), REPEAT)
    write_python(repo, "square", SQUARE_CONFIG, SQUARE)
    (repo / "square" / "warmup").mkdir()
    (repo / "square" / "warmup" / "three").write_bytes((3).to_bytes(4, "little"))
    write_python(repo, "endless", ENDLESS_CONFIG, ENDLESS)
    write_python(repo, "params", PARAMS_CONFIG, PARAMS)
    write_python(repo, "double", DOUBLE_CONFIG, DOUBLE)
    write_python(repo, "double_then_repeat", PIPELINE_CONFIG)
    return repo
