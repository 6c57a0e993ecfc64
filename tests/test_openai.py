"""The OpenAI-compatible text API (/v1) with the public ``openai`` client, unchanged, and httpx
for the error documents: completions and chat, streamed and not, usage, seeds, every refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from inferd.server.frontends import openai_convert as oc

from .conftest import RunningServer, start_server, test_settings
from .text_models import build_repository

PROMPT = "First Citizen:\n"


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(test_settings(build_repository(tmp_path_factory.mktemp("openai-repo"))))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(text_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"http://{text_server.http_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def http(text_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{text_server.http_url}/v1", timeout=30) as c:
        yield c


# --- models ---------------------------------------------------------------------------------------
def test_models_lists_only_models_that_declare_the_contract(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models] == ["charlm", "charlm_whole", "fails_midway"]
    assert all(m.object == "model" and m.owned_by == "inferd" for m in models)
    assert client.models.retrieve("charlm").id == "charlm"
    with pytest.raises(openai.NotFoundError, match="not served by the OpenAI API"):
        client.models.retrieve("add_sub")
    with pytest.raises(openai.NotFoundError, match="has no TYPE_STRING output 'text_output'"):
        client.models.retrieve("broken_contract")
    with pytest.raises(openai.NotFoundError, match="The model 'nope' does not exist"):
        client.models.retrieve("nope")


# --- completions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["charlm", "charlm_whole"])
def test_completion(client: openai.OpenAI, model: str) -> None:
    done = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0.8, top_p=0.95, seed=11)
    assert done.object == "text_completion" and done.model == model and done.id.startswith("cmpl-")
    (choice,) = done.choices
    assert len(choice.text) == 24 and choice.finish_reason == "length" and choice.index == 0
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (15, 24, 39)
    again = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0.8, top_p=0.95, seed=11)
    assert again.choices[0].text == choice.text  # deterministic for a seed
    other = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0.8, top_p=0.95, seed=12)
    assert other.choices[0].text != choice.text


def test_completion_streamed_equals_the_whole_answer(client: openai.OpenAI) -> None:
    args = {"model": "charlm", "prompt": PROMPT, "max_tokens": 16, "seed": 5}
    whole = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == whole and len(pieces) == 17  # one per character, then the closing chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16


def test_completion_with_a_stop_string(client: openai.OpenAI) -> None:
    done = client.completions.create(model="charlm", prompt=PROMPT, max_tokens=300, seed=5, stop=["\n", "xyz"])
    assert "\n" not in done.choices[0].text and done.choices[0].finish_reason == "stop"


def test_temperature_zero_is_greedy(client: openai.OpenAI) -> None:
    texts = {
        client.completions.create(model="charlm", prompt="The ", max_tokens=20, temperature=0).choices[0].text
        for _ in range(2)
    }
    assert len(texts) == 1


# --- chat -----------------------------------------------------------------------------------------
def test_chat_completion(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "A play."}, {"role": "user", "content": "Speak, speak."}]
    done = client.chat.completions.create(model="charlm", messages=messages, max_tokens=40, seed=3)  # type: ignore[arg-type]
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    (choice,) = done.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert "\n\n" not in choice.message.content  # chat_stop ends the turn
    assert choice.finish_reason in ("stop", "length")
    prompt = "SYSTEM:\nA play.\n\nUSER:\nSpeak, speak.\n\nASSISTANT:\n"  # the documented template
    assert done.usage is not None and done.usage.prompt_tokens == len(prompt)


def test_chat_completion_streamed(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hail,"}, {"type": "text", "text": " sir."}]}]
    args = {"model": "charlm", "messages": messages, "max_completion_tokens": 12, "seed": 9}
    whole = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(**args, stream=True))  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_error_mid_stream_is_an_error_event(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="fails_midway", prompt="x", stream=True)
    pieces = []
    with pytest.raises(openai.APIError, match="the model broke"):
        for c in stream:
            pieces.append(c.choices[0].text)
    assert pieces == ["a", "b"]


def test_usage_is_refused_for_a_model_without_counts(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not report token counts"):
        client.completions.create(model="fails_midway", prompt="x", stream=True, stream_options={"include_usage": True})


# --- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        (
            "/completions",
            {"model": "charlm", "prompt": "x", "foo": 1},
            "foo",
            "Unrecognized request argument supplied: foo",
        ),
        ("/completions", {"model": "charlm", "prompt": "x", "n": 2}, "n", "'n' is not supported"),
        ("/completions", {"model": "charlm", "prompt": "x", "echo": True}, "echo", "'echo' is not supported"),
        ("/completions", {"model": "charlm", "prompt": "x", "logprobs": 1}, "logprobs", "'logprobs' is not supported"),
        (
            "/completions",
            {"model": "charlm", "prompt": "x", "presence_penalty": 0.5},
            "presence_penalty",
            "not supported",
        ),
        ("/completions", {"model": "charlm", "prompt": ["a", "b"]}, "prompt", "lists of prompts"),
        ("/completions", {"model": "charlm", "prompt": [1, 2]}, "prompt", "token arrays are not supported"),
        ("/completions", {"prompt": "x"}, "model", "you must provide a model parameter"),
        ("/completions", {"model": "charlm", "prompt": "x", "max_tokens": 0}, "max_tokens", "at least 1"),
        ("/completions", {"model": "charlm", "prompt": "x", "temperature": 3}, "temperature", "from 0 to 2"),
        ("/completions", {"model": "charlm", "prompt": "x", "top_p": 1.5}, "top_p", "from 0 to 1"),
        ("/completions", {"model": "charlm", "prompt": "x", "seed": "s"}, "seed", "'seed' must be an integer"),
        ("/completions", {"model": "charlm", "prompt": "x", "stop": ["a"] * 5}, "stop", "up to 4"),
        (
            "/completions",
            {"model": "charlm", "prompt": "x", "stream": "yes"},
            "stream",
            "'stream' must be true or false",
        ),
        (
            "/completions",
            {"model": "charlm", "prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
            "only allowed when 'stream' is true",
        ),
        (
            "/completions",
            {"model": "fails_midway", "prompt": "x", "max_tokens": 3},
            "max_tokens",
            "does not take 'max_tokens'",
        ),
        ("/completions", {"model": "fails_midway", "prompt": "x", "seed": 3}, "seed", "does not take 'seed'"),
        ("/chat/completions", {"model": "charlm", "messages": []}, "messages", "non-empty list"),
        (
            "/chat/completions",
            {"model": "charlm", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role",
            "must be one of",
        ),
        (
            "/chat/completions",
            {"model": "charlm", "messages": [{"role": "user", "content": "x", "name": "a"}]},
            "messages[0]",
            "'name' not supported",
        ),
        (
            "/chat/completions",
            {"model": "charlm", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
            "only text parts",
        ),
        (
            "/chat/completions",
            {"model": "charlm", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools",
            "'tools' is not supported",
        ),
        (
            "/chat/completions",
            {
                "model": "charlm",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 3,
                "max_completion_tokens": 3,
            },
            "max_completion_tokens",
            "not both",
        ),
        (
            "/chat/completions",
            {"model": "fails_midway", "messages": [{"role": "user", "content": "x"}], "stop": "\n"},
            "stop",
            "does not take 'stop'",
        ),
    ],
)
def test_refusals_name_the_parameter(http: httpx.Client, path: str, body: dict, param: str, message: str) -> None:
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"], error


def test_errors_from_the_model_and_the_server_have_openai_shape(http: httpx.Client) -> None:
    r = http.post("/completions", json={"model": "charlm", "prompt": "x", "max_tokens": 5000})
    assert r.status_code == 400 and "max_tokens must be between 1 and 4096" in r.json()["error"]["message"]
    r = http.post("/completions", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post("/completions", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = http.get("/no/such/path")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_the_api_can_be_turned_off(tmp_path: Path) -> None:
    running = start_server(test_settings(build_repository(tmp_path), allow_openai=False))
    try:
        r = httpx.get(f"http://{running.http_url}/v1/models")
        assert r.status_code == 404
    finally:
        running.stop()


# --- the contract, without a server ---------------------------------------------------------------
def test_contract_refuses_required_inputs_it_cannot_fill() -> None:
    from inferd.protocol import codec
    from inferd.protocol.pb import model_config_pb2 as mc
    from inferd.server.config import TensorSpec

    config = mc.ModelConfig(name="m")
    config.parameters["openai_contract"].string_value = "text"
    text = TensorSpec("text_input", codec.datatype("BYTES"), (1,))
    out = {"text_output": TensorSpec("text_output", codec.datatype("BYTES"), (1,))}
    extra = TensorSpec("other", codec.datatype("FP32"), (1,))
    with pytest.raises(oc.ModelNotServed, match="requires input 'other'"):
        oc.contract_of("m", config, {"text_input": text, "other": extra}, out)
    odd = TensorSpec("temperature", codec.datatype("INT32"), (1,))
    with pytest.raises(oc.ModelNotServed, match="input 'temperature' is INT32"):
        oc.contract_of("m", config, {"text_input": text, "temperature": odd}, out)
    config.parameters["chat_message_template"].string_value = "{speaker}: {content}"
    with pytest.raises(oc.ModelNotServed, match="chat_message_template"):
        oc.contract_of("m", config, {"text_input": text}, out)
    del config.parameters["chat_message_template"]
    model = oc.contract_of("m", config, {"text_input": text}, out)
    assert not model.counts and model.inputs == {"text_input": np.dtype(object)}
