"""The gRPC front end on grpc++ (``native/grpc_frontend.cc``), running grpc_service's handlers.

grpc.aio spends most of a small request's CPU in its own per-RPC machinery (completion events,
a Task and several wake-ups of the loop per call; perf/reports/2026-12-06-against-triton.md).
Here grpc++'s callback server does the sockets, HTTP/2 and call bookkeeping on its own threads,
and the event loop receives each call as events through one eventfd, drained in batches. The
handlers, their errors and their messages are grpc_service's, unchanged: this module only
stands in for grpc.aio's server and its ServicerContext.

A unary handler is first stepped by hand: a request that completes without waiting (an inline
model) never becomes a Task.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any

import grpc

from ..tls import TlsEndpoint
from .grpc_service import TracedReply, WriteBatch
from .internal_error import internal_error

log = logging.getLogger(__name__)

try:
    from . import _native_grpc  # type: ignore[attr-defined]

    UNAVAILABLE_REASON: str | None = None
except ImportError as e:  # not built: no grpc++ at install time (setup.py)
    _native_grpc = None
    UNAVAILABLE_REASON = f"the native gRPC front end is not built ({e})"

# Messages of one stream queued in grpc++ and not yet written before the handler waits.
STREAM_WINDOW = 16
# How often grpc++ reads the port's certificate files again: a reload reaches new handshakes
# within this many seconds.
TLS_REFRESH_S = 1
_OK, _CANCELLED, _INTERNAL, _UNIMPLEMENTED = 0, 1, 13, 12


def available() -> bool:
    return _native_grpc is not None


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code.value[0]
        self.details = details


class NativeContext:
    """The part of grpc.aio's ServicerContext that the handlers use."""

    __slots__ = ("_frontend", "_id", "_deadline", "waited")

    def __init__(
        self, frontend: Any, call_id: int, deadline: float | None, waited: tuple[int, int] | None = None
    ) -> None:
        self._frontend = frontend
        self._id = call_id
        self._deadline = deadline
        # When grpc++ began waiting for the call's message and when it had it (monotonic ns):
        # Triton's GRPC_WAITREAD_START/_END in trace files. grpc.aio's context has no such times.
        self.waited = waited

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise _Abort(code, details)

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.time())

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self._frontend.metadata(self._id))

    def peer(self) -> str:
        return str(self._frontend.peer(self._id))


class _Resume(collections.abc.Coroutine):  # type: ignore[type-arg]
    """Carries on, inside a Task, a coroutine that was stepped by hand and is ``waiting`` on a
    future. The Task's first step hands it that future; anything thrown in, even before that
    first step (a call cancelled at once), reaches the coroutine where it waits."""

    __slots__ = ("_coro", "_waiting", "_started")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            waiting, self._waiting = self._waiting, None
            return waiting
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:  # type: ignore[override]
        if not self._started:
            self._started = True
            waiting, self._waiting = self._waiting, None
            if isinstance(typ, asyncio.CancelledError) and isinstance(waiting, asyncio.Future) and waiting.cancel():
                # Cancelled before the Task's first step: cancel what the coroutine waits on and
                # let it see that, as a Task cancelling it would have (its handlers rely on it).
                return waiting
        return self._coro.throw(typ) if val is None and tb is None else self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self.send(None)


