"""Multi-process load (``--processes N``): when one Python event loop cannot generate the load,
N child processes each run a :class:`LoadGenerator` with its own connection, and the parent
only measures. Concurrency and rate are split across children; their records use the same
monotonic clock, so the parent's windows merge them directly.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .inputs import InputError, ModelInfo
from .loadgen import LoadGenerator, Record
from .transport import make_transport


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (earlier parts get the extra)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def install_event_loop(kind: str) -> str:
    """Use uvloop when asked (or when "auto" and it is installed); returns the loop used."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
        except ImportError:
            if kind == "uvloop":
                raise InputError("--event-loop uvloop: uvloop is not installed") from None
    return "asyncio"


def _child(
    conn: Connection,
    protocol: str,
    url: str,
    streaming: bool,
    model: ModelInfo,
    requests: Sequence[Mapping[str, np.ndarray]],
    loop_kind: str,
) -> None:
    install_event_loop(loop_kind)
    try:
        asyncio.run(_child_main(conn, protocol, url, streaming, model, requests))
    except KeyboardInterrupt:
        pass


async def _child_main(
    conn: Connection,
    protocol: str,
    url: str,
    streaming: bool,
    model: ModelInfo,
    requests: Sequence[Mapping[str, np.ndarray]],
) -> None:
    transport = make_transport(protocol, url, streaming)
    transport.prepare(model, requests)
    gen = LoadGenerator(transport)
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except EOFError:  # the parent went away
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("exit",))

    loop.add_reader(conn.fileno(), readable)
    # uvloop makes a watched fd non-blocking, and the pipe's one fd also sends: a large
    # "records" reply would then fail with BlockingIOError once the pipe buffer is full.
    os.set_blocking(conn.fileno(), True)
    conn.send(("ready",))
    try:
        while True:
            cmd, *args = await inbox.get()
            if cmd == "concurrency":
                if args[0] > 0:
                    await gen.start_concurrency(args[0])
                conn.send(("ok",))
            elif cmd == "rate":
                await gen.start_rate(*args)
                conn.send(("ok",))
            elif cmd == "collect":
                records, cpu = await gen.collect(args[0])
                conn.send(("records", np.array(records, dtype=np.int64).reshape(-1, 6).tobytes(), cpu))
            elif cmd == "outage":
                conn.send(("outage", await gen.outage() or ""))
            elif cmd == "failing":
                conn.send(("failing", await gen.failing()))
            elif cmd == "stop":
                await gen.stop()
                conn.send(("stopped", gen.sent, gen.failed, gen.last_error))
            elif cmd == "exit":
                break
    finally:
        loop.remove_reader(conn.fileno())
        await gen.stop()
        await transport.close()


class ProcessLoad:
    """The same interface as :class:`LoadGenerator`, backed by child processes."""

    def __init__(
        self,
        processes: int,
        protocol: str,
        url: str,
        streaming: bool,
        model: ModelInfo,
        requests: Sequence[Mapping[str, np.ndarray]],
        loop_kind: str = "auto",
    ) -> None:
        self.n = processes
        self._args = (protocol, url, streaming, model, list(requests), loop_kind)
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self.sent = 0
        self.failed = 0
        self.last_error = ""

    async def open(self) -> None:
        ctx = mp.get_context("spawn")  # no inherited event loop or gRPC state
        for _ in range(self.n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(child, *self._args), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        await self._all(None)

    async def _ask(self, conn: Connection, message: tuple[Any, ...] | None) -> tuple[Any, ...]:
        if message is not None:
            conn.send(message)
        reply: tuple[Any, ...] = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        return reply

    async def _all(self, message: tuple[Any, ...] | None) -> list[tuple[Any, ...]]:
        return list(await asyncio.gather(*(self._ask(c, message) for c in self._conns)))

    async def start_concurrency(self, concurrency: int) -> None:
        await asyncio.gather(
            *(self._ask(c, ("concurrency", n)) for c, n in zip(self._conns, split(concurrency, self.n)))
        )

    async def start_rate(self, rate: float, distribution: str = "constant", seed: int = 0) -> None:
        await asyncio.gather(
            *(self._ask(c, ("rate", rate / self.n, distribution, seed + i)) for i, c in enumerate(self._conns))
        )

    async def stop(self) -> None:
        sent = failed = 0
        for _, s, f, err in await self._all(("stop",)):
            sent, failed = sent + s, failed + f
            self.last_error = err or self.last_error
        self.sent, self.failed = sent, failed

    async def outage(self) -> str | None:
        """The first child's error once that child counts the server as gone, else None."""
        errors = [error for _, error in await self._all(("outage",)) if error]
        return errors[0] if errors else None

    async def failing(self) -> bool:
        return any(failing for _, failing in await self._all(("failing",)))

    async def collect(self, until_ns: int) -> tuple[list[Record], float]:
        records: list[Record] = []
        cpu = 0.0
        for _, data, fraction in await self._all(("collect", until_ns)):
            records.extend(Record(*map(int, row)) for row in np.frombuffer(data, dtype=np.int64).reshape(-1, 6))
            cpu = max(cpu, fraction)
        return records, cpu

    async def close(self) -> None:
        for c in self._conns:
            try:
                c.send(("exit",))
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            await asyncio.get_running_loop().run_in_executor(None, p.join, 10)
            if p.is_alive():
                p.terminate()
        self._conns, self._procs = [], []
