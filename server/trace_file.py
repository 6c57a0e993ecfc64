"""Triton's ``triton`` trace mode: traces written as Triton's JSON trace files
(``--trace-config triton,file=<path>``, ``triton,log-frequency=N``), which its
``trace_summary.py`` reads.

A file is one JSON array. For each trace (a request, or an ensemble step with its ensemble's
trace id as ``parent_id``): first ``{"id", "model_name", "model_version"}`` (``request_id`` when
the request has one, ``parent_id`` when it has a parent), then one ``{"id", "timestamps":
[{"name", "ns"}]}`` per timestamp, in order: REQUEST_START (the core takes the request),
QUEUE_START, COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END (the
timestamps the statistics take; an ensemble has no COMPUTE_*, its steps have them),
REQUEST_END. Nanoseconds of the steady clock (``time.monotonic_ns``), as Triton's. Before them,
for an HTTP request, HTTP_RECV_START and HTTP_RECV_END: from when its route began reading the
body to when it had it all (Triton's start at the first byte; the headers come before); for a
unary gRPC request on the native front end, GRPC_WAITREAD_START and GRPC_WAITREAD_END: from when
grpc++ began the call and waited for its message to when it had read it, as in Triton. Those two
front ends also report the send, and the trace then ends with HTTP_SEND_START and HTTP_SEND_END
(or GRPC_SEND_*): from when the core answered to when the response was handed to the
connection (for gRPC, once grpc++ took the message and its status). Triton's trace_summary.py
summarizes a trace only if it has HTTP_RECV_START or GRPC_WAITREAD_START, and its front end's
part only with the *_SEND_END as well. At level TENSORS, then
``{"id", "activity", "tensor": {"name", "data", "shape", "dtype"}}`` for each input as queued
(TENSOR_QUEUE_INPUT) and each output (TENSOR_BACKEND_OUTPUT), with the tensor's whole data.

Where traces go (Triton's rules): with ``log-frequency`` 0 and no ``count``, each finished trace
is appended to ``<file>`` (``[`` first, ``]`` at shutdown); Triton keeps them in memory until
it exits, inferd writes them as they finish. Otherwise a setting collects its traces and writes
every ``log-frequency`` of them to ``<file>.<k>`` (k = 0, 1, ...), and, once ``count`` is used
up and its last trace has finished, what it collected; at shutdown the rest goes to the next
``<file>.<k>`` (or to ``<file>`` when ``log-frequency`` is 0).

Cost: the event loop keeps a few integers per trace and, at TENSORS, a copy of each tensor (a
client's shared memory may change once answered); the file writer's thread formats the JSON
and writes it. Traces waiting for that thread are bounded (MAX_QUEUED_BYTES): past it they are
dropped, with a warning. A file that cannot be written is logged (ERROR) and never fails a
request.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from ..protocol.codec import as_bytes, of_array

if TYPE_CHECKING:
    from .stats import ExecutionTimes

log = logging.getLogger("inferd")

# A front end's reading of the request: Triton's timestamp names.
_RECEIVED = {"HTTP": ("HTTP_RECV_START", "HTTP_RECV_END"), "GRPC": ("GRPC_WAITREAD_START", "GRPC_WAITREAD_END")}
# Its sending of the answer.
_SENT = {"HTTP": ("HTTP_SEND_START", "HTTP_SEND_END"), "GRPC": ("GRPC_SEND_START", "GRPC_SEND_END")}
MAX_QUEUED_BYTES = 64 << 20  # traces formatted and written by the writer thread, not yet done
_FLOATS = frozenset(("FP16", "FP32", "FP64", "BF16"))

# One finished trace: id, parent id (0: none), model name, model version, request id,
# timestamps (name, ns), tensors (activity, name, array, datatype).
Record = tuple[int, int, str, int, str, list[tuple[str, int]], list[tuple[str, str, Any, str]]]


class FileSetting(Protocol):
    """What a trace setting (tracing._Setting) holds for trace files."""

    key: int
    count: int
    log_frequency: int
    inflight: int  # its traces sampled and not finished
    pending: int  # its finished traces collected for the next <file>.<k>


class FileTracer:
    """Trace ids, each finished trace's destination, and the writer thread of one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ids = itertools.count(1)
        self.writer = TraceFileWriter(path)

    def start(
        self,
        setting: FileSetting,
        model: str,
        version: str,
        request_id: str,
        inputs: Mapping[str, Any],
        timestamps: bool,
        tensors: bool,
        received: tuple[str, int, int] | None = None,
    ) -> FileTrace:
        setting.inflight += 1
        trace = FileTrace(self, setting, [], next(self.ids), 0, model, version, request_id, timestamps, tensors)
        trace.received = received
        if tensors:
            trace.record_tensors("TENSOR_QUEUE_INPUT", inputs)
        return trace

    def finished(self, trace: FileTrace) -> None:
        """A request's trace (with its ensemble steps') has ended: append it to <file>, or
        collect it for <file>.<k>."""
        s = trace.setting
        s.inflight -= 1
        if s.log_frequency == 0 and s.count < 0 and s.pending == 0:
            self.writer.submit(trace.family, None, False)
            return
        pending = s.pending + 1
        flush = (s.log_frequency > 0 and pending >= s.log_frequency) or (s.count == 0 and s.inflight == 0)
        if self.writer.submit(trace.family, s.key, flush):
            s.pending = 0 if flush else pending
        elif flush and s.pending:
            self.writer.flush(s.key, True)
            s.pending = 0

    def flush(self, setting: FileSetting) -> None:
        """Write what ``setting`` collected, as Triton does when a setting is replaced or at
        shutdown: to <file>.<k> if it has a log frequency, else to <file>."""
        if setting.pending:
            self.writer.flush(setting.key, setting.log_frequency != 0)
            setting.pending = 0

    def shutdown(self) -> None:
        self.writer.close()


