"""The fuzz suite (perf/fuzz.py), shortened: a few thousand malformed requests per transport
against a real ``inferd serve``; none may crash or hang the server or get an internal error,
and the server must keep answering valid requests right with its memory in bounds. The full
run is ``make fuzz`` (100,000 per transport)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from inferd.perf.fuzz import run


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's RSS from /proc")
@pytest.mark.timeout(120)
def test_fuzz_short() -> None:
    report = asyncio.run(run(requests=2500, seed=20261207, batch=1250))
    assert report.ok, "\n".join(report.lines())
    assert all(t.requests == 2500 for t in report.transports.values())
