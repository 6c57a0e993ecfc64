"""charlm: a character-level GRU language model that streams its text one character at a time.

Decoupled (``model_transaction_policy { decoupled: true }``): every live request is generated
by one engine thread that steps them all together (continuous batching), sending one response
per piece of text through each request's response sender and the last one with
``TRITONSERVER_RESPONSE_COMPLETE_FINAL``. The same file also
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
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_LIMIT = 4096
MAX_STOPS = 16
# Streams stepped together; more wait for one to finish (their first token comes later).
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
        self.pending = list(self.tokens) or [generator.index["\n"]]  # tokens still to feed
        self.text = ""  # generated so far
        self.sent = 0  # how much of it went out
        self.done = False

    def __iter__(self) -> Iterator[str]:
        """The pieces of text, stepping this one completion alone."""
        state = np.zeros((1, self.generator.hidden), np.float32)
        while not self.done:
            logits, state = self.generator.step(self.next_token(), state)
            yield from self.advance(logits)

    def next_token(self) -> int:
        """The token the next step consumes: the prompt's, then each sampled one."""
        return self.pending[0]

    def advance(self, logits: np.ndarray) -> list[str]:
        """After a step that consumed ``next_token()`` and gave ``logits``: the text that can go
        out now (a stop string's possible start is held back), and ``done`` once it has ended."""
        self.pending.pop(0)
        if self.pending:  # still reading the prompt
            return []
        g = self.generator
        token = self._sample(logits)
        self.text += g.vocabulary[token]
        self.completion_tokens += 1
        text, pieces = self.text, []
        ended = [s for s in self.stop if text.endswith(s)]
        if ended:
            self.finish_reason = "stop"
            self.done = True
            end = len(text) - max(len(s) for s in ended)
            return [text[self.sent : end]] if end > self.sent else []
        end = len(text) - self._held(text)
        if end > self.sent:
            pieces.append(text[self.sent : end])
            self.sent = end
        if self.completion_tokens < self.max_tokens:
            self.pending.append(token)
        else:
            self.done = True
            if len(text) > self.sent:
                pieces.append(text[self.sent :])
                self.sent = len(text)
        return pieces

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


class Stream:
    """One streamed request in the engine: its completion, state row, and what it owes the client."""

    def __init__(self, request: pb_utils.InferenceRequest, completion: Completion, streams: bool) -> None:
        self.request = request
        self.sender = request.get_response_sender()
        self.completion = completion
        self.streams = streams
        self.state = np.zeros((1, completion.generator.hidden), np.float32)
        self.held: str | None = None  # each piece goes out once the next exists: the last carries the totals
        self.whole: list[str] = []  # the text of a request that does not stream

    def emit(self, pieces: list[str]) -> None:
        for piece in pieces:
            if not self.streams:
                self.whole.append(piece)
                continue
            if self.held is not None:
                self.sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", _strings(self.held))]))
            self.held = piece

    def finish(self) -> None:
        text = "".join(self.whole) if not self.streams else (self.held or "")
        self.sender.send(_last(text, self.completion), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def fail(self, error: pb_utils.TritonError) -> None:
        self.sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class Engine:
    """Continuous batching: one thread steps every live stream together, one row each, in a
    single call of the step model; a new request joins at the next step and a finished one
    leaves, so N streams cost about one step each instead of N (the GRU's rows are
    independent, so prompt tokens and sampled tokens share a batch)."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.incoming: queue.SimpleQueue[Stream | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="charlm-engine", daemon=True)
        self.thread.start()

    def submit(self, stream: Stream) -> None:
        self.incoming.put(stream)

    def close(self) -> None:
        self.incoming.put(None)
        self.thread.join()

    def _run(self) -> None:
        live: list[Stream] = []
        while True:
            try:
                while True:  # wait only when nothing is live
                    item = self.incoming.get(block=not live)
                    if item is None:
                        for stream in live:
                            stream.fail(
                                pb_utils.TritonError("the model is unloading", pb_utils.TritonError.UNAVAILABLE)
                            )
                        return
                    if len(live) < MAX_STREAMS:
                        live.append(item)
                    else:  # full: back of the line, stepped once a stream leaves
                        self.incoming.put(item)
                        break
            except queue.Empty:
                pass
            live = self._step(live)

    def _step(self, live: list[Stream]) -> list[Stream]:
        kept = []
        for stream in live:
            if stream.request.is_cancelled():
                stream.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                kept.append(stream)
        if not kept:
            return kept
        tokens = np.array([[s.completion.next_token()] for s in kept], np.int64)
        states = np.concatenate([s.state for s in kept])
        try:
            logits, states = self.generator.session.run(None, {"TOKEN": tokens, "STATE_IN": states})
        except Exception as e:  # a failure of the model itself: every live stream gets its message
            for stream in kept:
                stream.fail(pb_utils.TritonError(f"{type(e).__name__}: {e}"))
            return []
        still = []
        for i, stream in enumerate(kept):
            stream.state = states[i : i + 1]
            stream.emit(stream.completion.advance(logits[i]))
            if stream.completion.done:
                stream.finish()
            else:
                still.append(stream)
        return still


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        folder = Path(args["model_repository"]) / args["model_version"]
        self.generator = Generator(folder / "step.onnx")
        self.engine = Engine(self.generator) if self.decoupled else None

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse] | None:
        if self.engine is None:
            return [self._whole(r) for r in requests]
        for request in requests:
            try:
                completion = self.generator.complete(**_arguments(request))  # type: ignore[arg-type]
                streams = _streams(request)
            except pb_utils.TritonError as e:
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=e), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                )
                continue
            self.engine.submit(Stream(request, completion, streams))
        return None

    def _whole(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        try:
            completion = self.generator.complete(**_arguments(request))  # type: ignore[arg-type]
        except pb_utils.TritonError as e:
            return pb_utils.InferenceResponse(error=e)
        return _last("".join(completion), completion)

    def finalize(self) -> None:
        if self.engine is not None:
            self.engine.close()
