"""The OpenAI-compatible text API's conversions: which models it serves (the text contract),
an OpenAI request to the core's request, and the model's responses to OpenAI documents.

**The text contract.** A model is served under ``/v1`` when its config has
``parameters { key: "openai_contract" value { string_value: "text" } }`` and:

* input ``text_input`` (TYPE_STRING, one element): the prompt, or the chat rendered by the
  chat template below;
* output ``text_output`` (TYPE_STRING, one element per response): the next piece of text. A
  decoupled model sends one response per piece; any other model answers once with all of it;
* optional inputs, one element each, sent only when the client gives the OpenAI parameter of
  the same name (and the parameter is refused when the model lacks the input): ``max_tokens``
  (an integer type), ``temperature``, ``top_p`` (TYPE_FP32 or TYPE_FP64), ``seed`` (an integer
  type), ``stop`` (TYPE_STRING, dims [-1]: the stop strings; the model ends its text before one);
* optional outputs, read from any response (the last value counts): ``finish_reason``
  (TYPE_STRING: "stop" or "length"; "stop" when absent), ``prompt_tokens`` and
  ``completion_tokens`` (integer types: usage is reported only when the model has both);
* every other input is optional (the contract cannot fill it).

**Chat.** ``/v1/chat/completions`` renders the messages into one prompt with the config's
``chat_message_template`` (default ``"{role}: {content}\\n"``; ``{role}`` as sent, ``{ROLE}``
upper-cased, ``{content}`` the message's text) per message, then ``chat_generation_prompt``
(default ``"assistant: "``). ``chat_stop`` (optional; needs the ``stop`` input) is a stop
string added to every chat request, so that the reply ends where the model starts another turn.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...protocol.errors import InvalidArgument, NotFound
from ...protocol.pb import model_config_pb2 as mc
from ...protocol.types import InferRequest, InferResponse

CONTRACT_KEY, CONTRACT = "openai_contract", "text"
TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"
INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOAT_TYPES = frozenset({"FP32", "FP64"})
# The optional inputs: the datatypes each may have.
SAMPLING_INPUTS = {
    "max_tokens": INTEGER_TYPES,
    "temperature": FLOAT_TYPES,
    "top_p": FLOAT_TYPES,
    "seed": INTEGER_TYPES,
    "stop": frozenset({"BYTES"}),
}
COUNT_OUTPUTS = ("prompt_tokens", "completion_tokens")
DEFAULT_MESSAGE_TEMPLATE = "{role}: {content}\n"
DEFAULT_GENERATION_PROMPT = "assistant: "
MAX_STOPS = 4  # OpenAI's limit
ROLES = frozenset({"system", "developer", "user", "assistant"})


class OpenAIError(InvalidArgument):
    """An OpenAI-style client error: ``param`` names the request field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.error_code = code


class ModelNotServed(NotFound):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.param = "model"
        self.error_code = "model_not_found"


# --- the contract --------------------------------------------------------------------------
@dataclass(frozen=True)
class TextModel:
    """What the contract found in one model's config."""

    name: str
    batched: bool
    inputs: Mapping[str, np.dtype[Any]]  # text_input and the optional inputs the model has
    counts: bool  # reports prompt_tokens and completion_tokens
    message_template: str = DEFAULT_MESSAGE_TEMPLATE
    generation_prompt: str = DEFAULT_GENERATION_PROMPT
    chat_stop: str = ""


