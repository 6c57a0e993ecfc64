"""The response cache (Triton's ``local`` cache): responses of models that opt in with
``response_cache { enable: true }``, answered again without running the model.

One :class:`ResponseCache` per server (``--cache-config local,size=<bytes>``), shared by every
model and bounded by bytes with least-recently-used eviction. Each loaded model version gets a
:class:`VersionCache` with a namespace of its own, so a version that is reloaded, replaced or
unloaded never answers from its predecessor's entries; its entries are dropped when the manager
retires it.

**The key.** A 256-bit BLAKE2b digest over, in an unambiguous length-prefixed encoding: every
input's name (sorted, so the front ends' orders agree), numpy dtype string, shape and bytes
(BYTES elements one by one, with their Python type), the requested outputs in order, and every
request parameter except the scheduling-only ``priority`` and ``timeout``; the model, version
and load are the namespace. Only the digest is kept (not the inputs, which would double the
memory a large input costs): two different requests would need a BLAKE2b-256 collision to
share an answer. The request id is not in the key, as in Triton.

**Concurrent identical requests compute once.** The first miss for a key runs the model; the
identical requests arriving meanwhile wait for its result and count as hits. If that run
fails or is cancelled, each waiting request looks again and one of them runs the model: a
failure is never shared, and never cached.

**What bypasses it.** Requests whose outputs go to shared memory (``InferRequest.output_regions``),
as in Triton: neither answered from the cache nor stored.

**What is stored.** A copy of each output, made read-only: neither a later request nor the
backend (which may reuse its buffers) can change a cached answer. Hits return those read-only
arrays in a fresh dict.

Everything runs on the event loop (ModelVersion.infer), so nothing here takes a lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from ..protocol import codec
from ..protocol.errors import ModelLoadError
from ..protocol.model_spec import ModelSpec
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.types import InferRequest, Scalar
from . import shm_guard
from .scheduling.work import Work
from .stats import ModelStats

log = logging.getLogger(__name__)

# Request parameters that only decide when a request runs, never what it answers.
SCHEDULING_PARAMETERS = frozenset({"priority", "timeout"})
# What an entry costs beyond its outputs' bytes (the key, the bookkeeping), so that even empty
# outputs fill the cache.
ENTRY_OVERHEAD_BYTES = 64
# Inputs this large are hashed on a thread (hashlib releases the GIL), not on the event loop.
HASH_OFFLOAD_BYTES = 1 << 20

_U64 = struct.Struct("<Q")
_namespaces = itertools.count(1)

Outputs = dict[str, np.ndarray]


class ResponseCache:
    """The server's cache: entries keyed by (namespace, digest), bounded by ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the response cache needs a size of 1 byte or more, not {capacity}")
        self.capacity = capacity
        self.used = 0
        self._entries: OrderedDict[tuple[int, bytes], tuple[Outputs, int]] = OrderedDict()
        self._keys: dict[int, set[bytes]] = {}  # namespace -> its digests, to drop a version
        # Triton's local-cache figures (nv_cache_*), server-wide.
        self.lookups = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.lookup_ns = 0
        self.insert_ns = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def utilization(self) -> float:
        return self.used / self.capacity

    def lookup(self, namespace: int, digest: bytes) -> Outputs | None:
        """The cached outputs, now the most recently used, or None. Hits and misses are
        counted by the caller, which knows whether an identical request is computing."""
        start = time.monotonic_ns()
        entry = self._entries.get((namespace, digest))
        if entry is not None:
            self._entries.move_to_end((namespace, digest))
        self.lookups += 1
        self.lookup_ns += time.monotonic_ns() - start
        return None if entry is None else entry[0]

    def insert(self, namespace: int, digest: bytes, outputs: Mapping[str, np.ndarray]) -> Outputs | None:
        """Store read-only copies of ``outputs``, evicting the least recently used entries, and
        return them; None (nothing stored) when they alone are larger than the cache."""
        start = time.monotonic_ns()
        try:
            size = entry_bytes(outputs)
            if size > self.capacity:
                return None
            key = (namespace, digest)
            if key in self._entries:  # cannot happen while one request computes per key; keep one
                self._entries.move_to_end(key)
                return self._entries[key][0]
            while self.used + size > self.capacity:
                (ns, old), (_, old_size) = self._entries.popitem(last=False)
                self._forget(ns, old, old_size)
                self.evictions += 1
            stored = {name: _frozen_copy(a) for name, a in outputs.items()}
            self._entries[key] = (stored, size)
            self._keys.setdefault(namespace, set()).add(digest)
            self.used += size
            return stored
        finally:
            self.insert_ns += time.monotonic_ns() - start

    def drop(self, namespace: int) -> int:
        """Remove every entry of one namespace (a version that stops serving); how many."""
        digests = self._keys.pop(namespace, set())
        for digest in digests:
            _, size = self._entries.pop((namespace, digest))
            self.used -= size
        return len(digests)

    def _forget(self, namespace: int, digest: bytes, size: int) -> None:
        self.used -= size
        keys = self._keys[namespace]
        keys.discard(digest)
        if not keys:
            del self._keys[namespace]

    def version(self, label: str) -> VersionCache:
        """A handle for one loaded model version, with a namespace of its own."""
        return VersionCache(self, label)


