"""The response cache (server/cache.py, ``--cache-config local,size=N``): hits and misses over
tritonclient's gRPC and HTTP clients with statistics and metrics read back exactly, what the
key covers (one flipped byte, the requested outputs, BYTES elements, parameters), LRU eviction
by bytes, entries dropped with their version, single-flight for concurrent identical requests,
the models refused at load, a model asking for a cache the server does not have, and the
flag's parse errors."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.model_spec import model_spec
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.protocol.types import InferRequest
from inferd.server import cli
from inferd.server.cache import ENTRY_OVERHEAD_BYTES, ResponseCache, entry_bytes, request_digest, version_cache
from inferd.server.scheduling.work import Work
from inferd.server.stats import ModelStats
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, string_identity_model, write

CACHE = "response_cache { enable: true }\n"
# Sleeps 2 ms per request (0.5 s when X[0, 0] == 99, to hold identical requests together);
# RUNS is how many requests this instance has executed, so an answer from the cache shows
# an older count than a fresh run would.
SLOW_MODEL = """\
import time

import numpy as np

import inferd.backends.python_api as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.runs = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            self.runs += 1
            time.sleep(0.5 if x[0, 0] == 99 else 0.002)
            runs = np.full((x.shape[0], 1), self.runs, dtype=np.int64)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("Y", (x * 2).astype(np.float32)), pb_utils.Tensor("RUNS", runs)]
                )
            )
        return responses
"""
SLOW_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "RUNS" data_type: TYPE_INT64 dims: [ 1 ] }} ]
{extra}"""


def add_sub_config(name: str, extra: str = CACHE) -> str:
    return bundled.ADD_SUB_CONFIG.replace('name: "add_sub"', f'name: "{name}"') + extra


def write_slow(repo: Path, name: str, extra: str = CACHE) -> None:
    folder = write(repo, name, SLOW_CONFIG.format(name=name, extra=extra), None)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(SLOW_MODEL)


STRINGS_CONFIG = (
    """\
name: "strings_cached"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 2 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 2 ] } ]
"""
    + CACHE
)


ENSEMBLE_CONFIG = """\
name: "ensemble_over_cached"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling { step [ {
  model_name: "add_cached" model_version: -1
  input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
  output_map { key: "OUTPUT0" value: "SUM" }
} ] }
"""


def build(repo: Path) -> Path:
    write(repo, "add_cached", add_sub_config("add_cached"), bundled.add_sub_model())
    write(repo, "ensemble_over_cached", ENSEMBLE_CONFIG, None)
    (repo / "ensemble_over_cached" / "1").mkdir()
    write(repo, "add_plain", add_sub_config("add_plain", ""), bundled.add_sub_model())
    write(repo, "strings_cached", STRINGS_CONFIG, string_identity_model())
    write_slow(repo, "slow_cached")
    write(
        repo,
        "decoupled_cached",
        add_sub_config("decoupled_cached", CACHE + "model_transaction_policy { decoupled: true }\n"),
        bundled.add_sub_model(),
    )
    write(
        repo,
        "sequence_cached",
        add_sub_config("sequence_cached", CACHE + "sequence_batching { }\n"),
        bundled.add_sub_model(),
    )
    return repo


MODELS = [
    "ensemble_over_cached",
    "add_cached",
    "add_plain",
    "strings_cached",
    "slow_cached",
    "decoupled_cached",
    "sequence_cached",
]


def cached_server(repo: Path, size: int = 1 << 20, models: list[str] = MODELS) -> RunningServer:
    settings = test_settings(repo, model_control_mode="explicit", load_models=models, response_cache_bytes=size)
    return start_server(settings)


@pytest.fixture
def own(tmp_path: Path) -> Iterator[RunningServer]:
    running = cached_server(build(tmp_path))
    yield running
    running.stop()


def scrape(running: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by the name it has on the wire (the parser adds "_total" to the samples of
    counters typed without it, as Triton's are)."""
    text = httpx.get(f"http://{running.metrics_url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        triton_style = family.type == "counter" and f"# TYPE {family.name} counter" in text
        for s in family.samples:
            name = s.name.removesuffix("_total") if triton_style else s.name
            out[(name, tuple(sorted(s.labels.items())))] = s.value
    return out


def ids(model: str) -> tuple[tuple[str, str], ...]:
    return (("model", model), ("version", "1"))


def pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 16), dtype=np.float32), rng.standard_normal((1, 16), dtype=np.float32)


def grpc_add(client: grpcclient.InferenceServerClient, model: str, a: np.ndarray, b: np.ndarray, outputs=None):  # type: ignore[no-untyped-def]
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
        grpcclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    wanted = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, inputs, outputs=wanted)