def contract_of(name: str, config: mc.ModelConfig, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> TextModel:
    """The model's text contract (``inputs``/``outputs``: its signature's tensor specs), or
    :class:`ModelNotServed` saying what it lacks."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    declared = params.get(CONTRACT_KEY)
    if declared != CONTRACT:
        raise ModelNotServed(
            f"model '{name}' is not served by the OpenAI API: its config does not declare "
            f'parameters {{ key: "{CONTRACT_KEY}" value {{ string_value: "{CONTRACT}" }} }}'
            + (f" (it declares '{declared}')" if declared else "")
        )

    def broken(why: str) -> ModelNotServed:
        return ModelNotServed(f"model '{name}' declares the OpenAI text contract but {why}")

    for tensor, specs in ((TEXT_INPUT, inputs), (TEXT_OUTPUT, outputs)):
        spec = specs.get(tensor)
        if spec is None or spec.datatype.name != "BYTES":
            raise broken(f"has no TYPE_STRING {'input' if specs is inputs else 'output'} '{tensor}'")
    dtypes: dict[str, np.dtype[Any]] = {TEXT_INPUT: inputs[TEXT_INPUT].datatype.dtype}
    for tensor, spec in inputs.items():
        if tensor == TEXT_INPUT:
            continue
        allowed = SAMPLING_INPUTS.get(tensor)
        if allowed is None:
            if not spec.optional:
                raise broken(f"requires input '{tensor}', which the contract does not fill")
            continue
        if spec.datatype.name not in allowed:
            raise broken(f"input '{tensor}' is {spec.datatype.name}, not one of {', '.join(sorted(allowed))}")
        dtypes[tensor] = spec.datatype.dtype
    template = params.get("chat_message_template", DEFAULT_MESSAGE_TEMPLATE)
    try:
        template.format(role="user", ROLE="USER", content="")
    except (KeyError, IndexError, ValueError) as e:
        raise broken(f"its chat_message_template is not a valid template ({type(e).__name__}: {e})") from None
    chat_stop = params.get("chat_stop", "")
    if chat_stop and "stop" not in dtypes:
        raise broken("sets chat_stop without a 'stop' input")
    return TextModel(
        name,
        config.max_batch_size > 0,
        dtypes,
        all(c in outputs for c in COUNT_OUTPUTS),
        template,
        params.get("chat_generation_prompt", DEFAULT_GENERATION_PROMPT),
        chat_stop,
    )


# --- requests --------------------------------------------------------------------------------
# Fields accepted only at their default values (an explicit default changes nothing).
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
}
_COMPLETION_DEFAULTS = {**_DEFAULTS, "echo": (None, False), "best_of": (None, 1), "suffix": (None,)}
_CHAT_DEFAULTS = {
    **_DEFAULTS,
    "top_logprobs": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
}
_COMMON = frozenset({"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "user"})
COMPLETION_FIELDS = _COMMON | {"prompt"} | set(_COMPLETION_DEFAULTS)
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"} | set(_CHAT_DEFAULTS)


@dataclass
class TextRequest:
    """An OpenAI request, checked, with the core's request it becomes."""

    kind: str  # "text_completion" | "chat.completion"
    model: str
    core: InferRequest
    stream: bool = False
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))


def model_name(doc: Mapping[str, Any]) -> str:
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise OpenAIError(
            "you must provide a model parameter ('model': the name of a model in GET /v1/models)", "model"
        )
    return name


def completion_request(doc: Mapping[str, Any], model: TextModel) -> TextRequest:
    _check_fields(doc, COMPLETION_FIELDS, _COMPLETION_DEFAULTS)
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError(
            "'prompt' must be a string (or a list of one string); lists of prompts and token arrays are not supported",
            "prompt",
        )
    request = _request(doc, model, prompt, "max_tokens", doc.get("max_tokens"), "")
    request.kind, request.id = "text_completion", f"cmpl-{uuid.uuid4().hex}"
    return request


def chat_request(doc: Mapping[str, Any], model: TextModel) -> TextRequest:
    _check_fields(doc, CHAT_FIELDS, _CHAT_DEFAULTS)
    if "max_tokens" in doc and "max_completion_tokens" in doc:
        raise OpenAIError("give 'max_tokens' or 'max_completion_tokens', not both", "max_completion_tokens")
    limit_field = "max_completion_tokens" if "max_completion_tokens" in doc else "max_tokens"
    prompt = render_chat(doc.get("messages"), model)
    request = _request(doc, model, prompt, limit_field, doc.get(limit_field), model.chat_stop)
    request.kind, request.id = "chat.completion", f"chatcmpl-{uuid.uuid4().hex}"
    return request


def render_chat(messages: Any, model: TextModel) -> str:
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("'messages' must be a non-empty list of messages", "messages")
    parts = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise OpenAIError(f"{where} must be an object", where)
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise OpenAIError(
                f"{where}: {', '.join(repr(k) for k in extra)} not supported (only 'role' and 'content')", where
            )
        role = message.get("role")
        if role not in ROLES:
            raise OpenAIError(f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}", f"{where}.role")
        parts.append(model.message_template.format(role=role, ROLE=role.upper(), content=_content(message, where)))
    return "".join(parts) + model.generation_prompt


