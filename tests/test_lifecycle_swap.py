"""Zero-downtime changes under continuous load.

Client threads keep sending requests while versions are added and removed, the config changes,
a model file is replaced in place, and models are loaded and unloaded through the API. Every
build adds its own constant, so each response tells which version *and which build* answered.
Checked: no request fails on a version that stays in the policy; every answer comes from a
build that was serving; once the test has seen a change take effect, no request sent after
that moment is answered by what it replaced (traffic moves at one point, never back)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from .conftest import start_server, test_settings
from .lifecycle_support import const_config, index, infer_const, wait_for, write_const

POLL = 0.2
LATEST_2 = "version_policy { latest { num_versions: 2 } }\n"
BATCHING = "dynamic_batching { max_queue_delay_microseconds: 3000 }\n"


@dataclass
class Answer:
    sent: float
    received: float
    version: str
    const: float


@dataclass
class Client:
    model: str
    version: str = ""
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Load:
    """Threads, each with its own tritonclient, sending back-to-back requests."""

    def __init__(self, url: str, clients: list[Client]) -> None:
        self.url = url
        self.clients = clients
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in clients]

    def _run(self, c: Client) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    version, const = infer_const(client, c.model, c.version, rows=2)
                except Exception as e:
                    c.errors.append(f"{time.monotonic():.3f} {e}")
                    continue
                c.answers.append(Answer(sent, time.monotonic(), version, const))
        finally:
            client.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        wait_for(lambda: all(len(c.answers) >= 5 for c in self.clients), what="load running")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def flow(clients: list[Client], since: float) -> None:
    """Wait until every client has had an answer to a request sent after ``since``."""
    wait_for(lambda: all(c.answers and c.answers[-1].sent > since for c in clients), what="traffic")


def answers_after(clients: list[Client], start: float, end: float = float("inf")) -> set[tuple[str, float]]:
    """Builds that answered requests sent after ``start`` and answered before ``end``."""
    return {(a.version, a.const) for c in clients for a in c.answers if start < a.sent and a.received < end}


def test_poll_mode_changes_under_load(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_const(repo, "live", 1, 10.0, const_config("live", LATEST_2))
    write_const(repo, "live", 2, 20.0)
    running = start_server(
        test_settings(repo, model_control_mode="poll", repository_poll_secs=POLL, allow_http=False, allow_metrics=False)
    )
    probe = grpcclient.InferenceServerClient(running.grpc_url)
    latest = [Client("live"), Client("live")]
    pinned = Client("live", "2")  # version 2 stays in the policy throughout
    marks: dict[str, float] = {}
    try:
        with Load(running.grpc_url, [*latest, pinned]):
            marks["add"] = time.monotonic()
            write_const(repo, "live", 3, 30.0)  # policy latest 2: 3 joins, 1 leaves
            wait_for(lambda: infer_const(probe, "live") == ("3", 30.0), what="v3 serving")
            marks["added"] = time.monotonic()
            flow(latest, marks["added"])
            wait_for(lambda: index(probe)[("live", "1")] == ("UNAVAILABLE", "unloaded"), what="v1 unloaded")
            with pytest.raises(Exception, match="is not at ready state"):
                infer_const(probe, "live", "1")

            (repo / "live" / "config.pbtxt").write_text(const_config("live", LATEST_2 + BATCHING))
            for v in ("2", "3"):
                wait_for(
                    lambda v=v: probe.get_model_config("live", v).config.HasField("dynamic_batching"),
                    what=f"v{v} reloaded with the new config",
                )

            marks["replace"] = time.monotonic()
            write_const(repo, "live", 3, 31.0)  # the model file, rewritten in place
            wait_for(lambda: infer_const(probe, "live") == ("3", 31.0), what="v3 rebuilt")
            marks["replaced"] = time.monotonic()
            flow(latest, marks["replaced"])

            marks["remove"] = time.monotonic()
            shutil.rmtree(repo / "live" / "3")  # policy latest 2: 1 comes back
            wait_for(lambda: infer_const(probe, "live") == ("2", 20.0), what="v3 gone")
            marks["removed"] = time.monotonic()
            wait_for(lambda: index(probe).get(("live", "1")) == ("READY", ""), what="v1 back")
            flow(latest, time.monotonic())
    finally:
        probe.close()
        running.stop()

    for c in [*latest, pinned]:
        assert c.errors == [], c.errors[:5]
        assert len(c.answers) > 20
    assert {(a.version, a.const) for a in pinned.answers} == {("2", 20.0)}
    seen = answers_after(latest, 0)
    assert seen <= {("2", 20.0), ("3", 30.0), ("3", 31.0)}, seen
    assert ("3", 30.0) in seen and ("3", 31.0) in seen
    assert answers_after(latest, 0, marks["add"]) == {("2", 20.0)}
    assert answers_after(latest, marks["added"], marks["replace"]) == {("3", 30.0)}
    assert answers_after(latest, marks["replaced"], marks["remove"]) == {("3", 31.0)}
    assert answers_after(latest, marks["removed"]) == {("2", 20.0)}
    for c in latest:  # per client, traffic moves forward only
        builds = [a.const for a in c.answers if a.sent < marks["remove"]]
        assert builds == sorted(builds)


def test_api_loads_and_unloads_under_load(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_const(repo, "live", 1, 10.0, const_config("live"))
    write_const(repo, "other", 1, 5.0, const_config("other"))
    running = start_server(
        test_settings(repo, model_control_mode="explicit", load_models=["live"], allow_http=False, allow_metrics=False)
    )
    api = grpcclient.InferenceServerClient(running.grpc_url)
    clients = [Client("live"), Client("live"), Client("live", "1")]
    override = (
        '{"name": "live", "platform": "onnxruntime_onnx", "max_batch_size": 8,'
        ' "dynamic_batching": {"max_queue_delay_microseconds": 3000},'
        ' "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}'
    )
    try:
        with Load(running.grpc_url, clients):
            flow(clients, time.monotonic())
            for _ in range(5):  # another model coming and going leaves "live" alone
                api.load_model("other")
                assert infer_const(api, "other") == ("1", 5.0)
                api.unload_model("other")
                flow(clients, time.monotonic())
            api.load_model("live", config=override)  # a reload with changes, under traffic
            flow(clients, time.monotonic())
            assert len(api.get_model_config("live").config.instance_group) == 1
            assert api.get_model_config("live").config.instance_group[0].count == 2
            before = sum(s.inference_count for s in api.get_inference_statistics("live").model_stats)
            api.load_model("live", config=override)  # unchanged: not reloaded
            after = sum(s.inference_count for s in api.get_inference_statistics("live").model_stats)
            assert after >= before > 0
            write_const(repo, "live", 1, 11.0)
            mark = time.monotonic()
            api.load_model("live")  # new file and back to config.pbtxt
            loaded = time.monotonic()
            assert infer_const(api, "live") == ("1", 11.0)
            flow(clients, loaded)
    finally:
        api.close()
        running.stop()
    for c in clients:
        assert c.errors == [], c.errors[:5]
        builds = [a.const for a in c.answers]
        assert set(builds) == {10.0, 11.0} and builds == sorted(builds)
    assert answers_after(clients, 0, mark) == {("1", 10.0)}
    assert answers_after(clients, loaded) == {("1", 11.0)}
