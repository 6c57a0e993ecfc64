"""``inferd batch``: score a JSON Lines file of requests with one model, offline (no port is
opened). The format is in ``frontends/batch.py``; the model is loaded from the repositories as
``inferd serve`` loads it (its config, dynamic batching and instances included)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .frontends.batch import DEFAULT_CONCURRENCY, DEFAULT_MAX_LINE_BYTES, BatchRunner, open_input, open_output
from .settings import BUNDLED_REPOSITORY, Settings

log = logging.getLogger("inferd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-repository",
        type=Path,
        action="append",
        default=None,
        help=f"a model repository folder, repeatable (default the bundled one, {BUNDLED_REPOSITORY})",
    )
    p.add_argument("--model", required=True, help="the model that answers every line")
    p.add_argument("--model-version", default="", help="its version (default: the newest ready one)")
    p.add_argument("--input", required=True, help="JSON Lines of KServe v2 infer requests ('-': standard input)")
    p.add_argument("--output", required=True, help="where the answers go, one line each ('-': standard output)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at once, so the dynamic batcher can form batches (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument(
        "--max-line-bytes",
        type=int,
        default=DEFAULT_MAX_LINE_BYTES,
        help=f"a longer line is answered with an error, never read into memory (default {DEFAULT_MAX_LINE_BYTES})",
    )
    p.add_argument("--verbose", action="store_true", help="log the server's INFO lines (model loading) to stderr")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="inferd batch", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    a = parser.parse_args(argv)
    if a.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if a.max_line_bytes < 1:
        parser.error("--max-line-bytes must be at least 1")
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from . import event_loop

    try:
        return event_loop.run(_run(a), event_loop.resolve("auto"))
    except KeyboardInterrupt:
        return 130


async def _run(a: argparse.Namespace) -> int:
    from .app import InferdServer

    settings = Settings(
        model_repository=tuple(a.model_repository or (BUNDLED_REPOSITORY,)),
        allow_grpc=False,
        allow_http=False,
        allow_metrics=False,
        model_control_mode="explicit",
        load_models=[a.model],
    )
    server = InferdServer(settings)
    try:
        await server.start()
    except OSError as e:
        print(f"inferd batch: {e}", file=sys.stderr)
        return 2
    try:
        core = server.core
        if not core.model_ready(a.model, a.model_version):
            print(f"inferd batch: {_why_not_ready(server, a.model, a.model_version)}", file=sys.stderr)
            return 2
        with contextlib.ExitStack() as files:
            try:
                source = files.enter_context(_closing(open_input(a.input)))
                sink = files.enter_context(_closing(open_output(a.output)))
            except OSError as e:
                print(f"inferd batch: {e.strerror or e}: {e.filename}", file=sys.stderr)
                return 2
            runner = BatchRunner(core, a.model, a.model_version, a.concurrency, a.max_line_bytes)
            summary = await runner.run(source, sink)
        print(f"inferd batch: {summary.text()}", file=sys.stderr)
        return 1 if summary.failed else 0
    finally:
        await server.stop()


@contextlib.contextmanager
def _closing(f: IO[bytes]) -> Iterator[IO[bytes]]:
    """``f``, closed at the end unless it is the process's standard input or output."""
    try:
        yield f
    finally:
        if f not in (sys.stdin.buffer, sys.stdout.buffer):
            f.close()


def _why_not_ready(server: object, model: str, version: str) -> str:
    from .app import InferdServer

    assert isinstance(server, InferdServer)
    entries = [e for e in server.core.repository_index() if e.name == model and (not version or e.version == version)]
    if not entries:
        where = f"model '{model}'" + (f" version {version}" if version else "")
        return f"{where} is not in the model repository"
    return "; ".join(
        f"model '{e.name}' version {e.version} is {e.state}" + (f": {e.reason}" if e.reason else "") for e in entries
    )
