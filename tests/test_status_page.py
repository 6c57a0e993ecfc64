"""The status page at / on the HTTP port: rendered HTML over httpx, and in a real headless
browser (Debian's chromium through Selenium) against a server under load, its numbers checked
against the statistics and traffic APIs. The browser test skips where chromium, chromedriver
or selenium is missing (CI installs them and sets INFERD_REQUIRE_BROWSER=1, which turns the
skip into a failure). INFERD_STATUS_SCREENSHOT=<path> keeps the screenshot (docs/status-page.png)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .conftest import RunningServer, start_server, test_settings
from .rollout_support import infer, load, traffic, wait_until, write_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("status")
    drift = 'parameters { key: "drift" value: { string_value: "reference=100" } }\n'
    write_model(
        repo,
        "classifier",
        {1: 1.0, 2: 1.0, 3: 1.5},
        drift + 'parameters { key: "traffic" value: { string_value: "1:90,2:10" } }\n',
    )
    write_model(repo, "plain", {1: 0.0})
    running = start_server(test_settings(repo, model_control_mode="explicit", load_models=["*"]))
    r = traffic(
        running.http_url, "classifier", body={"weights": {"1": 90, "2": 10}, "shadow": {"version": "3", "share": 0.5}}
    )
    assert r.status_code == 200, r.text
    client = grpcclient.InferenceServerClient(running.grpc_url)
    rng = np.random.default_rng(0)
    for loc in [0.0] * 150 + [0.7] * 150:
        infer(client, "classifier", rng.normal(loc, 1, (1, 4)).astype(np.float32))
        infer(client, "plain")
    client.close()
    yield running
    running.stop()


def _stats(url: str) -> dict[tuple[str, str], int]:
    doc = httpx.get(f"http://{url}/v2/models/stats").json()
    return {(m["name"], m["version"]): m["inference_stats"]["success"]["count"] for m in doc["model_stats"]}


def test_page_renders(page_server: RunningServer) -> None:
    r = httpx.get(f"http://{page_server.http_url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "Rollout of classifier" in page and "shadow → classifier:3" in page and "<svg" in page
    assert 'data-model="plain" data-version="1" data-field="state"' in page
    assert "refresh" not in httpx.get(f"http://{page_server.http_url}/status?refresh=0").text.split("<title>")[0]


def test_page_in_a_headless_browser_under_load(page_server: RunningServer, tmp_path: Path) -> None:
    missing = [n for n, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not found]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = f"needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("INFERD_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER or ""))
    url = page_server.http_url
    try:
        with load(page_server.grpc_url, "classifier", clients=2) as tally:
            wait_until(lambda: sum(tally.answers.values()) >= 50, what="load running")
            before = _stats(url)
            driver.get(f"http://{url}/?refresh=0")
            after = _stats(url)
            cells = {
                (e.get_attribute("data-model"), e.get_attribute("data-version"), e.get_attribute("data-field")): e.text
                for e in driver.find_elements(By.CSS_SELECTOR, "[data-field]")
            }
            driver.save_screenshot(str(tmp_path / "status-page.png"))
        assert tally.errors == []
        for (model, version), count in after.items():
            shown = int(cells[(model, version, "success")])
            assert before[(model, version)] <= shown <= count, (model, version)
            assert cells[(model, version, "state")] == "READY"
        doc = traffic(url, "classifier").json()
        assert cells[("classifier", None, "policy")] == doc["effective"] == "1:90,2:10,shadow=3@0.5"
        assert cells[("classifier", "1", "weight")] == "90%" and cells[("classifier", "2", "weight")] == "10%"
        live = float(cells[("classifier", "1", "live_share")].rstrip("%")) / 100
        assert abs(live - doc["shares"]["1"]) < 0.05
        assert cells[("classifier", "1", "shadow_agreement")].endswith("%")
        assert float(cells[("classifier", "1", "psi:INPUT0")]) > 0
        assert (tmp_path / "status-page.png").stat().st_size > 10_000
        keep = os.environ.get("INFERD_STATUS_SCREENSHOT")
        if keep:
            shutil.copyfile(tmp_path / "status-page.png", keep)
    finally:
        driver.quit()