class _Requests:
    """The request stream of one call, read from grpc++ a message at a time."""

    def __init__(self, frontend: Any, call_id: int, parse: Callable[[bytes], Any] | None) -> None:
        self._frontend = frontend
        self._id = call_id
        self._parse = parse
        self._messages: collections.deque[bytes | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._reading = True  # grpc++ reads the first message by itself
        self._ended = False

    def deliver(self, payload: bytes | None) -> None:
        self._reading = False
        self._messages.append(payload)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        while not self._messages:
            if self._ended:
                raise StopAsyncIteration
            if not self._reading:
                self._reading = True
                self._frontend.read(self._id)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        payload = self._messages.popleft()
        if payload is None:
            self._ended = True
            raise StopAsyncIteration
        return payload if self._parse is None else self._parse(payload)


class _Stream:
    """A call whose requests or responses stream: a Task, and the flow of its writes."""

    def __init__(self, requests: _Requests) -> None:
        self.requests = requests
        self.task: asyncio.Task[None] | None = None
        self.drained: asyncio.Future[None] | None = None  # resolved by grpc++'s WRITTEN event

    def written(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class NativeServer:
    """grpc.aio.Server's start/stop around grpc++; the handlers are grpc_service's."""

    def __init__(
        self,
        handlers: dict[str, dict[str, grpc.RpcMethodHandler]],
        address: str,
        max_message_bytes: int,
        channel_arguments: list[tuple[str, int]],
        tls: TlsEndpoint | None = None,
    ) -> None:
        """``tls``: the port serves TLS only, with the endpoint's certificates (tls.py), which
        grpc++ reads from the endpoint's own copies and reads again after a reload."""
        if _native_grpc is None:
            raise RuntimeError(UNAVAILABLE_REASON)
        self._handlers = {
            f"/{service}/{method}": handler
            for service, methods in handlers.items()
            for method, handler in methods.items()
        }
        sizes = ("grpc.max_receive_message_length", "grpc.max_send_message_length")
        args = [(k, int(v)) for k, v in channel_arguments if k not in sizes]
        identity, root = tls.native_files() if tls is not None else ("", "")
        mutual = tls is not None and tls.files.mutual
        try:
            self._frontend = _native_grpc.Frontend(
                address, args, max_message_bytes, max_message_bytes, identity, root, mutual, TLS_REFRESH_S
            )
        except RuntimeError as e:
            raise OSError(str(e)) from None
        self.port: int = self._frontend.port
        self._calls: dict[int, Any] = {}  # a unary call's Task, or a _Stream
        self._loop: asyncio.AbstractEventLoop | None = None

    def calls_in_flight(self) -> int:
        """Calls grpc++ has handed over that Python has not ended yet."""
        return int(self._frontend.active())

    def inference_calls_in_flight(self) -> int:
        """Those of them that are inference calls (ModelInfer, ModelStreamInfer): the probe of
        scheduling/load.py, for which a health or statistics call is no contention."""
        return int(self._frontend.active_inference())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._frontend.fd, self._on_events)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let calls in flight finish for ``grace`` seconds, cancel the rest."""
        await asyncio.to_thread(self._frontend.shutdown, grace or 0.0)
        await asyncio.to_thread(self._frontend.wait)
        if self._loop is not None:
            self._loop.remove_reader(self._frontend.fd)

    def _on_events(self) -> None:
        frontend = self._frontend
        calls = self._calls
        for kind, call_id, method, payload, deadline, waited in frontend.drain():
            if method is not None:
                try:
                    self._begin(call_id, method, payload, deadline, waited)
                except Exception as e:  # a fault here must not lose the other events of the drain
                    calls.pop(call_id, None)
                    frontend.finish(call_id, _INTERNAL, internal_error(e, f"gRPC {method}"))
                continue
            call = calls.get(call_id)
            if call is None:
                continue  # already answered
            if kind == _native_grpc.CANCELLED:
                task = call.task if isinstance(call, _Stream) else call
                if task is not None:
                    task.cancel()
            elif kind == _native_grpc.WRITTEN:
                call.written()
            elif isinstance(call, _Stream):
                call.requests.deliver(payload)

    def _begin(
        self,
        call_id: int,
        method: str,
        payload: bytes | None,
        deadline: float | None,
        waited: tuple[int, int] | None = None,
    ) -> None:
        handler = self._handlers.get(method)
        frontend = self._frontend
        if handler is None:
            frontend.finish(call_id, _UNIMPLEMENTED, "Method not found!")
            return
        context = NativeContext(frontend, call_id, deadline, waited)
        parse = handler.request_deserializer
        if handler.request_streaming or handler.response_streaming:
            self._begin_stream(call_id, handler, context, payload)
            return
        if payload is None:
            frontend.finish(call_id, _INTERNAL, "the call carried no request message")
            return
        coro = handler.unary_unary(payload if parse is None else parse(payload), context)
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            self._answer(call_id, handler.response_serializer, stop.value)
            return
        except BaseException as e:  # noqa: BLE001 - answered, like a Task's exception
            self._fail(call_id, e)
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            return
        assert self._loop is not None
        task = self._loop.create_task(_Resume(coro, waiting))
        self._calls[call_id] = task
        task.add_done_callback(functools.partial(self._unary_done, call_id, handler.response_serializer))

    def _unary_done(self, call_id: int, serialize: Callable[[Any], bytes] | None, task: asyncio.Task[Any]) -> None:
        self._calls.pop(call_id, None)
        if task.cancelled():
            self._frontend.finish(call_id, _CANCELLED, "Cancelled")
            return
        error = task.exception()
        if error is not None:
            self._fail(call_id, error)
        else:
            self._answer(call_id, serialize, task.result())

    def _answer(self, call_id: int, serialize: Callable[[Any], bytes] | None, response: Any) -> None:
        if type(response) is TracedReply:
            try:
                self._frontend.reply(call_id, response)
            finally:
                response.trace.sent(response.answered, time.monotonic_ns())
            return
        try:
            data = response if serialize is None else serialize(response)
        except Exception as e:  # noqa: BLE001
            self._fail(call_id, e)
            return
        self._frontend.reply(call_id, data)

    def _fail(self, call_id: int, error: BaseException) -> None:
        if isinstance(error, _Abort):
            self._frontend.finish(call_id, error.code, error.details)
        elif isinstance(error, asyncio.CancelledError):
            self._frontend.finish(call_id, _CANCELLED, "Cancelled")
        else:
            self._frontend.finish(call_id, _INTERNAL, internal_error(error, "gRPC call"))

    def _begin_stream(self, call_id: int, handler: Any, context: NativeContext, first: bytes | None) -> None:
        requests = _Requests(self._frontend, call_id, handler.request_deserializer)
        requests.deliver(first)
        stream = _Stream(requests)
        self._calls[call_id] = stream
        assert self._loop is not None
        stream.task = self._loop.create_task(self._serve_stream(call_id, handler, context, stream))
        stream.task.add_done_callback(functools.partial(self._stream_done, call_id))

    def _stream_done(self, call_id: int, task: asyncio.Task[None]) -> None:
        # A Task cancelled before its first step never ran its body: the call still needs its
        # end (after one already sent, finish does nothing).
        self._calls.pop(call_id, None)
        self._frontend.finish(call_id, _CANCELLED, "Cancelled")

    async def _serve_stream(self, call_id: int, handler: Any, context: NativeContext, stream: _Stream) -> None:
        frontend = self._frontend
        try:
            if handler.request_streaming:
                behavior = handler.stream_stream or handler.stream_unary
                result = behavior(stream.requests, context)
            else:
                request = await stream.requests.__anext__()
                behavior = handler.unary_stream or handler.unary_unary
                result = behavior(request, context)
            serialize = handler.response_serializer
            if inspect.isasyncgen(result):
                await self._write_all(call_id, result, serialize, stream)
            else:
                response = await result
                if response is not None:
                    frontend.write(call_id, response if serialize is None else serialize(response))
            frontend.finish(call_id, _OK, "")
        except StopAsyncIteration:
            frontend.finish(call_id, _INTERNAL, "the call carried no request message")
        except BaseException as e:  # noqa: BLE001 - every end answers the call
            self._fail(call_id, e)
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise

    async def _write_all(
        self, call_id: int, responses: AsyncIterator[Any], serialize: Callable[[Any], bytes] | None, stream: _Stream
    ) -> None:
        frontend = self._frontend
        async with contextlib.aclosing(responses):  # type: ignore[type-var]
            async for response in responses:
                if isinstance(response, WriteBatch):  # messages that came together: queued in one call
                    queued = frontend.write_many(
                        call_id, response if serialize is None else list(map(serialize, response))
                    )
                else:
                    queued = frontend.write(call_id, response if serialize is None else serialize(response))
                if queued >= STREAM_WINDOW:
                    stream.drained = asyncio.get_running_loop().create_future()
                    if frontend.notify_written(call_id, STREAM_WINDOW):
                        await stream.drained


class FrontendRefused(Exception):
    """--grpc-frontend native asked for where it cannot serve; the server does not start."""


def choose_grpc_frontend(wanted: str) -> str:
    """``native`` or ``aio`` for ``--grpc-frontend``: auto takes grpc++ where it is built."""
    if wanted == "aio":
        return "aio"
    if wanted == "native":
        if _native_grpc is None:
            raise FrontendRefused(
                f"--grpc-frontend native: {UNAVAILABLE_REASON}; install grpc++ (Debian: libgrpc++-dev) "
                "and reinstall inferd, or use --grpc-frontend aio"
            )
        return "native"
    if _native_grpc is None:
        log.info("gRPC: grpc.aio front end (%s)", UNAVAILABLE_REASON)
        return "aio"
    log.info("gRPC: grpc++ front end (%s)", _native_grpc.GRPC_VERSION)
    return "native"
