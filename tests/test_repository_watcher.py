"""The poll-mode rule, scan by scan: act only on a folder identical in two consecutive scans,
unload only after two scans without it, one action per model at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from inferd.server.repository import Repository
from inferd.server.watcher import RepositoryWatcher

from .lifecycle_support import const_config, write_const


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def load(self, name: str) -> None:
        self.calls.append(("load", name))
        await self.gate.wait()

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
async def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    rec = Recorder()
    watcher = RepositoryWatcher(Repository(tmp_path), rec.load, rec.unload, poll_secs=60)
    assert await watcher.prime() == []
    yield tmp_path, watcher, rec
    await watcher.stop()


async def step(watcher: RepositoryWatcher) -> None:
    watcher.apply(watcher.scan())
    await settle()


async def test_a_folder_loads_only_after_two_identical_scans(setup) -> None:  # type: ignore[no-untyped-def]
    repo, watcher, rec = setup
    (repo / "m").mkdir()
    (repo / "m" / "config.pbtxt").write_text(const_config("m"))
    await step(watcher)  # first sighting
    write_const(repo, "m", 1, 1.0)  # still being written
    await step(watcher)
    assert rec.calls == []
    await step(watcher)  # unchanged since the last scan: complete
    assert rec.calls == [("load", "m")]
    await step(watcher)
    assert rec.calls == [("load", "m")]  # nothing new


async def test_a_growing_file_is_never_acted_on(setup) -> None:  # type: ignore[no-untyped-def]
    repo, watcher, rec = setup
    write_const(repo, "m", 1, 1.0, const_config("m"))
    blob = repo / "m" / "1" / "weights.bin"
    for i in range(5):
        with blob.open("ab") as f:
            f.write(b"x" * (i + 1))
        await step(watcher)
    assert rec.calls == []
    await step(watcher)
    assert rec.calls == [("load", "m")]


async def test_removal_needs_two_scans_and_a_quick_replace_is_a_reload(setup) -> None:  # type: ignore[no-untyped-def]
    repo, watcher, rec = setup
    write_const(repo, "m", 1, 1.0, const_config("m"))
    await step(watcher)
    await step(watcher)
    (repo / "m").rename(repo / ".m-old")
    await step(watcher)  # gone once: maybe a replace in progress
    write_const(repo, "m", 1, 2.0, const_config("m"))
    await step(watcher)
    await step(watcher)
    assert rec.calls == [("load", "m"), ("load", "m")]
    (repo / "m").rename(repo / ".m-older")
    await step(watcher)
    await step(watcher)
    assert rec.calls[-1] == ("unload", "m")


async def test_one_action_per_model_at_a_time(setup) -> None:  # type: ignore[no-untyped-def]
    repo, watcher, rec = setup
    rec.gate.clear()  # the first load hangs
    write_const(repo, "m", 1, 1.0, const_config("m"))
    await step(watcher)
    await step(watcher)
    write_const(repo, "m", 2, 2.0)
    await step(watcher)
    await step(watcher)
    assert rec.calls == [("load", "m")]  # busy: the change waits
    rec.gate.set()
    await settle()
    await step(watcher)
    assert rec.calls == [("load", "m"), ("load", "m")]


async def test_hidden_and_invalid_folders_are_ignored(setup) -> None:  # type: ignore[no-untyped-def]
    repo, watcher, rec = setup
    write_const(repo, ".staging", 1, 1.0, const_config(".staging"))
    (repo / "file.txt").write_text("not a model")
    await step(watcher)
    await step(watcher)
    assert rec.calls == []


def test_poll_interval_must_be_positive(tmp_path: Path) -> None:
    async def noop(name: str) -> None: ...

    with pytest.raises(ValueError, match="> 0"):
        RepositoryWatcher(Repository(tmp_path), noop, noop, 0)
