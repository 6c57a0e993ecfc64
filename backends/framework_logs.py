"""Keeping the frameworks' start-up banners out of the server's log.

TensorFlow, torch and onnxruntime log through loggers of their own that ``--log-level`` does
not reach. Unless the server logs at DEBUG, :func:`quiet_frameworks` (called once at start-up,
before any framework is imported) sets their levels through their environment variables,
leaving alone any the user set, and the backends import their framework inside
:func:`importing`, which covers what no level controls: while TensorFlow is imported, absl
prints its pre-initialization notice and the oneDNN notice straight to stderr.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

# Read by the frameworks when they are imported.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ code: errors only
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ (c10) messages
}
ORT_SEVERITY_ERROR = 3

# What TensorFlow prints while it is imported, whatever its log level.
BANNER = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] "  # absl: I0000 00:00:1796588765.86 5889 port.cc:153]
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] \S+:\d+\] "  # TensorFlow's own format
    r"|^To enable the following instructions: .*rebuild TensorFlow"  # cpu_feature_guard's 2nd line
    r"|Unable to register cu\w+ factory: .*already been registered"
    r"|computation placer already registered"
)

_quiet = False  # set by quiet_frameworks
_filter_tf = False  # whether TensorFlow's level is ours (a user who set it wants its output)
_lock = threading.Lock()


def quiet_frameworks(log_level: str) -> None:
    """Quiet the frameworks unless the server logs at DEBUG; never overrides the user's variables."""
    global _quiet, _filter_tf
    _quiet = log_level.upper() != "DEBUG"
    if not _quiet:
        return
    _filter_tf = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def is_banner(line: str) -> bool:
    return BANNER.search(line) is not None


@contextmanager
def importing(module: str) -> Iterator[None]:
    """Wrap a backend's first import of ``module``: quiets its loggers once imported and, for
    TensorFlow, drops its import-time banners from stderr."""
    if not _quiet or module in sys.modules:
        yield
        return
    with _lock:
        filtering = module == "tensorflow" and _filter_tf
        with _banners_dropped() if filtering else nullcontext():
            yield
        if module in sys.modules and module in _AFTER_IMPORT:
            _AFTER_IMPORT[module]()


@contextmanager
def _banners_dropped() -> Iterator[None]:
    """While the block runs, file descriptor 2 goes to a temporary file; afterwards every line
    that is not a banner is copied to the real stderr, in order. A file rather than a pipe: a
    write never blocks, even from a library initializer that holds the GIL."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held if not is_banner(line.decode("utf-8", "replace")))
            while kept:
                kept = kept[os.write(2, kept) :]


def _quiet_tensorflow() -> None:
    # TensorFlow's Python side logs through these (absl's verbosity is its logger's level).
    for name in ("tensorflow", "absl"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


def _quiet_onnxruntime() -> None:
    # No environment variable sets it; the default logger is what sessions log to.
    sys.modules["onnxruntime"].set_default_logger_severity(ORT_SEVERITY_ERROR)


_AFTER_IMPORT: dict[str, Callable[[], None]] = {
    "tensorflow": _quiet_tensorflow,
    "onnxruntime": _quiet_onnxruntime,
}
