"""``--backend-config``: Triton's backend settings, ``<backend>,<key>=<value>`` or (for every
backend) ``<key>=<value>``, each key honoured, accepted without effect, or refused by name.

Honoured: ``default-max-batch-size`` (the max_batch_size auto-complete gives a model that can
batch, Triton's 4 by default), globally or per backend, and ONNX Runtime's
``intra_op_thread_count`` / ``inter_op_thread_count`` (the thread counts of every ONNX model
that does not set its own in ``parameters``). Accepted with a warning: the Python backend's
shared-memory and stub settings, which tune the separate stub processes Triton runs Python
models in; inferd runs them in-process, so they cannot change anything. Refused: every other
key, and ``enable-global-threadpool=1``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

GLOBAL = ""  # the "backend" of a setting given without one
DEFAULT_MAX_BATCH = "default-max-batch-size"
ORT_THREADS = ("intra_op_thread_count", "inter_op_thread_count")
PYTHON_NO_EFFECT = (
    "shm-default-byte-size",
    "shm-growth-byte-size",
    "shm-message-queue-size",
    "stub-timeout-seconds",
    "shm-region-prefix-name",
)
BACKENDS = ("onnxruntime", "pytorch", "tensorflow", "tensorrt", "python")
# backend -> the keys inferd knows for it (default-max-batch-size goes with every backend).
KNOWN: dict[str, tuple[str, ...]] = {
    GLOBAL: (DEFAULT_MAX_BATCH,),
    "onnxruntime": (DEFAULT_MAX_BATCH, *ORT_THREADS, "enable-global-threadpool"),
    "python": (DEFAULT_MAX_BATCH, *PYTHON_NO_EFFECT),
    "pytorch": (DEFAULT_MAX_BATCH,),
    "tensorflow": (DEFAULT_MAX_BATCH,),
    "tensorrt": (DEFAULT_MAX_BATCH,),
}


class BackendConfigError(ValueError):
    """A --backend-config value inferd cannot honour; the message names it."""


@dataclass(frozen=True)
class BackendSettings:
    """What the --backend-config flags asked for, checked."""

    # backend ("" for all) -> default max batch size for auto-complete
    max_batch: dict[str, int] = field(default_factory=dict)
    # backend -> model parameters every model of that backend gets unless it sets its own
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)
    # (backend, key) accepted without effect, for one warning at start-up
    no_effect: tuple[tuple[str, str], ...] = ()

    def default_max_batch_size(self, backend: str, fallback: int) -> int:
        return self.max_batch.get(backend, self.max_batch.get(GLOBAL, fallback))


def parse(text: str) -> tuple[str, str, str]:
    """One flag value as (backend, key, value), Triton's syntax; BackendConfigError if malformed."""
    backend, comma, rest = text.partition(",")
    if not comma:
        backend, rest = GLOBAL, text
    elif not backend:
        raise BackendConfigError(
            f"no backend before the ',': the format is <backend>,<setting>=<value> or <setting>=<value>, got '{text}'"
        )
    key, equals, value = rest.partition("=")
    if not equals or not key or not value:
        raise BackendConfigError(
            f"the format is <backend>,<setting>=<value> or <setting>=<value> "
            f"(e.g. onnxruntime,default-max-batch-size=8), got '{text}'"
        )
    return backend, key, value


def settings(values: Iterable[tuple[str, str, str]]) -> BackendSettings:
    """Check every (backend, key, value); the last value of a repeated key wins, as in Triton."""
    out = BackendSettings()
    no_effect: dict[tuple[str, str], None] = {}
    for backend, key, value in values:
        where = f"backend '{backend}'" if backend else "every backend"
        if backend and backend not in KNOWN:
            raise BackendConfigError(
                f"--backend-config names backend '{backend}', which inferd does not have "
                f"(its backends: {', '.join(BACKENDS)})"
            )
        if key not in KNOWN[backend]:
            known = ", ".join(KNOWN[backend])
            raise BackendConfigError(
                f"--backend-config setting '{key}' for {where} is not implemented by inferd (known: {known})"
            )
        if key == DEFAULT_MAX_BATCH:
            out.max_batch[backend] = _whole(key, value, 0)
        elif key in ORT_THREADS:
            out.parameters.setdefault(backend, {})[key] = str(_whole(key, value, 0))
        elif key == "enable-global-threadpool":
            if _whole(key, value, 0) not in (0, 1):
                raise BackendConfigError(f"--backend-config onnxruntime,{key} must be 0 or 1, not '{value}'")
            if value.strip() != "0":
                raise BackendConfigError(
                    "--backend-config onnxruntime,enable-global-threadpool=1 is not implemented by inferd: each "
                    "ONNX model instance has its own thread pool (size it with intra_op_thread_count)"
                )
        else:
            no_effect[(backend, key)] = None
    return BackendSettings(out.max_batch, out.parameters, tuple(no_effect))


def _whole(key: str, value: str, least: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < least:
        raise BackendConfigError(f"--backend-config setting '{key}' must be a whole number >= {least}, not '{value}'")
    return int(text)
