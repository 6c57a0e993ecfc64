"""The bundled generator over gRPC with tritonclient: charlm streamed (decoupled, one response per
character) and charlm_step as a sequence model with the GRU state as implicit state."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from functools import partial

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .conftest import RunningServer, start_server, test_settings
from .text_models import BUNDLED


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = test_settings(BUNDLED, model_control_mode="explicit", load_models=["charlm", "charlm_step"])
    running = start_server(settings)
    yield running
    running.stop()


def _greedy_by_stream(url: str, prompt: str, n: int) -> str:
    client = grpcclient.InferenceServerClient(url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
    inputs = []
    for name, dtype, value in (("text_input", "BYTES", [prompt.encode()]), ("max_tokens", "INT32", [n])):
        tensor = grpcclient.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(np.array(value, dtype=object if dtype == "BYTES" else np.int32))
        inputs.append(tensor)
    temperature = grpcclient.InferInput("temperature", [1], "FP32")
    temperature.set_data_from_numpy(np.array([0.0], np.float32))
    client.async_stream_infer("charlm", [*inputs, temperature], enable_empty_final_response=True)
    pieces = []
    while True:
        result, error = results.get(timeout=30)
        assert error is None, error
        response = result.get_response()
        if response.outputs:
            pieces.append(result.as_numpy("text_output")[0].decode())
        if response.parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    return "".join(pieces)


def test_streams_one_response_per_character(bundled: RunningServer) -> None:
    text = _greedy_by_stream(bundled.grpc_url, "The ", 20)
    assert len(text) == 20


def test_the_sequence_model_carries_the_state_and_agrees_with_the_generator(bundled: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(bundled.grpc_url)
    config = client.get_model_config("charlm_step", as_json=True)["config"]
    vocabulary = json.loads(config["parameters"]["vocabulary"]["string_value"])
    prompt, steps = "The ", 12
    tokens = [vocabulary.index(c) for c in prompt]
    out = ""
    for i in range(len(tokens) + steps - 1):
        token = tokens[i] if i < len(tokens) else vocabulary.index(out[-1])
        x = grpcclient.InferInput("TOKEN", [1, 1], "INT64")
        x.set_data_from_numpy(np.array([[token]], np.int64))
        last = i == len(tokens) + steps - 2
        logits = client.infer("charlm_step", [x], sequence_id=99, sequence_start=i == 0, sequence_end=last)
        if i >= len(tokens) - 1:
            out += vocabulary[int(np.argmax(logits.as_numpy("LOGITS")[0]))]
    client.close()
    assert out == _greedy_by_stream(bundled.grpc_url, prompt, steps)
