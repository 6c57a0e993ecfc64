"""Keep the server's long-lived objects out of CPython's full garbage collections.

Most of a loaded server's heap lives as long as the server or a model: modules, backends,
sessions, configs. A full collection walks all of it while holding the GIL, and CPython runs one
once the objects promoted since the last exceed a quarter of the oldest generation. Under load
every young collection promotes the requests in flight, so full collections come every second or
two, each stalling the event loop and the instance threads for tens of milliseconds and walking
memory the compute then fetches back (perf/reports/2026-12-07-mlp-against-triton.md).

What survives a full collection is live, so freezing it then (``gc.freeze``) moves it out of
every later collection without collecting twice. That is done once after each change to the
loaded models: after a load, the next full collection freezes the new model's objects with
everything else; an unload first unfreezes, so that the model's own cycles (a Python model's
module and functions) are collected by that next collection instead of staying frozen. Between
changes, full collections walk only what was created since.

A cycle that is live at the freeze and dies later (a request in flight then) stays in memory
until the next unload unfreezes it: a few hundred objects per load at most.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

_OLDEST = 2  # gc.collect's generation for a full collection
_lock = threading.Lock()
_pending = False  # freeze after the next full collection
_installed = False


def _after_collection(phase: str, info: dict[str, Any]) -> None:
    global _pending
    if phase == "stop" and _pending and info.get("generation") == _OLDEST:
        _pending = False
        gc.freeze()


def _install() -> None:
    global _installed
    if not _installed:
        gc.callbacks.append(_after_collection)
        _installed = True


def models_loaded() -> None:
    """A model was loaded: freeze what lives after the next full collection."""
    global _pending
    with _lock:
        _install()
        _pending = True


def models_unloaded() -> None:
    """A model was unloaded: let the next full collection see (and free) everything again,
    then freeze what it leaves."""
    global _pending
    with _lock:
        _install()
        gc.unfreeze()
        _pending = True
