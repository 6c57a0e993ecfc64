"""The HTTP vs gRPC benchmark script, run briefly against the test server."""

from __future__ import annotations

import pytest
from inferd.perf.bench_http_vs_grpc import main

from .conftest import RunningServer


def test_prints_a_row_per_protocol_and_concurrency(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--grpc-url",
            server.grpc_url,
            "--http-url",
            server.http_url,
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
            "--concurrency",
            "1",
            "2",
        ]
    )
    assert code == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        (m, c) for c in ("1", "2") for m in ("grpc", "http-json", "http-binary")
    ]
    for r in rows:
        assert int(r[6]) > 0 and int(r[7]) == 0  # requests measured, no errors


def test_refuses_other_than_loopback() -> None:
    with pytest.raises(SystemExit, match="loopback"):
        main(["--http-url", "10.1.2.3:8000", "--seconds", "0.1"])
