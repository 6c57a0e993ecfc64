"""Model lifecycle: how long a dropped model folder takes to serve in poll mode, and
what a version swap costs the requests flowing through it.

1. Drop to READY: an inferd in poll mode (default interval) watches an empty repository; each
   bundled model folder is copied in (``shutil.copytree``, not atomic: the two-scan stability
   rule has to see it settle) at a random moment of the poll cycle and ModelReady is polled
   every 10 ms; then the folder is removed and the unload awaited. Expect 1-2 poll intervals
   plus the load: the first scan sees the folder, the next identical scan loads it.
2. Swap latency: a second inferd serves one bundled model under closed-loop load (N requests in
   flight, gRPC, loopback). One window runs without changes (steady state); a second window
   of the same length drops a new version folder (policy latest 1) again each time the
   previous swap is in service, so new versions are loaded, warmed, switched to and the old
   ones drained and unloaded throughout. Reported: p50/p99 over each window, and the p99 of
   the requests that ended within +-250 ms of a swap (when the new version was seen READY).

Servers run as subprocesses on free loopback ports; with two or more CPUs they are pinned to
CPU 0 and this load generator to the others. Run time is bounded (about 1-2 minutes with the
defaults). Needs only grpcio and the generated stubs, not the server's own dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..protocol.pb import grpc_service_pb2 as pb
from ..protocol.pb import grpc_service_pb2_grpc as pb_grpc
from .harness import Bench, module_main
from .inputs import DataOptions, build_requests
from .loadgen import LoadGenerator, Record
from .servers import INFERD_LOADED, INFERD_READY_LINE, ServerProcess, inferd_argv, split_cpus, start
from .stats import LatencySummary
from .transport import make_transport

BUNDLED = Path(__file__).resolve().parent.parent / "model_repository"
NEAR_SWAP_NS = 250_000_000


def serve(repo: Path, poll_secs: float, cpus: list[int] | None) -> ServerProcess:
    argv = inferd_argv(repo) + ["--model-control-mode", "poll", "--repository-poll-secs", str(poll_secs)]
    return start("inferd", argv, cpus, ready_line=INFERD_READY_LINE, wait_for=INFERD_LOADED)


def wait_ready(stub: pb_grpc.GRPCInferenceServiceStub, name: str, version: str, ready: bool, timeout: float) -> float:
    """Poll ModelReady every 10 ms until it reads ``ready``; returns the monotonic time seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stub.ModelReady(pb.ModelReadyRequest(name=name, version=version)).ready is ready:
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"model '{name}' version '{version}' not {'ready' if ready else 'gone'} after {timeout}s")


# --- 1. drop a folder, wait for READY --------------------------------------------------------


def drop_to_ready(poll_secs: float, drops: int, cpus: list[int] | None) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="inferd-swap-") as tmp:
        repo = Path(tmp)
        server = serve(repo, poll_secs, cpus)
        try:
            with grpc.insecure_channel(server.url) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                rng = random.Random(0)
                for name in ("add_sub", "dense"):
                    for i in range(drops):
                        # Unloads are seen right after a scan: without this, every drop would
                        # land at the same (worst) point of the poll cycle.
                        time.sleep(rng.uniform(0, poll_secs))
                        t0 = time.monotonic()
                        shutil.copytree(BUNDLED / name, repo / name)
                        took = wait_ready(stub, name, "", True, 10 * poll_secs + 30) - t0
                        seconds.setdefault(name, []).append(took)
                        print(f"# drop {name} #{i + 1}: READY after {took:.2f}s", file=sys.stderr)
                        shutil.rmtree(repo / name)
                        wait_ready(stub, name, "", False, 10 * poll_secs + 30)
        finally:
            server.stop()
    return seconds


# --- 2. latency during swaps ---------------------------------------------------------------


@dataclass
class Window:
    label: str
    records: list[Record]
    seconds: float
    swaps: list[int]  # monotonic_ns when each new version was seen READY

    def summary(self) -> LatencySummary:
        return LatencySummary.of(r.latency_ns for r in self.records if r.ok)

    def near_swaps(self) -> LatencySummary:
        near = [
            r.latency_ns for r in self.records if r.ok and any(abs(r.end_ns - s) <= NEAR_SWAP_NS for s in self.swaps)
        ]
        return LatencySummary.of(near)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if not r.ok)


class Swapper:
    """In a thread: drop version N+1 (a copy of version 1), wait until it serves, repeat."""

    def __init__(self, url: str, repo: Path, model: str) -> None:
        self.url, self.repo, self.model = url, repo, model
        self.stop = threading.Event()
        self.ready_ns: list[int] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with grpc.insecure_channel(self.url) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                version = max(int(p.name) for p in (self.repo / self.model).iterdir() if p.name.isdigit())
                while not self.stop.is_set():
                    version += 1
                    shutil.copytree(self.repo / self.model / "1", self.repo / self.model / str(version))
                    wait_ready(stub, self.model, str(version), True, 60)
                    self.ready_ns.append(time.monotonic_ns())
                    self.stop.wait(0.2)  # let the drain of the old version overlap traffic too
        except BaseException as e:  # reported by the caller
            self.error = e