def http_add(client: httpclient.InferenceServerClient, model: str, a: np.ndarray, b: np.ndarray):  # type: ignore[no-untyped-def]
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
        httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    return client.infer(model, inputs)


def grpc_stats(client: grpcclient.InferenceServerClient, model: str) -> dict:  # type: ignore[type-arg]
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def count(stats: dict, key: str) -> int:  # type: ignore[type-arg]
    return int(stats["inference_stats"].get(key, {}).get("count", 0))


# --- hits and misses over both protocols -------------------------------------------------------


def test_hits_and_misses_over_grpc_and_http_with_statistics_and_metrics(own: RunningServer) -> None:
    g = grpcclient.InferenceServerClient(own.grpc_url)
    h = httpclient.InferenceServerClient(own.http_url)
    a, b = pair(1)
    c, d = pair(2)
    first = grpc_add(g, "add_cached", a, b)  # miss
    np.testing.assert_allclose(first.as_numpy("OUTPUT0"), a + b)
    for _ in range(3):  # hits, over both protocols: the key is the request, not its wire form
        np.testing.assert_array_equal(grpc_add(g, "add_cached", a, b).as_numpy("OUTPUT1"), a - b)
        np.testing.assert_array_equal(http_add(h, "add_cached", a, b).as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(http_add(h, "add_cached", c, d).as_numpy("OUTPUT0"), c + d)  # miss
    grpc_add(g, "add_plain", a, b)
    grpc_add(g, "add_plain", a, b)

    # 8 requests: 2 misses (executed), 6 hits (answered without running the model).
    for stats in (grpc_stats(g, "add_cached"), h.get_inference_statistics("add_cached")["model_stats"][0]):
        s = stats["inference_stats"]
        assert (count(stats, "success"), count(stats, "queue")) == (8, 8)  # hits included, as in Triton
        assert (count(stats, "cache_hit"), count(stats, "cache_miss")) == (6, 2)
        assert (count(stats, "compute_infer"), count(stats, "compute_input")) == (2, 2)  # hits excluded
        assert (int(stats["inference_count"]), int(stats["execution_count"])) == (2, 2)
        assert int(s["cache_hit"]["ns"]) > 0 and int(s["cache_miss"]["ns"]) > 0
    plain = grpc_stats(g, "add_plain")
    assert (count(plain, "success"), count(plain, "cache_hit"), count(plain, "cache_miss")) == (2, 0, 0)
    assert int(plain["execution_count"]) == 2

    m = scrape(own)
    s = grpc_stats(g, "add_cached")["inference_stats"]
    assert m[("nv_cache_num_hits_per_model", ids("add_cached"))] == 6
    assert m[("nv_cache_num_misses_per_model", ids("add_cached"))] == 2
    assert m[("nv_cache_hit_duration_per_model", ids("add_cached"))] == int(s["cache_hit"]["ns"]) // 1000
    assert m[("nv_cache_miss_duration_per_model", ids("add_cached"))] == int(s["cache_miss"]["ns"]) // 1000
    assert m[("nv_inference_request_success", ids("add_cached"))] == 8
    assert m[("nv_inference_count", ids("add_cached"))] == 2
    assert m[("nv_inference_exec_count", ids("add_cached"))] == 2
    assert m[("nv_inference_request_duration_us", ids("add_cached"))] == int(s["success"]["ns"]) // 1000
    assert ("nv_cache_num_hits_per_model", ids("add_plain")) not in m  # only models using the cache
    # Server-wide: only add_cached has been asked, so its figures are the server's.
    assert m[("nv_cache_num_entries", ())] == 2
    assert m[("nv_cache_num_hits", ())] == 6 and m[("nv_cache_num_misses", ())] == 2
    assert m[("nv_cache_num_lookups", ())] == 8 and m[("nv_cache_num_evictions", ())] == 0
    expected_used = 2 * entry_bytes({"OUTPUT0": a, "OUTPUT1": b})
    assert m[("nv_cache_util", ())] == pytest.approx(expected_used / (1 << 20))
    assert ("nv_cache_lookup_duration", ()) in m and ("nv_cache_insertion_duration", ()) in m


def test_one_flipped_byte_and_other_outputs_are_misses(own: RunningServer) -> None:
    g = grpcclient.InferenceServerClient(own.grpc_url)
    a, b = pair(3)
    grpc_add(g, "add_cached", a, b)
    flipped = a.copy()
    flipped.reshape(-1).view(np.uint8)[37] ^= 0x01  # one bit of one byte of one input
    out = grpc_add(g, "add_cached", flipped, b)
    np.testing.assert_allclose(out.as_numpy("OUTPUT0"), flipped + b)
    assert not np.array_equal(out.as_numpy("OUTPUT0"), a + b)
    only1 = grpc_add(g, "add_cached", a, b, outputs=["OUTPUT1"])  # other requested outputs
    assert only1.as_numpy("OUTPUT0") is None
    both_reversed = grpc_add(g, "add_cached", a, b, outputs=["OUTPUT1", "OUTPUT0"])  # order matters too
    np.testing.assert_allclose(both_reversed.as_numpy("OUTPUT0"), a + b)
    swapped = grpc_add(g, "add_cached", b, a)  # the same bytes under the other input's name
    np.testing.assert_allclose(swapped.as_numpy("OUTPUT1"), b - a)
    grpc_add(g, "add_cached", a, b, outputs=["OUTPUT1"])  # now a hit
    stats = grpc_stats(g, "add_cached")
    assert (count(stats, "cache_miss"), count(stats, "cache_hit")) == (5, 1)


def test_bytes_inputs_are_keyed_by_their_bytes(own: RunningServer) -> None:
    g = grpcclient.InferenceServerClient(own.grpc_url)

    def send(values: list[bytes]) -> np.ndarray:
        x = grpcclient.InferInput("INPUT0", [1, 2], "BYTES")
        x.set_data_from_numpy(np.array([values], dtype=object))
        return g.infer("strings_cached", [x]).as_numpy("OUTPUT0")

    assert send([b"abc", b"de"]).tolist() == [[b"abc", b"de"]]
    assert send([b"abd", b"de"]).tolist() == [[b"abd", b"de"]]  # one byte: a miss
    assert send([b"ab", b"cde"]).tolist() == [[b"ab", b"cde"]]  # same bytes joined, other split
    assert send([b"abc", b"de"]).tolist() == [[b"abc", b"de"]]  # a hit
    stats = grpc_stats(g, "strings_cached")
    assert (count(stats, "cache_miss"), count(stats, "cache_hit")) == (3, 1)


def test_a_hit_does_not_run_the_model(own: RunningServer) -> None:
    """The model sleeps 2 ms and counts its runs: hits return the first run's count and add
    no execution; the model's RUNS only moves on a miss."""
    g = grpcclient.InferenceServerClient(own.grpc_url)

    def send(value: float) -> tuple[np.ndarray, int]:
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.full((1, 4), value, np.float32))
        out = g.infer("slow_cached", [x])
        return out.as_numpy("Y"), int(out.as_numpy("RUNS")[0, 0])

    y, runs = send(1.5)
    assert y.tolist() == [[3.0] * 4] and runs == 1
    for _ in range(20):
        again, runs = send(1.5)
        assert again.tolist() == y.tolist() and runs == 1
    assert send(2.5)[1] == 2  # a new input runs the model
    stats = grpc_stats(g, "slow_cached")
    assert int(stats["execution_count"]) == 2 and count(stats, "compute_infer") == 2
    assert (count(stats, "cache_hit"), count(stats, "cache_miss")) == (20, 2)
    # A hit's lookup costs far less than the model's 2 ms run.
    assert int(stats["inference_stats"]["cache_hit"]["ns"]) / 20 < 2_000_000


