"""``inferd perf``: a perf_analyzer-style load test of a KServe v2 server.

Option names follow perf_analyzer's where they apply, so a command line can move between
the two tools. Differences: the default protocol is gRPC, requests are always asynchronous
(``--async``/``--sync`` are accepted for compatibility), and ``--processes`` spreads the load
over several Python processes.

``inferd perf bench NAME`` runs one of the benchmarks instead (``harness.py``; ``--list``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .inputs import DataOptions, InputError, parse_shape
from .procs import install_event_loop
from .report import step_details, table, write_csv
from .runner import RunOptions, RunOutput, run_sync
from .transport import RequestFailed


def parse_range(text: str, integer: bool) -> list[float]:
    """perf_analyzer's ``start[:end[:step]]`` (end defaults to start, step to 1)."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3:
        raise argparse.ArgumentTypeError(f"expected start:end:step, got '{text}'")
    try:
        nums = [int(p) if integer else float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a {'integer' if integer else 'number'} range") from None
    start = nums[0]
    end = nums[1] if len(nums) > 1 else start
    step = nums[2] if len(nums) > 2 else 1
    if start <= 0 or end < start or step <= 0:
        raise argparse.ArgumentTypeError(f"range '{text}' must satisfy 0 < start <= end and step > 0")
    values, v = [], start
    while v <= end + (0 if integer else 1e-9):
        values.append(float(v))
        v += step
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferd perf",
        description="Load-test a KServe v2 / Triton server, perf_analyzer style.",
        epilog="Example: inferd perf -m add_sub -u 127.0.0.1:8001 --concurrency-range 1:8:2 -f out.csv\n"
        "Benchmarks: inferd perf bench --list, inferd perf bench NAME --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", dest="model", required=True, help="model name")
    p.add_argument("-x", dest="version", default="", help="model version (default: the server's choice)")
    p.add_argument(
        "-u", dest="url", default=None, help="server address (default 127.0.0.1:8001 for grpc, :8000 for http)"
    )
    p.add_argument("-i", dest="protocol", choices=["grpc", "http"], default="grpc", help="protocol (default grpc)")
    p.add_argument("-b", dest="batch_size", type=int, default=1, help="batch size of each request (default 1)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency-range", metavar="START:END:STEP", help="requests in flight (default 1)")
    load.add_argument("--request-rate-range", metavar="START:END:STEP", help="requests per second to send")
    p.add_argument(
        "--request-distribution",
        choices=["constant", "poisson"],
        default="constant",
        help="intervals between sends in rate mode (default constant)",
    )
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="shape of an input with variable dims, without the batch dim (repeatable)",
    )
    p.add_argument(
        "--input-data",
        default="random",
        metavar="zero|random|FILE.json",
        help="input values (default random bytes, as perf_analyzer)",
    )
    p.add_argument("--string-length", type=int, default=128, help="length of random BYTES elements")
    p.add_argument("--string-data", default=None, help="the value of every BYTES element")
    p.add_argument(
        "-p",
        "--measurement-interval",
        dest="measurement_ms",
        type=int,
        default=5000,
        metavar="MS",
        help="window length in milliseconds (default 5000)",
    )
    p.add_argument(
        "-s",
        "--stability-percentage",
        dest="stability",
        type=float,
        default=10.0,
        help="allowed spread of the last 3 windows, percent (default 10)",
    )
    p.add_argument(
        "-r",
        "--max-trials",
        dest="max_trials",
        type=int,
        default=10,
        help="windows per step before giving up on stability (default 10)",
    )
    p.add_argument(
        "--percentile",
        type=int,
        default=None,
        help="stabilize on (and report) this latency percentile instead of the average",
    )
    p.add_argument(
        "-l",
        "--latency-threshold",
        dest="latency_threshold",
        type=float,
        default=None,
        metavar="MS",
        help="stop the sweep once latency exceeds this",
    )
    p.add_argument(
        "-f",
        dest="csv",
        type=Path,
        default=None,
        help="write perf_analyzer's CSV here (and a PNG plot beside it, with matplotlib)",
    )
    p.add_argument("--verbose-csv", action="store_true", help="accepted; the CSV always has the verbose columns")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="write the latency/throughput plot (PNG) here; needs matplotlib: pip install 'inferd[perf]'",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write a plot beside the CSV")
    p.add_argument("-a", "--async", dest="async_", action="store_true", help="accepted; requests are always async")
    p.add_argument("--sync", action="store_true", help="accepted for compatibility (no effect)")
    p.add_argument("--streaming", action="store_true", help="send over one ModelStreamInfer stream (grpc)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="spread the load over N generator processes (when one cannot saturate the server)",
    )
    p.add_argument(
        "--event-loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop (auto: uvloop when installed)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs and Poisson intervals")
    p.add_argument("-v", "--verbose", action="store_true", help="print every window and a detailed block per step")
    return p


