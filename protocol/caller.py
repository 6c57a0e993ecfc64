"""How a model calls other models in-process: an ensemble's steps, a Python model's BLS requests.

The server implements ``ModelCaller`` over the request path its front ends use, so a call meets
the callee's own validation, queue and batcher, and injects it when a model loads. Schedulers
and backends depend on this interface only, never on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from .errors import InvalidArgument
from .types import InferRequest, InferResponse


class ModelCaller(Protocol):
    """Calls run on the server's event loop."""

    async def infer(self, request: InferRequest) -> InferResponse:
        """Exactly one response (refused for decoupled models)."""
        ...

    def infer_stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """Every response of the request: one for ordinary models, 0..N for decoupled ones
        (``InferenceCore.infer_stream`` says what ``final`` and ``error`` mean there)."""
        ...


@dataclass(frozen=True)
class ThreadCaller:
    """A ``ModelCaller`` for code on other threads than the event loop's (a backend's
    instance threads): each call is handed to ``loop``, the loop the caller runs on."""

    caller: ModelCaller
    loop: asyncio.AbstractEventLoop

    def submit(self, request: InferRequest) -> Future[InferResponse]:
        return asyncio.run_coroutine_threadsafe(self.caller.infer(request), self.loop)

    def submit_stream(self, request: InferRequest) -> Future[list[InferResponse]]:
        return asyncio.run_coroutine_threadsafe(_collect(self.caller, request), self.loop)

    def infer(self, request: InferRequest, timeout: float | None = None) -> InferResponse:
        """Call and wait. Never from the loop's own thread: waiting there would wait forever."""
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            raise InvalidArgument(
                f"model '{request.model_name}' was called from a model that runs on the event loop "
                '(parameter inline_execution: "true"); a model that calls other models needs '
                'inline_execution "auto" or "false"'
            )
        return self.submit(request).result(timeout)


async def _collect(caller: ModelCaller, request: InferRequest) -> list[InferResponse]:
    return [r async for r in caller.infer_stream(request)]
