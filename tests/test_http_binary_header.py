"""HTTP responses whose outputs are all binary reuse their JSON header (http_convert._binary):
the bytes must be the general path's, for every layout, and anything else takes that path."""

from __future__ import annotations

import numpy as np
from inferd.protocol.types import InferResponse
from inferd.server.frontends import http_convert as conv


def _both(response: InferResponse, fmt: conv.OutputFormat) -> tuple[tuple[bytes, int | None], tuple[bytes, int | None]]:
    return conv.response_to_http(response, fmt), conv._response_to_http(response, fmt)


def test_cached_headers_equal_the_general_path() -> None:
    fmt = conv.OutputFormat(default_binary=True)
    rng = np.random.default_rng(0)
    layouts = [
        {"OUT": rng.random(4, dtype=np.float32)},
        {"OUT": rng.random(5, dtype=np.float32)},  # another shape: another header
        {"A": np.arange(6, dtype=np.int64).reshape(2, 3), "B": np.ones((1,), np.float16)},
        {"A": np.arange(6, dtype=np.int32).reshape(3, 2), "B": np.zeros((0, 4), np.float64)},
    ]
    for outputs in layouts * 2:  # the second time from the cache
        for version in ("1", "2"):
            cached, general = _both(InferResponse("m", version, outputs), fmt)
            assert cached == general


def test_other_responses_take_the_general_path() -> None:
    a = np.arange(3, dtype=np.float32)
    mixed = conv.OutputFormat(default_binary=True, explicit={"J": False})
    cases = [
        (InferResponse("m", "1", {"OUT": a, "J": a}), mixed),
        (InferResponse("m", "1", {"OUT": np.array([b"x"], dtype=object)}), conv.OutputFormat(True)),
        (InferResponse("m", "1", {"OUT": a}, "request-7"), conv.OutputFormat(True)),
        (InferResponse("m", "1", {"OUT": a}, "", {"p": 1}), conv.OutputFormat(True)),
    ]
    for response, fmt in cases:
        cached, general = _both(response, fmt)
        assert cached == general