def _content(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise OpenAIError(f"{where}.content: only text parts are supported", f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise OpenAIError(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _check_fields(
    doc: Mapping[str, Any], known: frozenset[str] | set[str], defaults: Mapping[str, tuple[Any, ...]]
) -> None:
    for key in doc:
        if key not in known:
            raise OpenAIError(f"Unrecognized request argument supplied: {key}", key)
    for key, allowed in defaults.items():
        if key in doc and not any(doc[key] == a and type(doc[key]) is type(a) for a in allowed):
            shown = " or ".join(repr(a) for a in allowed if a is not None) or "null"
            raise OpenAIError(f"'{key}' is not supported by this server: leave it out (or set it to {shown})", key)


def _request(
    doc: Mapping[str, Any], model: TextModel, prompt: str, limit_field: str, limit: Any, chat_stop: str
) -> TextRequest:
    inputs: dict[str, np.ndarray] = {TEXT_INPUT: _strings([prompt])}
    if limit is not None:
        if not _is_int(limit) or limit < 1:
            raise OpenAIError(f"'{limit_field}' must be an integer of at least 1, got {limit!r}", limit_field)
        inputs["max_tokens"] = _one(model, "max_tokens", limit, limit_field)
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise OpenAIError(f"'{key}' must be a number from {low:g} to {high:g}, got {value!r}", key)
        inputs[key] = _one(model, key, value, key)
    seed = doc.get("seed")
    if seed is not None:
        if not _is_int(seed) or not -(2**63) <= seed < 2**64:
            raise OpenAIError(f"'seed' must be an integer, got {seed!r}", "seed")
        inputs["seed"] = _one(model, "seed", seed, "seed")
    stops = _stops(doc.get("stop"))
    if stops or chat_stop:
        if "stop" not in model.inputs:
            raise OpenAIError(f"model '{model.name}' does not take 'stop' (it has no 'stop' input)", "stop")
        inputs["stop"] = _strings(stops + ([chat_stop] if chat_stop and chat_stop not in stops else []))
    stream = doc.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise OpenAIError("'stream' must be true or false", "stream")
    include_usage = _include_usage(doc.get("stream_options"), stream)
    if include_usage and not model.counts:
        raise OpenAIError(
            f"model '{model.name}' does not report token counts (outputs {' and '.join(COUNT_OUTPUTS)})",
            "stream_options",
        )
    if model.batched:
        inputs = {k: v[np.newaxis] for k, v in inputs.items()}
    return TextRequest("", model.name, InferRequest(model.name, inputs), stream, include_usage)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one(model: TextModel, tensor: str, value: Any, field_name: str) -> np.ndarray:
    dtype = model.inputs.get(tensor)
    if dtype is None:
        raise OpenAIError(f"model '{model.name}' does not take '{field_name}' (it has no '{tensor}' input)", field_name)
    if dtype.kind == "u" and value < 0:
        value &= (1 << (8 * dtype.itemsize)) - 1  # a negative seed for an unsigned input: its bits
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None and not info.min <= value <= info.max:
        raise OpenAIError(f"'{field_name}' {value} does not fit the model's {dtype.name} input", field_name)
    return np.array([value], dtype=dtype)


def _strings(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [v.encode("utf-8", "replace") for v in values]
    return array


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise OpenAIError(f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop")
    return list(stops)


def _include_usage(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise OpenAIError("'stream_options' is only allowed when 'stream' is true", "stream_options")
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise OpenAIError("'stream_options' takes only 'include_usage'", "stream_options")
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise OpenAIError("'stream_options.include_usage' must be true or false", "stream_options")
    return include


# --- responses -------------------------------------------------------------------------------
@dataclass
class Progress:
    """What the model said so far about how its text ended."""

    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def piece(self, response: InferResponse) -> str:
        """The response's text; its finish reason and counts are kept."""
        out = response.outputs
        if "finish_reason" in out:
            self.finish_reason = _text(out["finish_reason"]) or self.finish_reason
        if "prompt_tokens" in out:
            self.prompt_tokens = int(np.asarray(out["prompt_tokens"]).reshape(-1)[0])
        if "completion_tokens" in out:
            self.completion_tokens = int(np.asarray(out["completion_tokens"]).reshape(-1)[0])
        return _text(out[TEXT_OUTPUT]) if TEXT_OUTPUT in out else ""

    def usage(self) -> dict[str, int] | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


def _text(array: np.ndarray) -> str:
    values = np.asarray(array).reshape(-1)
    return "".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values)


def _head(request: TextRequest, kind: str) -> dict[str, Any]:
    return {"id": request.id, "object": kind, "created": request.created, "model": request.model}


def whole(request: TextRequest, text: str, progress: Progress) -> dict[str, Any]:
    """The non-streamed answer."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": progress.finish_reason}
    if request.kind == "chat.completion":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {**_head(request, request.kind), "choices": [choice], "usage": progress.usage()}


def chunk(request: TextRequest, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    """One streamed chunk: a piece of text (``None``: the chat's opening role delta), or the
    closing chunk with the finish reason."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
    if request.kind == "chat.completion":
        choice["delta"] = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        kind = "chat.completion.chunk"
    else:
        choice["text"] = text or ""
        kind = "text_completion"
    doc = {**_head(request, kind), "choices": [choice]}
    if request.include_usage:
        doc["usage"] = None
    return doc


def usage_chunk(request: TextRequest, progress: Progress) -> dict[str, Any]:
    kind = "chat.completion.chunk" if request.kind == "chat.completion" else "text_completion"
    return {**_head(request, kind), "choices": [], "usage": progress.usage()}


def model_entry(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "inferd"}