def test_concurrent_identical_requests_compute_once(own: RunningServer) -> None:
    """Eight identical requests while the first runs (0.5 s): one execution, seven hits."""
    g = grpcclient.InferenceServerClient(own.grpc_url)

    def send(_: int) -> tuple[list[list[float]], int]:
        client = grpcclient.InferenceServerClient(own.grpc_url)
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.full((1, 4), 99, np.float32))
        out = client.infer("slow_cached", [x])
        return out.as_numpy("Y").tolist(), int(out.as_numpy("RUNS")[0, 0])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(8)))
    assert results == [([[198.0] * 4], 1)] * 8
    stats = grpc_stats(g, "slow_cached")
    assert int(stats["execution_count"]) == 1
    assert (count(stats, "cache_miss"), count(stats, "cache_hit")) == (1, 7)


def test_ensemble_steps_are_answered_from_the_cache(own: RunningServer) -> None:
    """An ensemble's step takes its model's one request path: the step's model caches."""
    g = grpcclient.InferenceServerClient(own.grpc_url)
    a, b = pair(11)
    inputs = [grpcclient.InferInput("A", [1, 16], "FP32"), grpcclient.InferInput("B", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    for _ in range(3):
        np.testing.assert_allclose(g.infer("ensemble_over_cached", inputs).as_numpy("SUM"), a + b)
    grpc_add(g, "add_cached", a, b, outputs=["OUTPUT0"])  # a direct request with the step's key
    step = grpc_stats(g, "add_cached")
    assert (count(step, "cache_miss"), count(step, "cache_hit")) == (1, 3)
    assert int(step["execution_count"]) == 1
    assert count(grpc_stats(g, "ensemble_over_cached"), "success") == 3


# --- bounds, lifecycle, refusals ------------------------------------------------------------


def test_lru_eviction_by_bytes(tmp_path: Path) -> None:
    a, b = pair(0)
    per_entry = entry_bytes({"OUTPUT0": a, "OUTPUT1": b})
    assert per_entry == 2 * 16 * 4 + ENTRY_OVERHEAD_BYTES
    running = cached_server(build(tmp_path), size=3 * per_entry, models=["add_cached"])
    try:
        g = grpcclient.InferenceServerClient(running.grpc_url)
        requests = [pair(seed) for seed in range(4)]
        for i in range(3):
            grpc_add(g, "add_cached", *requests[i])  # entries 0, 1, 2: full
        grpc_add(g, "add_cached", *requests[0])  # a hit: 0 is now the most recently used
        grpc_add(g, "add_cached", *requests[3])  # evicts 1, the least recently used
        m = scrape(running)
        assert m[("nv_cache_num_entries", ())] == 3 and m[("nv_cache_num_evictions", ())] == 1
        assert m[("nv_cache_util", ())] == 1.0
        grpc_add(g, "add_cached", *requests[0])  # still there
        grpc_add(g, "add_cached", *requests[2])  # still there
        out = grpc_add(g, "add_cached", *requests[1])  # evicted: runs again (and evicts 3)
        np.testing.assert_allclose(out.as_numpy("OUTPUT0"), requests[1][0] + requests[1][1])
        stats = grpc_stats(g, "add_cached")
        assert (count(stats, "cache_miss"), count(stats, "cache_hit")) == (5, 3)
        assert scrape(running)[("nv_cache_num_evictions", ())] == 2
    finally:
        running.stop()


def test_unloading_a_version_drops_its_entries(own: RunningServer) -> None:
    g = grpcclient.InferenceServerClient(own.grpc_url)
    a, b = pair(7)
    grpc_add(g, "add_cached", a, b)
    grpc_add(g, "add_cached", a, b)
    assert scrape(own)[("nv_cache_num_entries", ())] == 1
    g.unload_model("add_cached")
    deadline = time.monotonic() + 10
    while scrape(own)[("nv_cache_num_entries", ())] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape(own)[("nv_cache_num_entries", ())] == 0
    g.load_model("add_cached")
    grpc_add(g, "add_cached", a, b)  # the new load starts empty: a miss
    stats = grpc_stats(g, "add_cached")
    assert (count(stats, "cache_miss"), count(stats, "cache_hit")) == (1, 0)


def test_decoupled_and_sequence_models_are_refused_with_the_cache(own: RunningServer) -> None:
    g = grpcclient.InferenceServerClient(own.grpc_url)
    index = {m.name: m for m in g.get_model_repository_index().models}
    assert index["decoupled_cached"].state == "UNAVAILABLE" and "decoupled" in index["decoupled_cached"].reason
    assert index["sequence_cached"].state == "UNAVAILABLE" and "sequence" in index["sequence_cached"].reason
    assert index["add_cached"].state == "READY"


def test_the_refusals_word_it_as_triton() -> None:
    cache = ResponseCache(1024)
    decoupled = mc.ModelConfig(name="d", response_cache=mc.ModelResponseCache(enable=True))
    decoupled.model_transaction_policy.decoupled = True
    with pytest.raises(ModelLoadError, match="Response Cache does not currently support model 'd' with 'decoupled'"):
        version_cache(model_spec(decoupled), decoupled, cache, "model 'd' version 1")
    sequence = mc.ModelConfig(name="s", response_cache=mc.ModelResponseCache(enable=True))
    sequence.sequence_batching.SetInParent()
    with pytest.raises(ModelLoadError, match="'s' with sequence batching scheduler"):
        version_cache(model_spec(sequence), sequence, cache, "model 's' version 1")
    # Without response_cache they are none of the cache's business.
    decoupled.response_cache.enable = False
    assert version_cache(model_spec(decoupled), decoupled, cache, "model 'd' version 1") is None


def test_a_model_asking_for_the_cache_on_a_server_without_one_loads_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "add_cached", add_sub_config("add_cached"), bundled.add_sub_model())
    caplog.set_level(logging.WARNING, logger="inferd")
    running = start_server(test_settings(tmp_path, model_control_mode="explicit", load_models=["add_cached"]))
    try:
        g = grpcclient.InferenceServerClient(running.grpc_url)
        assert g.is_model_ready("add_cached")
        a, b = pair(9)
        grpc_add(g, "add_cached", a, b)
        grpc_add(g, "add_cached", a, b)
        stats = grpc_stats(g, "add_cached")
        assert int(stats["execution_count"]) == 2 and count(stats, "cache_hit") == 0
        assert not any(k[0].startswith("nv_cache") for k in scrape(running))
    finally:
        running.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("model 'add_cached' version 1" in w and "--cache-config" in w for w in warnings), warnings


# --- the key and the store, without a server --------------------------------------------------


def test_the_key_covers_parameters_but_not_scheduling_ones() -> None:
    x = {"X": np.arange(4, dtype=np.float32)}
    base = request_digest(x, ["Y"], {})
    assert request_digest(x, ["Y"], {"priority": 1, "timeout": 100}) == base
    assert request_digest(x, ["Y"], {"temperature": 0.5}) != base
    assert request_digest(x, ["Y"], {"flag": True}) != request_digest(x, ["Y"], {"flag": 1})
    assert request_digest(x, ["Y"], {"flag": "1"}) != request_digest(x, ["Y"], {"flag": 1})
    assert request_digest({"X": x["X"].astype(np.int32)}, ["Y"], {}) != base  # dtype
    assert request_digest({"X": x["X"].reshape(2, 2)}, ["Y"], {}) != base  # shape
    assert request_digest({"X": x["X"][::-1].copy()[::-1]}, ["Y"], {}) == base  # a strided view: same bytes


def test_cached_outputs_are_read_only_copies() -> None:
    cache = ResponseCache(4096)
    y = np.arange(4, dtype=np.float32)
    assert cache.insert(1, b"k", {"Y": y}) is not None
    y[0] = 100  # the backend reusing its buffer changes nothing cached
    found = cache.lookup(1, b"k")
    assert found is not None and found["Y"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        found["Y"][0] = 5
    assert cache.insert(1, b"big", {"Y": np.zeros(4096, np.uint8)}) is None  # larger than the cache
    assert cache.drop(1) == 1 and len(cache) == 0 and cache.used == 0


async def test_requests_with_shared_memory_outputs_bypass_the_cache() -> None:
    """Neither answered from the cache nor stored: every one runs (and no statistics change)."""
    runs: list[int] = []

    async def submit(work: Work) -> dict[str, np.ndarray]:
        runs.append(1)
        return {"Y": work.inputs["X"] * 2}

    version = ResponseCache(4096).version("model 'm' version 1")
    stats = ModelStats("m", "1")
    x = np.arange(4, dtype=np.float32)
    for regions in (None, None, {"Y": memoryview(bytearray(16))}, {"Y": memoryview(bytearray(16))}):
        request = InferRequest("m", {"X": x}, output_regions=regions)
        work = Work({"X": x}, ["Y"], 1, time.monotonic_ns(), None)
        assert (await version.infer(request, ["Y"], work, stats, submit))["Y"].tolist() == [0, 2, 4, 6]
    assert len(runs) == 3  # the first plain request ran; the second hit; both shared-memory ones ran
    assert (stats.cache_miss.count, stats.cache_hit.count) == (1, 1)
    assert len(version.store) == 1


# --- the flag -------------------------------------------------------------------------------


def serve_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_serve_arguments(p)
    return p.parse_args(list(argv))


def test_the_flag_sets_the_cache_size() -> None:
    assert cli.settings_from_args(serve_args()).response_cache_bytes == 0
    assert cli.settings_from_args(serve_args("--cache-config", "local,size=1048576")).response_cache_bytes == 1048576
    assert cli.settings_from_args(serve_args("--cache-config=local,size=5")).response_cache_bytes == 5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis,size=100", "unknown cache 'redis': inferd has only the 'local' cache"),
        ("local,size=abc", "size must be a whole number of bytes, 1 or more, not 'abc'"),
        ("local,size=0", "size must be a whole number of bytes, 1 or more, not '0'"),
        ("local,size=-5", "not '-5'"),
        ("local,bytes=100", "the 'local' cache has no setting 'bytes'; it takes size=<bytes>"),
        ("size=100", "no cache specified"),
        ("local", "no cache specified"),
        ("local,size", "the format is <cache name>,<setting>=<value>"),
    ],
)
def test_the_flag_refuses_what_it_cannot_parse(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--cache-config", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--cache-config" in err and message in err
