"""Asynchronous jobs: a JSON Lines file of requests submitted once, run in the background by the
batch front end (batch.py), its answers fetched when done. The HTTP routes are in http_jobs.py.

A job is QUEUED, then RUNNING, then SUCCEEDED (every line was answered; lines that failed are
error lines in the results, counted in ``failed``), CANCELLED (its answers so far are kept) or
FAILED (it could not run at all, e.g. its model was unloaded meanwhile: ``error`` says why).
Jobs run one at a time, in submission order, each with its own number of requests in flight;
they share the model's queue with every other client.

Bounded: at most ``max_jobs`` jobs are kept (queued, running or finished and not yet deleted);
a submission beyond that is UNAVAILABLE until one is deleted, so results a client has not
fetched are never dropped behind its back. Each job's input and answers are files in one
temporary folder, removed with the job and, for all of them, when the server stops. Those files
together stay within ``max_bytes`` (``--max-job-bytes``): a submission whose input does not fit
is RESOURCE_EXHAUSTED, and a job whose next answer line would not fit stops there as FAILED,
keeping the answers written so far (an answer can be far larger than its request line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ...protocol.errors import InferdError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ..core import InferenceCore
from .batch import DEFAULT_CONCURRENCY, BatchRunner, Summary
from .internal_error import internal_error
from .request_limits import DEFAULT_MAX_ELEMENTS

log = logging.getLogger(__name__)

MAX_JOBS = 16
MAX_BYTES = 4 << 30  # the jobs' files on disk, all together (--max-job-bytes)
MAX_CONCURRENCY = 256
FINISHED = frozenset({"SUCCEEDED", "CANCELLED", "FAILED"})


@dataclass
class Job:
    id: str
    model: str
    version: str
    concurrency: int
    folder: Path
    status: str = "QUEUED"
    summary: Summary = field(default_factory=Summary)
    error: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    task: asyncio.Task[None] | None = None
    bytes: int = 0  # its files' size: the input, and the answers written so far

    @property
    def input(self) -> Path:
        return self.folder / "requests.jsonl"

    @property
    def output(self) -> Path:
        return self.folder / "answers.jsonl"

    def describe(self) -> dict[str, Any]:
        s = self.summary
        doc: dict[str, Any] = {
            "id": self.id,
            "model_name": self.model,
            "model_version": self.version,
            "status": self.status,
            "concurrency": self.concurrency,
            "lines": s.lines,
            "answered": s.answered,
            "failed": s.failed,
            "created": _iso(self.created),
        }
        if self.started is not None:
            doc["started"] = _iso(self.started)
        if self.finished is not None:
            doc["finished"] = _iso(self.finished)
        if self.error:
            doc["error"] = self.error
        return doc


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class JobStore:
    def __init__(
        self,
        core: InferenceCore,
        max_jobs: int = MAX_JOBS,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.core = core
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.used_bytes = 0  # every kept job's files
        self.max_elements = max_elements  # per line, as per request (--max-request-elements)
        self._jobs: dict[str, Job] = {}
        self._queue: asyncio.Queue[Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._root: Path | None = None

    async def submit(self, model: str, version: str, body: memoryview, concurrency: int = DEFAULT_CONCURRENCY) -> Job:
        """Queue ``body`` (JSON Lines) for ``model``: refused at once when the model is not
        ready, the concurrency is out of range or ``max_jobs`` are kept."""
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidArgument(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
        served = self.core.model(model, version)  # NOT_FOUND / UNAVAILABLE as for an infer request
        if len(self._jobs) >= self.max_jobs:
            raise Unavailable(
                f"the server keeps at most {self.max_jobs} jobs and has that many; delete finished ones "
                "(DELETE /v2/jobs/<id>) to submit more"
            )
        if self.used_bytes + len(body) > self.max_bytes:
            raise ResourceExhausted(
                f"the job's {len(body)} bytes do not fit in the {self.max_bytes - self.used_bytes} bytes left of the "
                f"server's {self.max_bytes} for jobs' files (--max-job-bytes); delete finished jobs to make room"
            )
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="inferd-jobs-"))
        job_id = uuid.uuid4().hex
        job = Job(job_id, model, version, concurrency, self._root / job_id)
        job.folder.mkdir()
        await asyncio.get_running_loop().run_in_executor(None, job.input.write_bytes, body)
        self._jobs[job.id] = job
        self._charge(job, len(body))
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.ensure_future(self._work(self._queue))
        self._queue.put_nowait(job)
        log.info("job %s: %d bytes for model '%s' version %s queued", job.id, len(body), model, served.version)
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' is not found")
        return job

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created)

    def results(self, job_id: str) -> Path:
        job = self.get(job_id)
        if job.status not in FINISHED:
            raise Unavailable(f"job '{job_id}' is {job.status}: its results are ready once it has finished")
        return job.output

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status == "QUEUED":
            self._finish(job, "CANCELLED")
        elif job.status == "RUNNING" and job.task is not None:
            job.task.cancel()
        return job

    async def delete(self, job_id: str) -> Job:
        job = self.cancel(job_id)
        if job.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(job.task)
        del self._jobs[job_id]
        shutil.rmtree(job.folder, ignore_errors=True)
        self.used_bytes -= job.bytes
        return job

    def _charge(self, job: Job, n: int) -> None:
        job.bytes += n
        self.used_bytes += n

    async def close(self) -> None:
        """Server stop: every job cancelled, every file removed."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for job in list(self._jobs.values()):
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task
        self._jobs.clear()
        self.used_bytes = 0
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    # --- running ------------------------------------------------------------------------
    async def _work(self, queue: asyncio.Queue[Job]) -> None:
        while True:
            job = await queue.get()
            if job.status != "QUEUED" or job.id not in self._jobs:
                continue  # cancelled or deleted while it waited
            job.task = asyncio.ensure_future(self._run(job))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(job.task)  # a cancelled job must not end the worker

    async def _run(self, job: Job) -> None:
        job.status, job.started = "RUNNING", time.time()
        try:
            runner = BatchRunner(self.core, job.model, job.version, job.concurrency, max_elements=self.max_elements)
            with job.input.open("rb") as source, job.output.open("wb") as sink:
                await runner.run(source, _Budgeted(sink, self, job), job.summary)
        except asyncio.CancelledError:
            self._finish(job, "CANCELLED")
            raise
        except InferdError as e:  # the job as a whole (its lines' errors are in its results)
            self._finish(job, "FAILED", e.message)
            return
        except Exception as e:  # a server fault: logged; the job says only "internal error"
            self._finish(job, "FAILED", internal_error(e, f"job {job.id}"))
            return
        self._finish(job, "SUCCEEDED")

    def _finish(self, job: Job, status: str, error: str = "") -> None:
        job.status, job.error, job.finished = status, error, time.time()
        if not job.output.exists():
            job.output.touch()
        log.info("job %s %s: %s", job.id, status.lower(), job.summary.text())


class _Budgeted:
    """A job's answers file, refusing the answer line that would take the store past its bytes."""

    def __init__(self, sink: IO[bytes], store: JobStore, job: Job) -> None:
        self._sink = sink
        self._store = store
        self._job = job
        self._lines = 0

    def write(self, data: bytes) -> int:
        store = self._store
        if store.used_bytes + len(data) > store.max_bytes:
            raise ResourceExhausted(
                f"stopped after {self._lines} answer lines: the next one "
                f"({len(data)} bytes) would take the jobs' files past the server's {store.max_bytes} bytes "
                "(--max-job-bytes); the answers so far are kept"
            )
        store._charge(self._job, len(data))
        self._lines += 1
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()
