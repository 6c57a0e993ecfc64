"""The guard against a client that shrinks a registered shared-memory object.

The server maps a region's object once, at registration (shm.py). The object's owner can
truncate it later, at any moment, also while a request reads or writes it; an access to a page
that no longer exists raises SIGBUS, which would end the server from whatever thread touched
it (numpy, onnxruntime, a backend). With the native module (``native/shm_guard.c``, built on
Linux by ``setup.py``) a fault inside a watched mapping gets a private zero page instead, and
is counted:

- the region is broken from then on: every later request naming it is refused until it is
  registered again (:meth:`Watch.broken`);
- a request that used the region when or after the fault happened fails with INVALID_ARGUMENT
  (:func:`epoch` before its first region access; :func:`check` of its regions after its last,
  which costs one comparison unless some region faulted meanwhile); requests on other regions
  go on. No answer computed while any watched mapping faulted is cached (the cache compares
  :func:`epoch` around its run: it cannot tell which regions fed a step).

Without the native module (no C compiler at install) nothing is guarded: a truncation can still
end the server, as it does Triton. ``available()`` says which; the server logs it when client
shared memory is on.
"""

from __future__ import annotations

import mmap
import weakref
from collections.abc import Iterable
from types import ModuleType

from ..protocol.errors import InvalidArgument

_native: ModuleType | None
try:
    from . import _shm_guard as _native  # type: ignore[attr-defined,no-redef,unused-ignore]
except ImportError:  # not built: nothing is guarded
    _native = None

LOST = (
    "the shared memory object behind a region this request used was truncated by its owner while the "
    "server read or wrote it, so the request's data was lost; register the region again"
)


def available() -> bool:
    return _native is not None


def epoch() -> int:
    """Faults taken in watched mappings so far (0 without the native module)."""
    return _native.epoch() if _native is not None else 0


def check(since: int, watches: Iterable[Watch]) -> None:
    """INVALID_ARGUMENT if one of ``watches`` (a request's regions) lost a page: the test of
    each runs only when some watched mapping faulted after :func:`epoch` gave ``since``."""
    if _native is not None and _native.epoch() != since and any(w.broken() for w in watches):
        raise InvalidArgument(LOST)


class Watch:
    """One mapping under the guard, from :meth:`of` until its mapping is closed or collected."""

    def __init__(self, slot: int) -> None:
        self.slot = slot

    @classmethod
    def of(cls, mapping: mmap.mmap) -> Watch | None:
        if _native is None:
            return None
        watch = cls(_native.watch(mapping))
        # Also when the mapping outlives its registration (a request still holds a view).
        weakref.finalize(mapping, watch.release)
        return watch

    def broken(self) -> bool:
        """Whether a page of the mapping was lost (its object shrank under it)."""
        return _native is not None and self.slot >= 0 and _native.faults(self.slot) > 0

    def release(self) -> None:
        if _native is not None and self.slot >= 0:
            _native.unwatch(self.slot)
        self.slot = -1
