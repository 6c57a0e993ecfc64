"""System shared memory: a model that consumes a large input, fed over gRPC from a registered
system shared-memory region, over gRPC with the bytes in the request, and called in-process.

The model (ONNX, written on the fly) is the mean of each row over its non-batch axes, one FP32
per row out: its compute is a single pass over the input, so the data path dominates. Sizes:
``image`` (3 x 512 x 512 FP32, 3 MiB a row) and ``16MB`` (2^22 FP32, 16 MiB a row); ``4KB``
(1,024 FP32) is for smoke runs. Points: every size at ``--batch`` (1 and 8) and
``--concurrency`` (1 and 8 clients). Rows per point:

* ``grpc+shm``: inputs in a system shared-memory region registered with the server, outputs
  in one too; the request carries only the region's name, offset and size;
* ``grpc``: the same request with the input's bytes in ``raw_input_contents``;
* ``in-process``: onnxruntime running the same model file in this process on the server's CPU
  with one thread, the same batch back to back (no server, no copies): the ceiling. A server
  with one CPU cannot beat it whatever the clients, so 1 and 8 clients share it;
* ``in-process, input in /dev/shm``: the same, reading the batch from a POSIX shared-memory
  mapping as the server reads a client's region. numpy puts a large array on transparent huge
  pages (it asks with ``madvise``); a /dev/shm object gets them only where the kernel's
  ``shmem_enabled`` allows, which by default it does not. Where the input does not fit the
  CPU's caches this row can be far below the first: the part of the gap no server can close.

Load (``--load``): perf_analyzer where installed (``--shared-memory system`` for the shm rows:
it creates, fills and registers one region per input and output itself, shared by its
concurrent requests), else ``tritonclient``: a Python driver, one thread and one channel per
client, each with its own regions made by ``tritonclient.utils.shared_memory`` (8 clients x
batch 8 x 16 MiB = 1 GiB of /dev/shm). Every shared-memory object the benchmark or
perf_analyzer made is unregistered and unlinked at the end, also after Ctrl-C or a failure.

Each row has a server process of its own. Each round measures every point's server rows
back to back (each round starting one key later) after timing the in-process ceilings; tables
show medians over ``--rounds``. The servers (``--allow-client-shm true``, one onnxruntime
thread, no dynamic batching) and the ceilings run on CPU 0, the load on the other CPUs
(``--no-pin`` to share). Before the first round one request per size and server checks the
answer against numpy.

With ``--baseline-ref REF`` inferd as of REF serves beside the current one, and each point gets
a ``grpc+shm@REF`` row measured in the same rounds (shared memory only), so a change to the
shared-memory path is shown against its parent on the same machine.

Goal (issue 23), at 16 MB: with shared memory >= 3x the throughput without it, and >= 70% of
the in-process ceiling.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import baseline_ref, perf_analyzer
from .ceilings import ORT_ONE_THREAD, THREAD_ENV
from .harness import Bench, add_baseline_argument, comparison, exit_status, interleaved, median, module_main, ratio
from .points import Served
from .servers import ServerProcess, split_cpus, start_inferd
from .stats import percentile

SIZES: dict[str, tuple[int, ...]] = {"image": (3, 512, 512), "16MB": (1 << 22,), "4KB": (1024,)}
DEFAULT_SIZES = ["image", "16MB"]
GOAL_SIZE = "16MB"
INPUT, OUTPUT = "SHMBENCH_IN", "SHMBENCH_OUT"
# perf_analyzer names its shared-memory objects after the tensors; this finds them in /dev/shm.
PA_OBJECT_MARK = "shmbench"
SHM_DIR = Path("/dev/shm")
SHM, PLAIN, IN_PROCESS = "grpc+shm", "grpc", "in-process"
# The ceiling again, reading its input from a shared-memory mapping (shm_copy).
IN_PROCESS_SHM = "in-process, input in /dev/shm"
OPSET, IR_VERSION = 17, 8
GOAL_VS_PLAIN, GOAL_VS_CEILING = 3.0, 0.7
SEED = 23
# Without shared memory, points with more bytes than this in flight are measured in count windows.
COUNT_WINDOWS_BYTES = 64 << 20


def model_name(size: str) -> str:
    return "mean_" + size.lower()


def row_bytes(size: str) -> int:
    return int(np.prod(SIZES[size])) * 4


def _bytes(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n / 2**10:g} KiB"


def point_name(size: str, batch: int, concurrency: int) -> str:
    return f"{size} {concurrency} x {batch}"


# --- the model ------------------------------------------------------------------------------


def onnx_model(dims: Sequence[int]) -> bytes:
    """OUT[n, 0] = mean of IN[n, ...]: ReduceMean over the non-batch axes, then Unsqueeze."""
    import onnx
    from onnx import TensorProto, helper

    axes = list(range(1, len(dims) + 1))
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", [INPUT], ["mean"], axes=axes, keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "one"], [OUTPUT]),
        ],
        "mean",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *dims])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 1])],
        initializer=[helper.make_tensor("one", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="inferd")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_repository(root: Path, sizes: Sequence[str], max_batch: int) -> None:
    for size in sizes:
        name, dims = model_name(size), SIZES[size]
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(onnx_model(dims))
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
            f'input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }} ]\n'
            f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ 1 ] }} ]\n'
            "instance_group [ { count: 1 kind: KIND_CPU } ]\n" + ORT_ONE_THREAD
        )


def batch_data(size: str, batch: int) -> np.ndarray:
    """Seeded uniform [0, 1) rows: their means are near 0.5, so a float32 sum stays exact enough
    to check the server's answer against numpy's."""
    return np.random.default_rng(SEED).random((batch, *SIZES[size]), dtype=np.float32)


# --- the in-process ceiling ---------------------------------------------------------------


class Ceiling:
    """onnxruntime on the same model files with one thread, timed on the servers' CPUs (the
    calling thread's affinity is moved there while it runs; ORT with one intra-op thread runs
    on the calling thread)."""

    def __init__(self, repo: Path, sizes: Sequence[str], cpus: Sequence[int] | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.sessions = {
            s: ort.InferenceSession(
                str(repo / model_name(s) / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for s in sizes
        }
        self.cpus = cpus
        self.data: dict[tuple[str, int, bool], np.ndarray] = {}

    def measure(self, size: str, batch: int, seconds: float, on_shm: bool = False) -> Served:
        """``on_shm``: the batch copied into a POSIX shared-memory object of this process's own
        (mapped as the server maps a client's region), instead of numpy's array."""
        key = (size, batch, on_shm)
        x = self.data.get(key)
        if x is None:
            x = self.data[key] = shm_copy(batch_data(size, batch)) if on_shm else batch_data(size, batch)
        session = self.sessions[size]
        before = os.sched_getaffinity(0)
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        try:
            for _ in range(2):
                session.run([OUTPUT], {INPUT: x})
            lat: list[int] = []
            start = time.perf_counter_ns()
            end = start + int(seconds * 1e9)
            while (t0 := time.perf_counter_ns()) < end or len(lat) < 3:
                session.run([OUTPUT], {INPUT: x})
                lat.append(time.perf_counter_ns() - t0)
            elapsed = (time.perf_counter_ns() - start) / 1e9
        finally:
            os.sched_setaffinity(0, before)
        lat.sort()
        return Served(len(lat) * batch / elapsed, p50_us=percentile(lat, 50) / 1000, p99_us=percentile(lat, 99) / 1000)


def shm_copy(data: np.ndarray) -> np.ndarray:
    """``data`` in a fresh POSIX shared-memory object (unlinked at once; the mapping lives as
    long as the array): what the server reads from a client's region. numpy puts a large array
    on transparent huge pages where the kernel allows it (``madvise``); a /dev/shm object gets
    them only where ``shmem_enabled`` does, so the two can stream at different speeds."""
    import mmap

    path = SHM_DIR / f"inferd_bench_ceiling_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.unlink(path)
        os.ftruncate(fd, data.nbytes)
        mapping = mmap.mmap(fd, data.nbytes)
    finally:
        os.close(fd)
    copy = np.frombuffer(mapping, data.dtype).reshape(data.shape)
    copy[...] = data
    return copy


# --- shared-memory objects: made by this process or by perf_analyzer, all removed at the end -


class Regions:
    """Regions made with ``tritonclient.utils.shared_memory`` and registered with the server;
    ``close`` unregisters and destroys every one, whatever failed before."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.handles: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def create(self, label: str, byte_size: int, contents: np.ndarray | None = None) -> str:
        import tritonclient.utils.shared_memory as shm

        name = f"shmbench_{label}_{self.tag}"
        handle = shm.create_shared_memory_region(name, f"/inferd_{name}", byte_size)
        with self.lock:
            self.handles.append((name, handle))
        if contents is not None:
            shm.set_shared_memory_region(handle, [contents])
        self.client.register_system_shared_memory(name, f"/inferd_{name}", byte_size)
        return name

    def output(self, name: str, shape: Sequence[int]) -> np.ndarray:
        import tritonclient.utils.shared_memory as shm

        handle = dict(self.handles)[name]
        return np.asarray(shm.get_contents_as_numpy(handle, np.float32, list(shape)))

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        with self.lock:
            handles, self.handles = self.handles, []
        for name, handle in handles:
            try:
                self.client.unregister_system_shared_memory(name)
            except Exception as e:  # the server may be gone: the objects are still ours to remove
                print(f"# unregistering {name}: {e}", file=sys.stderr)
            shm.destroy_shared_memory_region(handle)
        self.client.close()


def _pa_objects() -> set[str]:
    try:
        return {p.name for p in SHM_DIR.iterdir() if PA_OBJECT_MARK in p.name.lower()}
    except OSError:
        return set()


@contextmanager
def removing_pa_objects() -> Iterator[None]:
    """perf_analyzer leaves its objects behind when it is killed or the server refuses them:
    unlink those (named after this benchmark's tensors) that were not there before."""
    before = _pa_objects()
    try:
        yield
    finally:
        for name in _pa_objects() - before:
            try:
                (SHM_DIR / name).unlink()
            except OSError:
                pass


# --- load ---------------------------------------------------------------------------------


def _infer_args(grpcclient: Any, batch: int, size: str, regions: Regions | None, label: str, data: np.ndarray) -> Any:
    """(inputs, outputs) for one client: in its own regions, or the bytes on the wire."""
    inp = grpcclient.InferInput(INPUT, [batch, *SIZES[size]], "FP32")
    out = grpcclient.InferRequestedOutput(OUTPUT)
    if regions is None:
        inp.set_data_from_numpy(data)
        return [inp], [out], None
    in_name = regions.create(f"{label}_in", data.nbytes, data)
    out_name = regions.create(f"{label}_out", batch * 4)
    inp.set_shared_memory(in_name, data.nbytes)
    out.set_shared_memory(out_name, batch * 4)
    return [inp], [out], out_name


def check_answers(url: str, sizes: Sequence[str], batch: int) -> None:
    """One request per size and mode (also the server's warm-up); a wrong mean is an error."""
    import tritonclient.grpc as grpcclient

    regions = Regions(url)
    try:
        for size in sizes:
            data = batch_data(size, batch)
            want = data.reshape(batch, -1).mean(axis=1, dtype=np.float64)
            for use_shm in (True, False):
                inputs, outputs, out_name = _infer_args(
                    grpcclient, batch, size, regions if use_shm else None, f"check_{size}", data
                )
                result = regions.client.infer(model_name(size), inputs, outputs=outputs)
                got = regions.output(out_name, [batch, 1]) if out_name else result.as_numpy(OUTPUT)
                if not np.allclose(got.reshape(-1), want, rtol=1e-3):
                    raise SystemExit(
                        f"{model_name(size)} ({'shm' if use_shm else 'raw'}): wrong answer {got} != {want}"
                    )
    finally:
        regions.close()


def python_point(
    url: str, size: str, batch: int, concurrency: int, seconds: float, warmup: float, use_shm: bool
) -> Served:
    """``concurrency`` threads, each with its own channel (and regions), back to back; requests
    that start after the warm-up and end before the deadline count."""
    import tritonclient.grpc as grpcclient

    data = batch_data(size, batch)
    regions = Regions(url) if use_shm else None
    latencies: list[int] = []
    errors = 0
    lock = threading.Lock()
    ready = threading.Barrier(concurrency + 1)  # every client's regions made and filled
    go = threading.Event()  # the window is set
    window: list[int] = []
    stop = threading.Event()
    shared_args = None if use_shm else _infer_args(grpcclient, batch, size, None, "", data)

    def client(i: int) -> None:
        nonlocal errors
        c = grpcclient.InferenceServerClient(url)
        mine: list[int] = []
        failed = 0
        try:
            try:
                inputs, outputs, _ = shared_args or _infer_args(grpcclient, batch, size, regions, f"c{i}", data)
            except BaseException:
                ready.abort()
                raise
            ready.wait()
            go.wait()
            if stop.is_set():
                return
            start, end = window
            while not stop.is_set() and (t0 := time.monotonic_ns()) < end:
                try:
                    c.infer(model_name(size), inputs, outputs=outputs)
                except Exception:
                    failed += t0 >= start
                    continue
                t1 = time.monotonic_ns()
                if t0 >= start and t1 <= end:
                    mine.append(t1 - t0)
        finally:
            c.close()
            with lock:
                latencies.extend(mine)
                errors += failed

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    try:
        for t in threads:
            t.start()
        ready.wait(timeout=120)
        start = time.monotonic_ns() + int(warmup * 1e9)
        window.extend([start, start + int(seconds * 1e9)])
        go.set()
        for t in threads:
            t.join()
    finally:
        stop.set()
        go.set()
        for t in threads:
            t.join()
        if regions is not None:
            regions.close()
    lat = sorted(latencies)
    return Served(
        len(lat) * batch / seconds,
        errors=errors,
        p50_us=percentile(lat, 50) / 1000 if lat else 0.0,
        p99_us=percentile(lat, 99) / 1000 if lat else 0.0,
    )


def pa_point(binary: str, url: str, size: str, batch: int, concurrency: int, seconds: float, use_shm: bool) -> Served:
    # Stable within 50%, not perf_analyzer.measure's 100%: its first window holds the client's
    # start (connections, regions), and these points are short.
    extra = ["-s", "50"]
    if use_shm:
        extra += ["--shared-memory", "system", "--output-shared-memory-size", str(batch * 4)]
    if not use_shm and concurrency * batch * row_bytes(size) > COUNT_WINDOWS_BYTES:
        # Such a request can outlast a time window (16 MiB x 8 from 8 clients: seconds), which
        # then sees none end: windows of one request per client instead (perf_analyzer makes
        # these at least a second long).
        extra += ["--measurement-mode", "count_windows", "--measurement-request-count", str(concurrency)]
    with removing_pa_objects():
        pt = perf_analyzer.measure(binary, url, model_name(size), batch, concurrency, seconds, extra=extra)
    return Served(pt.rows_per_s, p50_us=pt.p50_us, p99_us=pt.p99_us)


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    size: str
    batch: int
    concurrency: int

    @property
    def name(self) -> str:
        return point_name(self.size, self.batch, self.concurrency)


def goal_lines(raw: dict[tuple[str, str], list[Served]], points: Sequence[Point]) -> tuple[list[str], bool]:
    lines, ok = [], True
    for pt in points:
        x, y, c = raw[(pt.name, SHM)], raw[(pt.name, PLAIN)], raw[(pt.name, IN_PROCESS)]
        shm_tp = median(s.rows_per_s for s in x)
        vs_plain = ratio(shm_tp, median(s.rows_per_s for s in y))
        vs_ceiling = ratio(shm_tp, median(s.rows_per_s for s in c))
        p99 = ratio(median(s.p99_us for s in x), median(s.p99_us for s in y))
        text = f"{pt.name}: shm/no-shm {vs_plain:.2f}x throughput (p99 {p99:.2f}x), shm/in-process {vs_ceiling:.0%}"
        on_shm = raw.get((pt.name, IN_PROCESS_SHM))
        if on_shm:
            text += f" ({ratio(shm_tp, median(s.rows_per_s for s in on_shm)):.0%} of in-process reading /dev/shm)"
        if pt.size == GOAL_SIZE:
            met = vs_plain >= GOAL_VS_PLAIN and vs_ceiling >= GOAL_VS_CEILING
            ok &= met
            text += f" ({'meets' if met else 'misses'} the goal: >= {GOAL_VS_PLAIN:g}x and >= {GOAL_VS_CEILING:.0%})"
        lines.append(text)
    return lines, ok


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes", nargs="+", choices=list(SIZES), default=DEFAULT_SIZES, help="input sizes (default image 16MB)"
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="rows per request (default 1 8)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="clients (default 1 8)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per point (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per point (tritonclient load)")
    p.add_argument("--rounds", type=int, default=3, help="measure every point this many times (default 3)")
    p.add_argument("--ceiling-seconds", type=float, default=0.5, help="seconds per in-process timing (default 0.5)")
    p.add_argument(
        "--load",
        choices=["auto", "perf_analyzer", "tritonclient"],
        default="auto",
        help="perf_analyzer, the Python tritonclient driver, or auto (perf_analyzer when installed)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the load apart")
    add_baseline_argument(p)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks: regions unregistered and unlinked


def run(a: argparse.Namespace) -> int:
    for module in ("onnx", "onnxruntime", "tritonclient.grpc"):
        try:
            __import__(module)
        except ImportError:
            print(f"inferd perf bench shm: needs {module} (make test installs it)", file=sys.stderr)
            return 2
    binary = None if a.load == "tritonclient" else perf_analyzer.for_load(a.load)
    label = perf_analyzer.LOAD_LABEL if binary else "tritonclient.grpc (Python), one thread and channel per client"
    server_cpus, ncpu = split_cpus(a.no_pin)
    print(
        f"# {ncpu} CPUs; "
        + ("server and ceilings on CPU 0, load on CPUs 1.." if server_cpus else "no pinning")
        + f"; load: {label}",
        file=sys.stderr,
    )
    points = [Point(s, b, c) for s in a.sizes for c in a.concurrency for b in a.batch]
    previous = signal.signal(signal.SIGTERM, _terminate)
    servers: dict[str, ServerProcess] = {}  # by the mode measured on it
    modes = [SHM, PLAIN]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="inferd-bench-shm-") as tmp,
            removing_pa_objects(),
            baseline_ref.builds(a.baseline_ref) as builds,
        ):
            repo = Path(tmp)
            build_repository(repo, a.sizes, max(a.batch))
            models = [model_name(s) for s in a.sizes]
            shm_flag = ["--allow-client-shm", "true"]
            # One server per row: a server that also carried the no-shm rows' gigabytes would
            # serve its shm rows from a heap they left behind, which a baseline would not.
            for mode, build in [(SHM, builds[0]), (PLAIN, builds[0])] + [
                (f"{SHM}@{b.name.partition('@')[2]}", b) for b in builds[1:]
            ]:
                env = {**THREAD_ENV, **build.env}
                servers[mode] = start_inferd(build.name, env, server_cpus, repo, models, extra=shm_flag)
                check_answers(servers[mode].url, a.sizes, max(a.batch))
                if mode not in modes:
                    modes.append(mode)
            ceiling = Ceiling(repo, a.sizes, server_cpus)
            ceilings: dict[tuple[str, int, str], list[Served]] = {}

            def time_ceilings(rnd: int) -> None:
                for size in a.sizes:
                    for batch in a.batch:
                        for on_shm, row in ((False, IN_PROCESS), (True, IN_PROCESS_SHM)):
                            s = ceiling.measure(size, batch, a.ceiling_seconds, on_shm)
                            ceilings.setdefault((size, batch, row), []).append(s)
                            print(
                                f"# round {rnd + 1}/{a.rounds} {size} batch {batch} {row}: "
                                f"{s.rows_per_s:,.0f} infer/s, p99 {s.p99_us:,.0f} µs",
                                file=sys.stderr,
                            )

            def one(key: tuple[Point, str]) -> Served:
                pt, mode = key
                url, use_shm = servers[mode].url, mode != PLAIN
                try:
                    if binary is not None:
                        return pa_point(binary, url, pt.size, pt.batch, pt.concurrency, a.duration, use_shm)
                    return python_point(url, pt.size, pt.batch, pt.concurrency, a.duration, a.warmup, use_shm)
                except RuntimeError as e:  # perf_analyzer failed
                    print(f"# {pt.name} {mode}: {e}", file=sys.stderr)
                    return Served(0.0, errors=1)

            measured = interleaved(
                a.rounds,
                [(pt, mode) for pt in points for mode in modes],
                one,
                lambda k: f"{k[0].name} {k[1]}",
                before_round=time_ceilings,
            )
    finally:
        for server in servers.values():
            server.stop()
        signal.signal(signal.SIGTERM, previous)
    raw: dict[tuple[str, str], list[Served]] = {(pt.name, mode): runs for (pt, mode), runs in measured.items()}
    for pt in points:
        for row in (IN_PROCESS, IN_PROCESS_SHM):
            raw[(pt.name, row)] = ceilings[(pt.size, pt.batch, row)]
    lines, _ = goal_lines(raw, points)
    sizes = ", ".join(
        f"{s} = {' x '.join(map(str, SIZES[s]))} FP32 ({row_bytes(s) / 2**20:g} MiB a row)" for s in a.sizes
    )
    print(
        f"load: {label}; points are size, clients x batch; infer/s in rows per second; {sizes}; "
        f"in-process: onnxruntime in the benchmark process on the server's CPU, one thread, same batch "
        f"(numpy's array; '{IN_PROCESS_SHM}': the same, reading a shared-memory mapping); "
        f"medians of {a.rounds} round(s) of {a.duration:g} s\n"
    )
    baselines = modes[2:]
    ratios = [(SHM, PLAIN), (SHM, IN_PROCESS), (SHM, IN_PROCESS_SHM), *((SHM, b) for b in baselines)]
    rows = [SHM, *baselines, PLAIN, IN_PROCESS, IN_PROCESS_SHM]
    print(comparison(raw, [pt.name for pt in points], rows, ratios))
    print("\n" + "\n".join(lines))
    return exit_status(raw)


BENCH = Bench(
    "shm",
    "system shared memory: a large-input model over gRPC with and without a shm region, against in-process",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
