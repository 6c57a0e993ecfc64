"""Output: the terminal table and progress line, perf_analyzer's CSV, and the latency versus
throughput plot (matplotlib, imported only when a plot is asked for)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .stats import StepResult, Window


def _us(ns: int) -> int:
    return ns // 1000


# --- CSV ------------------------------------------------------------------------------------
def csv_header(
    mode: str, percentiles: Sequence[int], server_stats: bool, cache: bool = False, extra_percentile: int | None = None
) -> list[str]:
    """perf_analyzer's ``-f`` header with ``--verbose-csv`` (report_writer.cc)."""
    cols = ["Concurrency" if mode == "concurrency" else "Request Rate", "Inferences/Second", "Client Send"]
    if server_stats:
        cols += [
            "Network+Server Send/Recv",
            "Server Queue",
            "Server Compute Input",
            "Server Compute Infer",
            "Server Compute Output",
        ]
        if cache:
            cols += ["Server Cache Hit", "Server Cache Miss"]
    cols.append("Client Recv")
    cols += [f"p{p} latency" for p in percentiles]
    if extra_percentile is None:
        cols.append("Avg latency")
    cols += ["request/response", "response wait"]
    return cols


def csv_row(r: StepResult, server_stats: bool, cache: bool = False, extra_percentile: int | None = None) -> list[str]:
    row = [r.label, f"{r.throughput:g}", str(_us(r.avg_send_ns))]
    if server_stats:
        s = r.server
        if s is None:
            row += ["0"] * (7 if cache else 5)
        else:
            row += [
                str(_us(r.network_ns)),
                str(_us(s.avg_queue_ns)),
                str(_us(s.avg_compute_input_ns)),
                str(_us(s.avg_compute_infer_ns)),
                str(_us(s.avg_compute_output_ns)),
            ]
            if cache:
                row += [str(_us(s.avg_cache_hit_ns)), str(_us(s.avg_cache_miss_ns))]
    row.append(str(_us(r.avg_recv_ns)))
    row += [str(_us(v)) for _, v in sorted(r.latency.percentiles_ns.items())]
    send_recv = _us(r.avg_send_ns) + _us(r.avg_recv_ns)
    if extra_percentile is None:
        row.append(str(_us(r.latency.avg_ns)))
    row += [str(send_recv), str(max(_us(r.latency.avg_ns) - send_recv, 0))]
    return row


def write_csv(
    path: Path,
    results: Sequence[StepResult],
    server_stats: bool,
    cache: bool = False,
    extra_percentile: int | None = None,
) -> None:
    """Rows sorted by throughput, as perf_analyzer writes them."""
    if not results:
        return
    percentiles = sorted(results[0].latency.percentiles_ns)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(csv_header(results[0].mode, percentiles, server_stats, cache, extra_percentile))
        for r in sorted(results, key=lambda r: r.throughput):
            w.writerow(csv_row(r, server_stats, cache, extra_percentile))


# --- terminal -------------------------------------------------------------------------------
def table(results: Sequence[StepResult]) -> str:
    """A fixed-width table of the sweep; latencies in microseconds."""
    if not results:
        return "(no results)"
    head = ["Concurrency" if results[0].mode == "concurrency" else "Rate", "infer/s", "avg", "p50", "p90", "p95", "p99"]
    with_server = any(r.server is not None for r in results)
    if with_server:
        head += ["queue", "c.input", "c.infer", "c.output", "overhead", "net+srv", "infer/exec"]
    rows = []
    for r in results:
        p = r.latency.percentiles_ns
        row = [r.label + ("" if r.stable else "*"), f"{r.throughput:.1f}", str(_us(r.latency.avg_ns))]
        row += [str(_us(p.get(q, 0))) for q in (50, 90, 95, 99)]
        if with_server:
            s = r.server
            if s is None:
                row += ["-"] * 7
            else:
                avg_batch = s.inference_count / s.execution_count if s.execution_count else 0.0
                row += [
                    str(_us(s.avg_queue_ns)),
                    str(_us(s.avg_compute_input_ns)),
                    str(_us(s.avg_compute_infer_ns)),
                    str(_us(s.avg_compute_output_ns)),
                    str(_us(s.avg_overhead_ns)),
                    str(_us(r.network_ns)),
                    f"{avg_batch:.2f}",
                ]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    note = "latencies in usec"
    if with_server:
        note += "; queue..overhead: server side per request; net+srv: client wait not accounted by the server"
    if any(not r.stable for r in results):
        note += "; * = not stable"
    lines.append(f"({note})")
    for r in results:
        for n in r.notes:
            lines.append(f"  {r.label}: {n}")
    return "\n".join(lines)


