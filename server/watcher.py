"""Poll mode: watch the repository folders and load, reload or unload models as it changes.

Safety rule (why poll mode is safe here, where Triton calls its own unsafe for production): a
model folder is acted on only once its fingerprint, (relative path, size, mtime_ns) of every
file under it, is identical in two consecutive scans and differs from what was last acted on.
A folder still being copied changes between scans, so a half-written model is never loaded.
A folder must be absent from two consecutive scans before its model is unloaded, so replacing
a folder with ``rm -rf`` + ``cp -r`` does not cause an outage. The fully atomic way to add a
model is to copy it to a hidden folder (``.name``, never scanned) and rename it into place.

Whatever is acted on goes through the manager, which reloads only versions whose config or
files changed and keeps the serving versions when a new one fails. Scans walk the file system
in a thread of their own, so the event loop never waits on the disk and a slow model load
(running in the default executor) never delays a scan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from ..protocol.errors import InferdError
from .repository import Fingerprint, Repository

log = logging.getLogger(__name__)

Action = Callable[[str], Awaitable[None]]
# A model folder's state in one scan; None when it could not be read completely.
Snapshot = dict[str, Fingerprint | None]


class RepositoryWatcher:
    def __init__(self, repository: Repository, load: Action, unload: Action, poll_secs: float) -> None:
        if poll_secs <= 0:
            raise ValueError(f"the repository poll interval must be > 0 seconds, got {poll_secs}")
        self.repository = repository
        self.poll_secs = poll_secs
        self._load = load
        self._unload = unload
        self._previous: Snapshot = {}  # the last scan
        self._acted: Snapshot = {}  # what each present model was last loaded from
        self._busy: dict[str, asyncio.Task[None]] = {}  # one action per model at a time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-watcher")
        self._task: asyncio.Task[None] | None = None

    def scan(self) -> Snapshot:
        """Fingerprint every model folder; blocking, so it runs in the watcher's thread."""
        snapshot: Snapshot = {}
        for name in self.repository.model_names():
            try:
                snapshot[name] = self.repository.model_fingerprint(name)
            except (OSError, InferdError):  # e.g. the folder vanished since the listing
                snapshot[name] = None
        return snapshot

    async def _scan(self) -> Snapshot:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.scan)

    async def prime(self) -> list[str]:
        """Record the repository as the start-up loads will find it; returns the model names."""
        snapshot = await self._scan()
        self._previous = dict(snapshot)
        self._acted = dict(snapshot)
        return sorted(snapshot)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="inferd-repository-watcher")
        folders = ", ".join(str(r) for r in self.repository.roots)
        log.info("polling %s every %.1fs for model changes", folders, self.poll_secs)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            try:
                snapshot = await self._scan()
            except Exception:  # a scan that fails is tried again next time
                log.exception("scanning the model repository failed")
                continue
            self.apply(snapshot)

    def apply(self, snapshot: Snapshot) -> None:
        """Act on one scan's result, given the scan before it."""
        previous, self._previous = self._previous, snapshot
        for name, fp in snapshot.items():
            # A new folder with no files yet (default ``()``) has nothing to load either.
            if fp is None or fp == self._acted.get(name, ()) or name in self._busy:
                continue
            if previous.get(name) != fp:
                log.debug("model '%s': files changing, waiting until they settle", name)
                continue
            self._acted[name] = fp
            log.info("model '%s': folder changed, loading", name)
            self._spawn(name, self._load)
        for name in list(self._acted):
            if name not in snapshot and name not in previous and name not in self._busy:
                del self._acted[name]
                log.info("model '%s': folder removed, unloading", name)
                self._spawn(name, self._unload)

    def _spawn(self, name: str, action: Action) -> None:
        async def run() -> None:
            try:
                await action(name)
            except InferdError as e:  # the manager logged it and shows it in the index
                log.debug("model '%s': %s", name, e.message)
            except Exception:
                log.exception("model '%s': unexpected error", name)
            finally:
                self._busy.pop(name, None)

        self._busy[name] = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        """Stop polling; loads already handed to the manager finish there (it waits for them)."""
        tasks = [t for t in [self._task, *self._busy.values()] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
