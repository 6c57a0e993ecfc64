"""charlm: a character-level GRU language model that streams its text one character at a time.

Decoupled (``model_transaction_policy { decoupled: true }``): each request is generated on a
thread of its own, which sends one response per piece of text through the request's response
sender and the last one with ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``. The same file also
serves the model when its config is not decoupled: one response with the whole text.

Each step runs ``step.onnx`` (built by ``model_repository/build.py``; the same bytes as the
``charlm_step`` model): one token and the GRU state in, the next token's logits and the new
state out. Inputs (one element each, all optional but ``text_input``):

* ``text_input``: the prompt (printable ASCII and newlines; other characters read as spaces;
  an empty prompt starts from a newline);
* ``max_tokens`` (default 64, at most 4096): characters to generate;
* ``temperature`` (default 1.0; 0 picks the most likely character), ``top_p`` (default 1.0:
  nucleus sampling over the smallest set of characters whose probability reaches it);
* ``seed``: the same seed and inputs give the same text (unseeded requests draw fresh entropy);
* ``stop``: strings that end the text where it would first contain one (not included in it).

The request parameter ``stream`` (true by default) set to false makes a decoupled charlm send
the whole text in one response, as Triton's LLM backends do for the generate endpoint.

Outputs: ``text_output`` (this response's piece of text); the last response also carries
``finish_reason`` ("stop" when a stop string ended it, "length" at ``max_tokens``),
``prompt_tokens`` and ``completion_tokens`` (characters read and generated).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_LIMIT = 4096
MAX_STOPS = 16
# Requests generated at once; more wait for a thread (their first token comes later).
MAX_STREAMS = 64


class Generator:
    """The step loop over the ONNX step model, usable without a server (the benchmark drives
    it in-process): ``Generator(path).complete(prompt, ...)`` is an iterable of text pieces."""

    def __init__(self, step_path: str | Path) -> None:
        options = ort.SessionOptions()
        # One small step at a time: more threads only add hand-offs, and spinning ones steal
        # the CPU from the server.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(step_path), options, providers=["CPUExecutionProvider"])
        self.vocabulary: str = json.loads(self.session.get_modelmeta().custom_metadata_map["vocabulary"])
        self.index = {c: i for i, c in enumerate(self.vocabulary)}
        self.hidden = int(self.session.get_inputs()[1].shape[1])
        self.space = self.index[" "]

    def step(self, token: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, state = self.session.run(None, {"TOKEN": np.array([[token]], np.int64), "STATE_IN": state})
        return logits[0], state

    def complete(
        self,
        prompt: str,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Completion:
        return Completion(self, prompt, max_tokens, temperature, top_p, seed, stop)


class Completion:
    """One generation: iterate it for the pieces of text; afterwards ``finish_reason``,
    ``prompt_tokens`` and ``completion_tokens`` say how it ended."""

    def __init__(
        self,
        generator: Generator,
        prompt: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: Sequence[str],
    ) -> None:
        self.generator = generator
        self.tokens = [generator.index.get(c, generator.space) for c in prompt]
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)
        self.stop = tuple(stop)
        self.prompt_tokens = len(self.tokens)
        self.completion_tokens = 0
        self.finish_reason = "length"

    def __iter__(self) -> Iterator[str]:
        g = self.generator
        state = np.zeros((1, g.hidden), np.float32)
        logits = np.zeros(len(g.vocabulary), np.float32)
        for token in self.tokens or [g.index["\n"]]:
            logits, state = g.step(token, state)
        text, sent = "", 0  # generated so far; how much of it went out
        while self.completion_tokens < self.max_tokens:
            token = self._sample(logits)
            text += g.vocabulary[token]
            self.completion_tokens += 1
            ended = [s for s in self.stop if text.endswith(s)]
            if ended:
                self.finish_reason = "stop"
                end = len(text) - max(len(s) for s in ended)
                if end > sent:
                    yield text[sent:end]
                return
            # Hold back what may be the start of a stop string.
            end = len(text) - self._held(text)
            if end > sent:
                yield text[sent:end]
                sent = end
            if self.completion_tokens < self.max_tokens:
                logits, state = g.step(token, state)
        if len(text) > sent:
            yield text[sent:]

    def _held(self, text: str) -> int:
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _sample(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.temperature
        p = np.exp(scaled - scaled.max())
        if self.top_p < 1.0:
            order = np.argsort(-p)
            mass = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(mass, self.top_p * mass[-1])) + 1]
            nucleus = np.zeros_like(p)
            nucleus[keep] = p[keep]
            p = nucleus
        cdf = np.cumsum(p)
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), len(p) - 1))


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _scalar(request: pb_utils.InferenceRequest, name: str) -> object | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise pb_utils.TritonError(
            f"input '{name}' must have one element, got {array.size}", pb_utils.TritonError.INVALID_ARG
        )
    return array.reshape(-1)[0]


def _arguments(request: pb_utils.InferenceRequest) -> dict[str, object]:
    """The generation's arguments from the request's tensors, each checked."""
    invalid = pb_utils.TritonError.INVALID_ARG
    prompt = _scalar(request, "text_input")
    if not isinstance(prompt, bytes):
        raise pb_utils.TritonError("input 'text_input' must be a string", invalid)
    args: dict[str, object] = {"prompt": _text(prompt)}
    max_tokens = _scalar(request, "max_tokens")
    if max_tokens is not None:
        if not 1 <= int(max_tokens) <= MAX_TOKENS_LIMIT:
            raise pb_utils.TritonError(
                f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}", invalid
            )
        args["max_tokens"] = int(max_tokens)
    temperature = _scalar(request, "temperature")
    if temperature is not None:
        if not (np.isfinite(temperature) and 0 <= float(temperature) <= 100):
            raise pb_utils.TritonError(f"temperature must be between 0 and 100, got {temperature}", invalid)
        args["temperature"] = float(temperature)
    top_p = _scalar(request, "top_p")
    if top_p is not None:
        if not (np.isfinite(top_p) and 0 < float(top_p) <= 1):
            raise pb_utils.TritonError(f"top_p must be greater than 0 and at most 1, got {top_p}", invalid)
        args["top_p"] = float(top_p)
    seed = _scalar(request, "seed")
    if seed is not None:
        args["seed"] = int(seed) & 0xFFFFFFFFFFFFFFFF  # numpy seeds are non-negative
    stop = pb_utils.get_input_tensor_by_name(request, "stop")
    if stop is not None:
        stops = [_text(s) for s in stop.as_numpy().reshape(-1)]
        if len(stops) > MAX_STOPS or not all(stops):
            raise pb_utils.TritonError(f"stop takes 1 to {MAX_STOPS} non-empty strings", invalid)
        args["stop"] = stops
    return args


def _streams(request: pb_utils.InferenceRequest) -> bool:
    stream = json.loads(request.parameters()).get("stream", True)
    if not isinstance(stream, bool):
        raise pb_utils.TritonError("parameter 'stream' must be true or false", pb_utils.TritonError.INVALID_ARG)
    return stream


def _strings(*values: str) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=object)


def _last(piece: str, completion: Completion) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(
        [
            pb_utils.Tensor("text_output", _strings(piece)),
            pb_utils.Tensor("finish_reason", _strings(completion.finish_reason)),
            pb_utils.Tensor("prompt_tokens", np.array([completion.prompt_tokens], np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([completion.completion_tokens], np.int32)),
        ]
    )


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        folder = Path(args["model_repository"]) / args["model_version"]
        self.generator = Generator(folder / "step.onnx")
        self.pool = ThreadPoolExecutor(MAX_STREAMS, thread_name_prefix="charlm") if self.decoupled else None

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse] | None:
        if self.pool is None:
            return [self._whole(r) for r in requests]
        for request in requests:
            self.pool.submit(self._stream, request)
        return None

    def _whole(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        try:
            completion = self.generator.complete(**_arguments(request))  # type: ignore[arg-type]
        except pb_utils.TritonError as e:
            return pb_utils.InferenceResponse(error=e)
        return _last("".join(completion), completion)

    def _stream(self, request: pb_utils.InferenceRequest) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            completion = self.generator.complete(**_arguments(request))  # type: ignore[arg-type]
            if not _streams(request):
                sender.send(_last("".join(completion), completion), flags=final)
                return
            # Each piece goes out once the next one exists, so that the last carries the totals.
            previous: str | None = None
            for piece in completion:
                if request.is_cancelled():
                    sender.send(flags=final)
                    return
                if previous is not None:
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", _strings(previous))]))
                previous = piece
            sender.send(_last(previous or "", completion), flags=final)
        except pb_utils.TritonError as e:
            sender.send(pb_utils.InferenceResponse(error=e), flags=final)
        except Exception as e:  # a failure of the model itself: the client gets its message
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}")), flags=final)

    def finalize(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