class VersionCache:
    """One model version's view of the cache: its namespace, the key, the requests computing now."""

    def __init__(self, store: ResponseCache, label: str) -> None:
        self.store = store
        self.label = label
        self.namespace = next(_namespaces)
        self.closed = False
        self._computing: dict[bytes, asyncio.Future[Outputs | None]] = {}
        self._warned_size = False

    def close(self) -> None:
        """The version stops serving: drop its entries and store nothing more."""
        self.closed = True
        self.store.drop(self.namespace)

    async def infer(
        self,
        request: InferRequest,
        outputs: list[str],
        work: Work,
        stats: ModelStats,
        submit: Callable[[Work], Awaitable[Outputs]],
    ) -> Outputs:
        """Answer ``work`` from the cache, or run it through ``submit`` and cache the result.
        Statistics as Triton keeps them: a hit counts as a successful request (and its queue
        time, before the lookup) with a ``cache_hit`` duration, never as an inference or an
        execution; a miss runs as usual and adds its lookup and insertion time as
        ``cache_miss`` (and to the request's duration)."""
        if request.output_regions or self.closed:  # outputs written into shared memory
            return await submit(work)
        # Before anything reads the inputs: a shared-memory object truncated while they are
        # hashed or computed on leaves zeros behind (shm_guard.py), and that result is not kept.
        faults = shm_guard.epoch()
        lookup_start = time.monotonic_ns()
        if work.nbytes() >= HASH_OFFLOAD_BYTES:
            loop = asyncio.get_running_loop()
            digest = await loop.run_in_executor(None, request_digest, work.inputs, outputs, request.parameters)
        else:
            digest = request_digest(work.inputs, outputs, request.parameters)
        while True:
            found = self.store.lookup(self.namespace, digest)
            if found is None:
                computing = self._computing.get(digest)
                if computing is None:
                    break
                # Shielded: a waiting request that is cancelled must not cancel the run it waits for.
                found = await asyncio.shield(computing)
                if found is None:  # that run failed: look again, and maybe run it ourselves
                    continue
            self.store.hits += 1
            now = time.monotonic_ns()
            stats.record_cache_hit(now - work.enqueue_ns, lookup_start - work.enqueue_ns, now - lookup_start)
            return dict(found)
        self.store.misses += 1
        lookup_ns = time.monotonic_ns() - lookup_start
        done: asyncio.Future[Outputs | None] = asyncio.get_running_loop().create_future()
        self._computing[digest] = done
        shared: Outputs | None = None  # what the identical requests waiting on this run get
        try:
            result = await submit(work)
            if shm_guard.epoch() != faults:  # maybe computed from lost pages: neither kept nor shared
                return result  # (the request that used them fails in the core)
            insert_start = time.monotonic_ns()
            shared = self.store.insert(self.namespace, digest, result) if not self.closed else None
            if shared is None:  # not stored: they get read-only views of this run's outputs
                shared = {name: _read_only(a) for name, a in result.items()}
                if not self.closed and not self._warned_size:
                    self._warned_size = True
                    log.warning(
                        "%s: a response of %d bytes is larger than the whole response cache (%d bytes): not cached",
                        self.label,
                        entry_bytes(result),
                        self.store.capacity,
                    )
            stats.record_cache_miss(lookup_ns + time.monotonic_ns() - insert_start)
        finally:  # failed or cancelled: the waiting requests look again (None), nothing is cached
            del self._computing[digest]
            done.set_result(shared)
        return result