async def swap_windows(
    url: str, repo: Path, model: str, concurrency: int, duration: float, warmup: float
) -> list[Window]:
    transport = make_transport("grpc", url)
    windows: list[Window] = []
    try:
        info = await transport.model_info(model, "")
        transport.prepare(info, build_requests(info, DataOptions(batch_size=1, input_data="random")))
        gen = LoadGenerator(transport)
        await gen.start_concurrency(concurrency)
        await asyncio.sleep(warmup)
        for label in ("steady state", "during swaps"):
            swapper = Swapper(url, repo, model) if label == "during swaps" else None
            start_ns = time.monotonic_ns()
            await gen.collect(start_ns)
            if swapper is not None:
                swapper.thread.start()
            await asyncio.sleep(duration)
            if swapper is not None:
                swapper.stop.set()
                await asyncio.get_running_loop().run_in_executor(None, swapper.thread.join)
                if swapper.error is not None:
                    raise swapper.error
            end_ns = time.monotonic_ns()
            records, _ = await gen.collect(end_ns)
            swaps = swapper.ready_ns if swapper is not None else []
            windows.append(Window(label, records, (end_ns - start_ns) / 1e9, swaps))
        await gen.stop()
    finally:
        await transport.close()
    return windows


def measure_swaps(
    model: str, poll_secs: float, concurrency: int, duration: float, warmup: float, cpus: list[int] | None
) -> list[Window]:
    with tempfile.TemporaryDirectory(prefix="inferd-swap-") as tmp:
        repo = Path(tmp)
        shutil.copytree(BUNDLED / model, repo / model)
        server = serve(repo, poll_secs, cpus)
        try:
            return asyncio.run(swap_windows(server.url, repo, model, concurrency, duration, warmup))
        finally:
            server.stop()


# --- report --------------------------------------------------------------------------------


def render(
    drops: dict[str, list[float]], poll_secs: float, swaps: dict[str, list[Window]], swap_poll: float, concurrency: int
) -> str:
    lines = [
        f"Drop a bundled model folder into the repository -> READY (poll mode, --repository-poll-secs {poll_secs:g}):",
        "",
        "| model | drops | min (s) | median (s) | max (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in drops.items():
        lines.append(
            f"| {name} | {len(values)} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |"
        )
    lines += [
        "",
        f"Latency during version swaps vs steady state (gRPC, batch 1, {concurrency} in flight, "
        f"--repository-poll-secs {swap_poll:g}):",
        "",
        "| model | window | swaps | infer/s | errors | p50 (us) | p99 (us) | p99 within 250 ms of a swap (us) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, windows in swaps.items():
        for w in windows:
            s = w.summary()
            near = w.near_swaps() if w.swaps else None
            near_p99 = f"{near.percentiles_ns[99] // 1000}" if near and near.count else "-"
            lines.append(
                f"| {name} | {w.label} | {len(w.swaps)} | {s.count / w.seconds:.0f} | {w.errors} "
                f"| {s.percentiles_ns.get(50, 0) // 1000} | {s.percentiles_ns.get(99, 0) // 1000} "
                f"| {near_p99} |"
            )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--poll-secs",
        type=float,
        default=2.0,
        help="poll interval for drop-to-READY (default: the server's default, 2)",
    )
    p.add_argument("--drops", type=int, default=3, help="drops per bundled model (default 3)")
    p.add_argument(
        "--swap-poll-secs",
        type=float,
        default=0.5,
        help="poll interval of the swap server: only decides how often a swap starts (default 0.5)",
    )
    p.add_argument("--models", nargs="+", default=["add_sub", "dense"], help="models to swap under load")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per window (default 8)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before the windows")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the generator to separate CPUs")


def run(a: argparse.Namespace) -> int:
    cpus, ncpu = split_cpus(a.no_pin)
    pin = cpus is not None
    print(
        f"# {ncpu} CPUs; " + ("server on CPU 0, load generator on CPUs 1.." if pin else "no pinning"), file=sys.stderr
    )
    drops = drop_to_ready(a.poll_secs, a.drops, cpus) if a.drops > 0 else {}
    swaps = {}
    for model in a.models:
        swaps[model] = measure_swaps(model, a.swap_poll_secs, a.concurrency, a.duration, a.warmup, cpus)
        for w in swaps[model]:
            s = w.summary()
            print(
                f"# {model} {w.label}: {len(w.swaps)} swaps, {s.count} ok, {w.errors} errors, "
                f"p99 {s.percentiles_ns.get(99, 0) // 1000} us",
                file=sys.stderr,
            )
    print(render(drops, a.poll_secs, swaps, a.swap_poll_secs, a.concurrency))
    return 0


BENCH = Bench(
    "swap",
    "poll-mode drop-to-READY time, and request latency while model versions are swapped under load",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
