"""Helpers for the rollout tests: tiny Python models whose answer tells which version served
(OUTPUT0 = INPUT0 + the version's constant), one that fails on purpose, load threads, and the
traffic API over HTTP."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

SIZE = 4
MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

CONST = {const!r}
FAIL_SHARE = {fail!r}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if FAIL_SHARE and float(np.abs(x).sum() * 7919 % 1.0) < FAIL_SHARE:
                raise RuntimeError("this version fails on purpose")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x + CONST).astype(np.float32))]))
        return responses
"""


def config(name: str, extra: str = "") -> str:
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
        f"version_policy {{ all {{ }} }}\n{extra}"
    )


def write_model(
    repo: Path, name: str, versions: dict[int, float], extra: str = "", fail: dict[int, float] | None = None
) -> None:
    """A model whose version v adds ``versions[v]``; ``fail[v]`` is the share of requests it fails."""
    folder = repo / name
    for v, const in versions.items():
        (folder / str(v)).mkdir(parents=True, exist_ok=True)
        (folder / str(v) / "model.py").write_text(MODEL.format(const=const, fail=(fail or {}).get(v, 0.0)))
    (folder / "config.pbtxt").write_text(config(name, extra))


def traffic_param(value: str) -> str:
    return f'parameters {{ key: "traffic" value: {{ string_value: "{value}" }} }}\n'


def infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray | None = None, **params: Any) -> float:
    """One request; returns the constant of the version that answered."""
    data = np.random.default_rng().random((1, SIZE), dtype=np.float32) if x is None else x
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer(model, [inp], parameters=params or None)
    delta = result.as_numpy("OUTPUT0") - data
    return round(float(delta.flat[0]), 3)


@dataclass
class Tally:
    answers: Counter[float] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    order: list[tuple[float, float]] = field(default_factory=list)  # (time sent, const)


@contextmanager
def load(url: str, model: str, clients: int = 3, tally: Tally | None = None, rows: int = 1) -> Iterator[Tally]:
    """Threads sending back-to-back requests that name no version until the block ends."""
    tally = tally or Tally()
    stop = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        client = grpcclient.InferenceServerClient(url)
        rng = np.random.default_rng()
        try:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    const = infer(client, model, rng.random((rows, SIZE), dtype=np.float32))
                except Exception as e:
                    with lock:
                        tally.errors.append(str(e))
                    continue
                with lock:
                    tally.answers[const] += 1
                    tally.order.append((sent, const))
        finally:
            client.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield tally
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def traffic(http_url: str, model: str, path: str = "", body: Any = None) -> httpx.Response:
    url = f"http://{http_url}/v2/models/{model}/traffic{path}"
    if body is None and not path:
        return httpx.get(url, timeout=10)
    return httpx.post(url, json=body if body is not None else {}, timeout=10)


def wait_until(condition: Any, timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.05)
