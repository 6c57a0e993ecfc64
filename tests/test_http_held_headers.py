"""One response, one send: uvicorn writes a response's headers and its body separately, and
HeldHeaders (http_connections.py) joins them when both come in one step of the loop."""

from __future__ import annotations

import asyncio

from inferd.server.frontends.http_connections import HeldHeaders


class Recorder:
    """What a transport was asked to do, in order (a real socket would hide the writes' bounds)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", b"".join(parts)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closed = True


async def _run(steps: list[str]) -> list[tuple[str, bytes]]:
    transport = Recorder()
    held = HeldHeaders(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    for step in steps:
        if step == "yield":
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        elif step == "close":
            held.close()
        else:
            held.write(step.encode())
    await asyncio.sleep(0)
    return transport.calls


def test_headers_and_body_in_one_step_are_one_write() -> None:
    assert asyncio.run(_run(["HEAD|", "body", "more"])) == [("write", b"HEAD|body"), ("write", b"more")]


def test_headers_alone_go_out_on_the_next_iteration() -> None:
    assert asyncio.run(_run(["HEAD|", "yield", "body"])) == [("write", b"HEAD|"), ("write", b"body")]


def test_a_large_body_goes_with_the_headers_as_two_buffers() -> None:
    body = "x" * (256 * 1024)
    assert asyncio.run(_run(["HEAD|", body])) == [("writelines", b"HEAD|" + body.encode())]


def test_close_writes_what_is_held_first() -> None:
    assert asyncio.run(_run(["HEAD|", "close"])) == [("write", b"HEAD|"), ("close", b"")]