def step_details(r: StepResult) -> str:
    """perf_analyzer-like block for one step."""
    kind = "Request concurrency" if r.mode == "concurrency" else "Request rate"
    p = r.latency.percentiles_ns
    lines = [
        f"{kind}: {r.label}",
        "  Client:",
        f"    Request count: {r.latency.count}",
        f"    Throughput: {r.throughput:.2f} infer/sec",
        f"    Avg latency: {_us(r.latency.avg_ns)} usec (standard deviation {_us(r.latency.std_ns)} usec)",
    ]
    lines += [f"    p{q} latency: {_us(v)} usec" for q, v in sorted(p.items())]
    if r.server is not None:
        s = r.server
        lines += [
            "  Server:",
            f"    Inference count: {s.inference_count}",
            f"    Execution count: {s.execution_count}",
            f"    Successful request count: {s.success_count}",
            f"    Avg request latency: {_us(s.avg_request_ns)} usec (overhead {_us(s.avg_overhead_ns)} usec + "
            f"queue {_us(s.avg_queue_ns)} usec + compute input {_us(s.avg_compute_input_ns)} usec + "
            f"compute infer {_us(s.avg_compute_infer_ns)} usec + compute output {_us(s.avg_compute_output_ns)} usec)",
        ]
    return "\n".join(lines)


class TerminalProgress:
    """One updating status line per step on a terminal (a line per step otherwise)."""

    def __init__(self, stream: TextIO = sys.stderr, verbose: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.verbose = verbose

    def window(self, label: str, trial: int, max_trials: int, window: Window, batch_size: int, stable: bool) -> None:
        n = len(window.latencies_ns)
        avg = sum(window.latencies_ns) // n // 1000 if n else 0
        text = (
            f"  [{label}] window {trial}/{max_trials}: {window.throughput(batch_size):.1f} infer/s, "
            f"avg {avg} usec{' - stable' if stable else ''}"
        )
        if self.verbose:
            self.stream.write(text + "\n")
        elif self.tty:
            self.stream.write("\r\033[K" + text)
        self.stream.flush()

    def end(self) -> None:
        """Clear a status line left by a step that did not finish."""
        if self.tty and not self.verbose:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def step(self, result: StepResult) -> None:
        if self.tty and not self.verbose:
            self.stream.write("\r\033[K")
        p99 = result.latency.percentiles_ns.get(99, 0) // 1000
        flag = "" if result.stable else " (not stable)"
        self.stream.write(f"  [{result.label}] {result.throughput:.1f} infer/s, p99 {p99} usec{flag}\n")
        self.stream.flush()


# --- plot ---------------------------------------------------------------------------------
PLOT_INSTALL = "pip install 'inferd[perf]'"


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


@dataclass
class PlotPoint:
    load: float  # the step's concurrency or request rate
    label: str
    throughput: float  # infer/s
    latency_ms: float


@dataclass
class PlotSeries:
    name: str  # "p50", "p90", ...
    points: list[PlotPoint]


def plot_series(results: Sequence[StepResult]) -> list[PlotSeries]:
    """One series per reported percentile, its points in load order: the line then follows the
    sweep, and where throughput falls as load rises it bends back, which is the finding. Steps
    without a completed request have no latency and are left out."""
    measured = sorted((r for r in results if r.latency.count), key=lambda r: r.value)
    percentiles = sorted({q for r in measured for q in r.latency.percentiles_ns})
    return [
        PlotSeries(
            f"p{q}",
            [
                PlotPoint(r.value, r.label, r.throughput, r.latency.percentiles_ns[q] / 1e6)
                for r in measured
                if q in r.latency.percentiles_ns
            ],
        )
        for q in percentiles
    ]


def plot(path: Path, results: Sequence[StepResult], title: str) -> None:
    """Latency (ms) against throughput, one line per percentile, each point labelled with its
    load. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for series, marker in zip(plot_series(results), "os^vDx*+"):
        x = [pt.throughput for pt in series.points]
        y = [pt.latency_ms for pt in series.points]
        (line,) = ax.plot(x, y, marker=marker, linestyle="-", label=series.name)
        for pt in series.points:
            ax.annotate(
                pt.label,
                (pt.throughput, pt.latency_ms),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=line.get_color(),
            )
    ax.set_xlabel("throughput (infer/s)")
    ax.set_ylabel("latency (ms)")
    what = "concurrency" if results and results[0].mode == "concurrency" else "request rate"
    ax.set_title(f"{title} (labels: {what})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