def options_from_args(a: argparse.Namespace) -> RunOptions:
    if a.request_rate_range:
        mode, values = "rate", parse_range(a.request_rate_range, integer=False)
    else:
        mode, values = "concurrency", parse_range(a.concurrency_range or "1", integer=True)
    shapes = dict(parse_shape(s) for s in a.shape)
    data = DataOptions(
        batch_size=a.batch_size,
        shapes=shapes,
        input_data=a.input_data,
        string_length=a.string_length,
        string_data=a.string_data,
        seed=a.seed,
    )
    if a.processes < 1:
        raise InputError("--processes must be at least 1")
    if a.measurement_ms <= 0 or a.max_trials < 1:
        raise InputError("-p must be positive and --max-trials at least 1")
    plot_path = a.plot
    if plot_path is None and a.csv is not None and not a.no_plot:
        plot_path = a.csv.with_suffix(".png")
    return RunOptions(
        model=a.model,
        version=a.version,
        protocol=a.protocol,
        url=a.url,
        mode=mode,
        values=values,
        distribution=a.request_distribution,
        data=data,
        measurement_ms=a.measurement_ms,
        stability=a.stability / 100.0,
        max_trials=a.max_trials,
        percentile=a.percentile,
        latency_threshold_ms=a.latency_threshold,
        streaming=a.streaming,
        processes=a.processes,
        event_loop=a.event_loop,
        csv_path=a.csv,
        plot_path=plot_path,
        verbose=a.verbose,
    )


def check_plot(a: argparse.Namespace) -> None:
    """An explicit --plot without matplotlib is a usage error, found before the sweep runs."""
    from .report import PLOT_INSTALL, plot_available

    if a.plot is not None and not plot_available():
        raise InputError(f"--plot needs matplotlib: {PLOT_INSTALL}")


def write_outputs(opts: RunOptions, out: RunOutput) -> None:
    """The table, the CSV and the plot of the steps measured (all of them, or those completed
    before the server stopped answering)."""
    from .report import PLOT_INSTALL, plot, plot_available

    if opts.verbose:
        for r in out.results:
            print(step_details(r))
    print(table(out.results))
    if opts.csv_path is not None and out.results:
        write_csv(opts.csv_path, out.results, out.server_stats, out.model.response_cache, opts.percentile)
        print(f"wrote {opts.csv_path}")
    if opts.plot_path is None or not out.results:
        return
    if not plot_available():  # only the plot beside the CSV gets here; --plot was checked up front
        print(f"note: no plot: matplotlib is not installed ({PLOT_INSTALL}, or --no-plot)", file=sys.stderr)
        return
    plot(opts.plot_path, out.results, f"{opts.model} over {opts.protocol}")
    print(f"wrote {opts.plot_path}")


def main(argv: list[str] | None = None) -> int:
    """Returns 0 when every step was stable and error-free, 1 otherwise, and 2 on usage errors
    or when the server cannot be reached or stops answering. ``bench ...`` runs a benchmark."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .harness import bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["fuzz"]:
        from .fuzz import fuzz_main

        return fuzz_main(argv[1:])
    from .report import TerminalProgress

    args = build_parser().parse_args(argv)
    progress = TerminalProgress(verbose=args.verbose)
    try:
        opts = options_from_args(args)
        if opts.streaming and opts.protocol != "grpc":
            raise InputError("--streaming needs -i grpc")
        check_plot(args)
        kind = "concurrency" if opts.mode == "concurrency" else "request rate"
        loop = install_event_loop(opts.event_loop)
        procs = f", {opts.processes} generator processes" if opts.processes > 1 else ""
        print(
            f"*** inferd perf: model '{opts.model}' over {opts.protocol}, batch {opts.data.batch_size}, "
            f"{kind} {', '.join(f'{v:g}' for v in opts.values)}, windows of {opts.measurement_ms} ms, "
            f"stability {opts.stability * 100:g}%, {loop} event loop{procs}",
            file=sys.stderr,
        )
        out = run_sync(opts, progress)
    except (InputError, ValueError) as e:
        print(f"inferd perf: {e}", file=sys.stderr)
        return 2
    except RequestFailed as e:
        print(f"inferd perf: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninferd perf: interrupted", file=sys.stderr)
        return 130
    progress.end()
    for note in out.notes:
        print(f"note: {note}", file=sys.stderr)
    write_outputs(opts, out)
    if out.error is not None:
        print(f"inferd perf: {out.error}", file=sys.stderr)
        return 2
    ok = all(r.stable and not r.errors for r in out.results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