class FileTrace:
    """One traced request, or an ensemble step inside one: plain values until it ends."""

    __slots__ = (
        "owner",
        "setting",
        "family",
        "id",
        "parent_id",
        "model",
        "version",
        "request_id",
        "start",
        "queued",
        "computed",
        "timestamps",
        "tensors",
        "tensor_records",
        "composite",
        "root",
        "received",
        "unsent",
    )

    def __init__(
        self,
        owner: FileTracer,
        setting: FileSetting,
        family: list[Record],
        trace_id: int,
        parent_id: int,
        model: str,
        version: str,
        request_id: str,
        timestamps: bool,
        tensors: bool,
    ) -> None:
        self.owner = owner
        self.setting = setting
        self.family = family  # the records of the request's traces, written together
        self.id = trace_id
        self.parent_id = parent_id
        self.model = model
        self.version = version
        self.request_id = request_id
        self.start = time.monotonic_ns()
        self.queued = 0
        self.computed: tuple[int, int, int, int] | None = None
        self.timestamps = timestamps
        self.tensors = tensors
        self.tensor_records: list[tuple[str, str, Any, str]] = []
        self.composite = False  # an ensemble: its steps compute, it does not
        self.root = parent_id == 0
        self.received: tuple[str, int, int] | None = None  # (front end, start, end) of reading the request
        # A root trace answered and waiting for its front end's sent(): its timestamps so far.
        self.unsent: list[tuple[str, int]] | None = None

    def compute(self, enqueue_ns: int, started_ns: int, times: ExecutionTimes) -> None:
        """QUEUE_START and the COMPUTE_* timestamps, from the statistics' own (monotonic ns)."""
        self.queued = enqueue_ns
        if not self.composite:
            t1 = started_ns + times.compute_input_ns
            t2 = t1 + times.compute_infer_ns
            self.computed = (started_ns, t1, t2, t2 + times.compute_output_ns)

    def step(self, model: str, version: str, index: int, inputs: Mapping[str, Any] | None = None) -> FileTrace:
        """The trace of an ensemble step, started now; its parent is this trace."""
        child = FileTrace(
            self.owner,
            self.setting,
            self.family,
            next(self.owner.ids),
            self.id,
            model,
            version,
            "",
            self.timestamps,
            self.tensors,
        )
        if self.tensors and inputs is not None:
            child.record_tensors("TENSOR_QUEUE_INPUT", inputs)
        return child

    def record_tensors(self, activity: str, tensors: Mapping[str, Any]) -> None:
        for name, array in tensors.items():
            if array is None:
                continue
            copy = np.array(array, copy=True)  # the data as it is now (shared memory may change)
            try:
                datatype = of_array(copy).name
            except Exception:
                datatype = str(copy.dtype)
            self.tensor_records.append((activity, name, copy, datatype))

    def tensor_outputs(self, outputs: Mapping[str, Any]) -> None:
        if self.tensors:
            self.record_tensors("TENSOR_BACKEND_OUTPUT", outputs)

    def end(self, version: str = "", outputs: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        end = time.monotonic_ns()
        if outputs is not None:
            self.tensor_outputs(outputs)
        stamps: list[tuple[str, int]] = []
        if self.timestamps:
            if self.received is not None:
                frontend, began, read = self.received
                start_name, end_name = _RECEIVED[frontend]
                stamps += ((start_name, began), (end_name, read))
            stamps.append(("REQUEST_START", self.start))
            if self.queued:
                stamps.append(("QUEUE_START", self.queued))
            c = self.computed
            if c is not None:
                stamps += (
                    ("COMPUTE_START", c[0]),
                    ("COMPUTE_INPUT_END", c[1]),
                    ("COMPUTE_OUTPUT_START", c[2]),
                    ("COMPUTE_END", c[3]),
                )
            stamps.append(("REQUEST_END", end))
        resolved = version or self.version
        number = int(resolved) if resolved.isdigit() else -1
        self.family.append((self.id, self.parent_id, self.model, number, self.request_id, stamps, self.tensor_records))
        if not self.root:
            return
        if self.received is not None and error is None:
            self.unsent = stamps  # the front end that read the request reports the send: sent()
            return
        self.owner.finished(self)

    def sent(self, start_ns: int, end_ns: int) -> None:
        """The front end handed the answer to the connection (see the module's docstring): the
        trace is complete. Only for an answered root trace whose front end reported the read;
        any other call does nothing."""
        stamps, self.unsent = self.unsent, None
        if stamps is None or self.received is None:
            return
        if self.timestamps:
            start_name, end_name = _SENT[self.received[0]]
            stamps += ((start_name, start_ns), (end_name, end_ns))
        self.owner.finished(self)


# --- the writer thread ----------------------------------------------------------------------------
class TraceFileWriter:
    """Formats finished traces and writes them on its own thread: appended to ``path``, or
    collected per setting (``group``) and written to ``path.<k>``. The thread takes what waits
    every DRAIN_S (or at once for a flush or the close), not per trace: waking it for each
    request would cost the request path a thread switch every time."""

    DRAIN_S = 0.02

    def __init__(self, path: str) -> None:
        self.path = path
        self._items: list[tuple[Any, ...] | None] = []  # waiting for the thread, in order
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._queued = 0  # estimated bytes waiting for the thread
        self.dropped = 0
        self._index = 0
        self._main: IO[str] | None = None
        self._main_failed = False
        self._groups: dict[int, list[str]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inferd-trace-file", daemon=True)
        self._thread.start()

    def submit(self, family: list[Record], group: int | None, flush: bool) -> bool:
        """Queue a finished request's traces; False (dropped) while too much waits."""
        size = _estimate(family)
        with self._lock:
            if self._queued + size > MAX_QUEUED_BYTES:
                if not self.dropped:
                    log.warning(
                        "tracing: more than %d MiB of traces wait to be written to %s; traces are dropped",
                        MAX_QUEUED_BYTES >> 20,
                        self.path,
                    )
                self.dropped += 1
                return False
            self._queued += size
            self._items.append(("trace", family, group, flush, size))
        return True

    def flush(self, group: int, indexed: bool) -> None:
        with self._lock:
            self._items.append(("flush", group, indexed))
        self._wake.set()

    def close(self) -> None:
        """Write what is queued, end ``path``'s array, stop the thread."""
        if not self._closed:
            self._closed = True
            with self._lock:
                self._items.append(None)
            self._wake.set()
        self._thread.join(60)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.DRAIN_S)
            self._wake.clear()
            with self._lock:
                items, self._items = self._items, []
            for item in items:
                if not self._handle(item):
                    return
            if self._main is not None:
                try:
                    self._main.flush()
                except OSError as e:
                    log.error("failed creating trace file: %s", e)

    def _handle(self, item: tuple[Any, ...] | None) -> bool:
        """One waiting item; False once the writer is closed."""
        try:
            if item is None:
                self._finish()
                return False
            if item[0] == "trace":
                _, family, group, flush, size = item
                try:
                    self._trace(format_family(family), group, flush)
                finally:
                    with self._lock:
                        self._queued -= size
            else:
                _, group, indexed = item
                self._flush(group, indexed)
        except Exception as e:  # a trace must never take the writer down
            log.error("failed creating trace file: %s", e)
        return True

    def _trace(self, text: str, group: int | None, flush: bool) -> None:
        if group is None:
            self._append(text)
            return
        self._groups.setdefault(group, []).append(text)
        if flush:
            self._flush(group, True)

    def _flush(self, group: int, indexed: bool) -> None:
        texts = self._groups.pop(group, None)
        if not texts:
            return
        if not indexed:
            self._append(",".join(texts))
            return
        name = f"{self.path}.{self._index}"
        self._index += 1
        partial = name + ".partial"
        try:
            with open(partial, "w", encoding="utf-8") as f:
                f.write("[" + ",".join(texts) + "]")
            os.replace(partial, name)  # a <file>.<k> that exists is complete
        except OSError as e:
            log.error("failed creating trace file: %s", e)
            try:
                os.unlink(partial)
            except OSError:
                pass

    def _append(self, text: str) -> None:
        if self._main_failed:
            return
        try:
            if self._main is None:
                self._main = open(self.path, "w", encoding="utf-8")
                self._main.write("[" + text)
            else:
                self._main.write("," + text)
        except OSError as e:
            self._main_failed = True  # logged once; later traces for it are dropped
            log.error("failed creating trace file: %s", e)

    def _finish(self) -> None:
        for group in list(self._groups):
            self._flush(group, False)
        if self._main is not None:
            try:
                self._main.write("]")
                self._main.close()
            except OSError as e:
                log.error("failed creating trace file: %s", e)
            self._main = None


def _estimate(family: list[Record]) -> int:
    size = 0
    for record in family:
        size += 128 * (len(record[5]) + 1)
        for _, _, array, _ in record[6]:
            size += array.size * 64 if array.dtype == object else array.nbytes * 3
    return size


# --- Triton's JSON --------------------------------------------------------------------------------
def format_family(family: list[Record]) -> str:
    """A request's traces as Triton's objects, comma-separated (no brackets): each trace's
    model object, then its timestamps, then its tensors; the request's own trace first."""
    parts: list[str] = []
    for trace_id, parent_id, model, version, request_id, stamps, tensors in sorted(family):
        head: dict[str, Any] = {"id": trace_id, "model_name": model, "model_version": version}
        if request_id:
            head["request_id"] = request_id
        if parent_id:
            head["parent_id"] = parent_id
        parts.append(json.dumps(head, separators=(",", ":")))
        for name, ns in stamps:
            parts.append(f'{{"id":{trace_id},"timestamps":[{{"name":"{name}","ns":{ns}}}]}}')
        for activity, name, array, datatype in tensors:
            tensor = {
                "name": name,
                "data": tensor_data(array, datatype),
                "shape": ",".join(str(d) for d in array.shape),
                "dtype": datatype,
            }
            parts.append(json.dumps({"id": trace_id, "activity": activity, "tensor": tensor}, separators=(",", ":")))
    return ",".join(parts)


def tensor_data(array: np.ndarray, datatype: str) -> str:
    """A tensor's elements, comma-separated, row-major: numbers as C++ streams them (floats with
    6 significant digits, booleans 1/0), BYTES each as a quoted CSV field (UTF-8, invalid bytes
    replaced), which is how trace_summary.py reads them."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return ",".join('"' + as_bytes(v).decode("utf-8", "replace").replace('"', '""') + '"' for v in flat.tolist())
    if datatype == "BOOL":
        return ",".join("1" if v else "0" for v in flat.tolist())
    if datatype in _FLOATS:
        return ",".join([f"{v:g}" for v in flat.astype(np.float64).tolist()])
    return ",".join(map(str, flat.tolist()))
