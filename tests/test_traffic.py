"""Traffic policies with real clients: weighted splits, sticky routing, promote and rollback
under load, the automatic canary, refused policies and refused reloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.errors import InvalidArgument
from inferd.protocol.types import InferRequest
from inferd.server.traffic import Router, TrafficPolicy, policy_from_config, policy_from_json

from .conftest import RunningServer, start_server, test_settings
from .rollout_support import infer, load, traffic, traffic_param, wait_until, write_model


@pytest.fixture(scope="module")
def rollout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("rollout")
    write_model(repo, "split", {1: 1.0, 2: 2.0}, traffic_param("1:90,2:10"))
    write_model(repo, "sticky", {1: 1.0, 2: 2.0})
    write_model(repo, "blue_green", {1: 1.0, 2: 2.0}, traffic_param("1:100"))
    write_model(repo, "canary_bad", {1: 1.0, 2: 2.0}, traffic_param("1:100"), fail={2: 0.5})
    write_model(repo, "canary_good", {1: 1.0, 2: 2.0}, traffic_param("1:100"))
    write_model(repo, "guarded", {1: 1.0, 2: 2.0}, traffic_param("1:50,2:50"))
    running = start_server(test_settings(repo, model_control_mode="explicit", load_models=["*"]))
    yield running
    running.stop()


# --- the policy and router on their own ------------------------------------------------------------
def test_config_syntax() -> None:
    p = policy_from_config("1:90, 2:10, sticky=user", "test")
    assert p.weights == ((1, 90), (2, 10)) and p.sticky == "user" and p.describe() == "1:90,2:10,sticky=user"
    assert policy_from_json(p.to_json()) == p
    for bad in ("1:-1", "1:0,2:0", "x:1", "1:1,1:2", "1", "sticky=", "0:5"):
        with pytest.raises(InvalidArgument):
            policy_from_config(bad, "test")


def test_sticky_router_is_stable() -> None:
    router = Router(TrafficPolicy(((1, 50), (2, 50)), sticky="user"))
    for user in range(200):
        request = InferRequest("m", {}, parameters={"user": f"u{user}"})
        assert len({router.pick(request) for _ in range(5)}) == 1
    assert set(router.shares()) == {1, 2} and 0.3 < router.shares()[1] < 0.7


# --- with a server ----------------------------------------------------------------------------------
def test_split_90_10_over_5000_requests(rollout_server: RunningServer) -> None:
    def run(n: int) -> list[float]:
        client = grpcclient.InferenceServerClient(rollout_server.grpc_url)
        try:
            return [infer(client, "split") for _ in range(n)]
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        answers = [c for chunk in pool.map(run, [1250] * 4) for c in chunk]
    assert len(answers) == 5000 and set(answers) <= {1.0, 2.0}
    share = answers.count(1.0) / len(answers)
    assert 0.88 <= share <= 0.92, share
    doc = traffic(rollout_server.http_url, "split").json()
    assert doc["effective"] == "1:90,2:10" and abs(doc["shares"]["1"] - share) < 0.01
    index = httpx.post(f"http://{rollout_server.http_url}/v2/repository/index", json={}).json()
    reasons = {(m["name"], m.get("version")): m.get("reason", "") for m in index}
    assert "traffic 90%" in reasons[("split", "1")] and "traffic 10%" in reasons[("split", "2")]


def test_a_request_naming_a_version_gets_it(rollout_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(rollout_server.grpc_url)
    data = np.zeros((1, 4), np.float32)
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(data)
    assert all(client.infer("split", [inp], model_version="2").as_numpy("OUTPUT0")[0, 0] == 2.0 for _ in range(30))
    client.close()


def test_sticky_keeps_each_key_on_one_version(rollout_server: RunningServer) -> None:
    r = traffic(rollout_server.http_url, "sticky", body={"weights": {"1": 50, "2": 50}, "sticky": "user"})
    assert r.status_code == 200, r.text
    client = grpcclient.InferenceServerClient(rollout_server.grpc_url)
    seen: dict[str, set[float]] = {}
    for _ in range(5):
        for user in range(40):
            seen.setdefault(f"user-{user}", set()).add(infer(client, "sticky", user=f"user-{user}"))
    client.close()
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert {v for versions in seen.values() for v in versions} == {1.0, 2.0}


def test_bad_policies_are_refused_and_the_old_one_stays(rollout_server: RunningServer) -> None:
    url = rollout_server.http_url
    before = traffic(url, "split").json()["policy"]
    for body in (
        {"weights": {"1": 50, "9": 50}},  # unknown version
        {"weights": {"1": -1, "2": 5}},  # negative
        {"weights": {"1": 0, "2": 0}},  # all zero
        {"weights": {}},
        {"sticky": "user"},  # no weights
        {"weights": {"1": "many"}},
        {"weights": {"1": 50}, "shadow": {"version": "1"}},  # shadow of a routed version
        {"weights": {"1": 50}, "shadow": {"version": "2", "share": 2}},
        {"weights": {"1": 50}, "canary": {"version": "2"}},  # canary without a starting weight
        {"weights": {"1": 50}, "colour": "blue"},
    ):
        r = traffic(url, "split", body=body)
        assert r.status_code == 400, (body, r.text)
        assert "error" in r.json()
    assert traffic(url, "split").json()["policy"] == before
    r = httpx.post(f"http://{url}/v2/models/split/traffic", content=b"{not json", timeout=10)
    assert r.status_code == 400
    assert traffic(url, "split", "/promote", {"version": "7"}).status_code == 400
    assert traffic(url, "no_such_model").status_code == 404


def test_promote_and_rollback_under_load_fail_nothing(rollout_server: RunningServer) -> None:
    url = rollout_server.http_url
    with load(rollout_server.grpc_url, "blue_green", clients=3) as tally:
        wait_until(lambda: tally.answers[1.0] >= 30, what="version 1 answering")
        r = traffic(url, "blue_green", "/promote", {"version": "2", "bake_s": 60})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["effective"] == "1:0,2:100" or doc["policy"]["weights"] == {"2": 100}
        assert doc["previous"]["weights"] == {"1": 100} and doc["bake_remaining_s"] > 50
        promoted = tally.answers[2.0]
        wait_until(lambda: tally.answers[2.0] >= promoted + 30, what="version 2 answering")
        r = traffic(url, "blue_green", "/rollback")
        assert r.status_code == 200, r.text
        assert r.json()["policy"]["weights"] == {"1": 100}
        rolled = tally.answers[1.0]
        wait_until(lambda: tally.answers[1.0] >= rolled + 30, what="version 1 answering again")
    assert tally.errors == []
    # Traffic moved at one point each way: version 2 answered only between the two calls.
    assert traffic(url, "blue_green", "/rollback").status_code == 400  # nothing left to roll back to


def test_automatic_canary_rolls_back_a_failing_version(rollout_server: RunningServer) -> None:
    url = rollout_server.http_url
    body = {
        "weights": {"1": 80, "2": 20},
        "canary": {"version": "2", "step": 20, "interval_s": 0.3, "min_requests": 20, "max_error_increase": 0.05},
    }
    with load(rollout_server.grpc_url, "canary_bad", clients=3) as tally:
        assert traffic(url, "canary_bad", body=body).status_code == 200
        doc = wait_until(
            lambda: (d := traffic(url, "canary_bad").json())["canary"]["state"] == "rolled back" and d,
            what="the canary rolled back",
        )
        settled = sum(tally.answers.values()) + len(tally.errors)
        errors = len(tally.errors)
        wait_until(lambda: sum(tally.answers.values()) >= settled + 50, what="requests after the rollback")
    assert doc["policy"]["weights"] == {"1": 80} and "canary" not in doc["policy"]
    assert doc["canary"]["rollbacks"] == 1 and "error rate" in doc["canary"]["last_decision"]
    assert len(tally.errors) == errors  # no request reaches version 2 after the rollback
    assert tally.errors and all("fails on purpose" in e for e in tally.errors)
    assert any("rolled back" in e["event"] for e in doc["events"])
    metrics = httpx.get(f"http://{rollout_server.metrics_url}/metrics").text
    assert 'inferd_canary_rollbacks_total{model="canary_bad",version="2"} 1.0' in metrics


def test_automatic_canary_promotes_a_healthy_version(rollout_server: RunningServer) -> None:
    url = rollout_server.http_url
    body = {
        "weights": {"1": 90, "2": 10},
        "canary": {"version": "2", "step": 45, "interval_s": 0.2, "min_requests": 10},
    }
    with load(rollout_server.grpc_url, "canary_good", clients=3) as tally:
        assert traffic(url, "canary_good", body=body).status_code == 200
        doc = wait_until(
            lambda: (d := traffic(url, "canary_good").json())["canary"]["state"] == "promoted" and d,
            what="the canary promoted",
        )
    assert tally.errors == []
    assert doc["policy"]["weights"] == {"2": 100} and doc["canary"]["steps"] == 2
    assert doc["previous"]["weights"] == {"1": 90}  # a rollback returns to the stable version


def test_a_reload_that_drops_a_routed_version_is_refused(rollout_server: RunningServer) -> None:
    url = rollout_server.http_url
    override = {
        "name": "guarded",
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "version_policy": {"specific": {"versions": [1]}},
        "parameters": {"traffic": {"string_value": "1:50,2:50"}},
    }
    r = httpx.post(
        f"http://{url}/v2/repository/models/guarded/load",
        json={"parameters": {"config": json.dumps(override)}},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert "reload refused" in r.json()["error"] and "version 2" in r.json()["error"]
    client = grpcclient.InferenceServerClient(rollout_server.grpc_url)
    assert {infer(client, "guarded") for _ in range(40)} == {1.0, 2.0}  # both still serve
    client.close()
    # Once the policy no longer points at version 2 and the bake period is over, it may go.
    assert traffic(url, "guarded", body={"weights": {"1": 100}}).status_code == 200
    r = httpx.post(
        f"http://{url}/v2/repository/models/guarded/load",
        json={"parameters": {"config": json.dumps(override)}},
        timeout=30,
    )
    assert r.status_code == 400 and "bake period" in r.json()["error"]


def test_config_policy_must_name_loaded_versions(tmp_path: Path) -> None:
    write_model(tmp_path, "m", {1: 1.0}, traffic_param("1:50,3:50"))
    running = start_server(test_settings(tmp_path, model_control_mode="explicit", load_models=["m"]))
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        assert infer(client, "m") == 1.0  # served, without the policy
        client.close()
        doc = traffic(running.http_url, "m").json()
        assert doc["policy"] is None and any("refused" in e["event"] for e in doc["events"])
    finally:
        running.stop()