def request_digest(inputs: Mapping[str, np.ndarray], outputs: list[str], parameters: Mapping[str, Scalar]) -> bytes:
    """The key of one request (see the module's docstring for what it covers)."""
    h = hashlib.blake2b(digest_size=32)
    _text(h, "inputs")
    h.update(_U64.pack(len(inputs)))
    for name in sorted(inputs):
        array = inputs[name]
        _text(h, name)
        _text(h, array.dtype.str)
        h.update(_U64.pack(array.ndim))
        for d in array.shape:
            h.update(_U64.pack(d))
        if array.dtype.hasobject:
            for element in array.ravel():
                _text(h, type(element).__name__)
                _blob(h, codec.as_bytes(element))
        else:
            # The buffer itself: no copy for the C-contiguous arrays decoded from the wire.
            data = array if array.flags.c_contiguous else np.ascontiguousarray(array)
            _blob(h, data.reshape(-1).view(np.uint8).data)
    _text(h, "outputs")
    h.update(_U64.pack(len(outputs)))
    for name in outputs:
        _text(h, name)
    keyed = sorted((k, v) for k, v in parameters.items() if k not in SCHEDULING_PARAMETERS)
    _text(h, "parameters")
    h.update(_U64.pack(len(keyed)))
    for key, value in keyed:
        _text(h, key)
        _text(h, type(value).__name__)  # true and 1 are different answers' keys
        _text(h, repr(value))
    return h.digest()


def _text(h: hashlib.blake2b, text: str) -> None:
    _blob(h, text.encode("utf-8", "surrogatepass"))


def _blob(h: hashlib.blake2b, data: bytes | memoryview) -> None:
    h.update(_U64.pack(len(data)))
    h.update(data)


def entry_bytes(outputs: Mapping[str, np.ndarray]) -> int:
    """What one cached response counts against the cache's size: its outputs' bytes (BYTES
    elements as their wire size, 4-byte length included) plus ENTRY_OVERHEAD_BYTES."""
    total = ENTRY_OVERHEAD_BYTES
    for array in outputs.values():
        if array.dtype.hasobject:
            total += sum(4 + len(codec.as_bytes(e)) for e in array.ravel())
        else:
            total += array.nbytes
    return total


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    return _read_only(np.array(array, copy=True, order="C"))


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


# --- load time --------------------------------------------------------------------------------


def version_cache(
    spec: ModelSpec, config: mc.ModelConfig, cache: ResponseCache | None, label: str
) -> VersionCache | None:
    """The cache of a version being loaded, or None. Refuses, as Triton does, the models it
    cannot serve from a cache; a model that asks for it on a server without one loads without
    it, as in Triton, and says so."""
    if not spec.response_cache.enable:
        return None
    if spec.model_transaction_policy.decoupled:
        raise ModelLoadError(
            f"Response Cache does not currently support model '{spec.name}' with 'decoupled' transaction "
            "policy. Please disable the response cache (response_cache { enable: false })."
        )
    if config.HasField("sequence_batching"):
        raise ModelLoadError(
            f"Response Cache does not currently support model '{spec.name}' with sequence batching scheduler. "
            "Please disable the response cache (response_cache { enable: false })."
        )
    if cache is None:
        log.warning(
            "%s: response_cache { enable: true } has no effect: the server has no response cache "
            "(start it with --cache-config local,size=<bytes>)",
            label,
        )
        return None
    return cache.version(label)
