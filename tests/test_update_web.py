"""升级 in a real browser: a real `village county serve` (tests/browser.py), a release uploaded and a rollout
started through its API, the rollouts page showing the rollout and one row per box in Chinese, and the
admin halting it from the page. One server and one browser for the module."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from selenium.webdriver.common.by import By

from agent.release import Manifest, WheelEntry, sign_manifest
from tests.browser import (  # noqa: F401 - fixtures
    Console,
    browser_errors,
    browser_fixture,
    console_fixture,
    login,
    page_text,
    untranslated,
    wait,
    wait_loaded,
)

pytestmark = pytest.mark.timeout(240)


def start_rollout(console: Console) -> str:
    data = b"a project wheel " * 400
    file = "village_edge-3.0.0-py3-none-any.whl"
    m = Manifest("village-edge", "3.0.0", "cp311", "any", "1.0.0", 1, False,
                 (WheelEntry(file, hashlib.sha256(data).hexdigest(), len(data), True),))
    headers = {"Authorization": f"Bearer {console.token('admin')}"}
    with httpx.Client(base_url=console.url, headers=headers, timeout=30) as api:
        r = api.post("/api/v1/releases", json={"manifest": sign_manifest(m, Ed25519PrivateKey.generate(), "rel")})
        assert r.status_code == 201, r.text
        assert api.put(f"/api/v1/releases/3.0.0/wheels/{file}", content=data).json()["complete"]
        r = api.post("/api/v1/rollouts", json={"version": "3.0.0", "to": ["group:town-a"], "pilot": 1,
                                               "base_url": "https://county.example"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def test_the_rollouts_page_shows_each_box_and_halts_the_rollout(console: Console, browser) -> None:
    rid = start_rollout(console)
    login(browser, console, "admin")
    browser.get(console.url + "/rollouts")
    wait_loaded(browser)
    row = browser.find_element(By.CSS_SELECTOR, f'#rollouts tr[data-id="{rid}"]')
    assert "试点" in row.text and "3.0.0" in row.text
    row.find_element(By.TAG_NAME, "a").click()
    wait(browser, lambda d: "id=" in d.current_url)
    wait_loaded(browser)
    boxes = {tr.get_attribute("data-box"): tr.get_attribute("data-state")
             for tr in browser.find_elements(By.CSS_SELECTOR, "#boxes tbody tr")}
    assert boxes == {"a1": "pending", "a2": "not_sent"}
    assert "升级到 3.0.0：试点" in browser.find_element(By.ID, "detail-title").text
    assert "等待回执 1" in browser.find_element(By.ID, "detail-summary").text
    assert untranslated(page_text(browser)) == []
    halt = browser.find_element(By.ID, "halt")
    assert halt.is_displayed()
    halt.click()
    wait(browser, lambda d: d.find_element(By.ID, "detail").get_attribute("data-state") == "halted")
    assert "halted by admin" in browser.find_element(By.ID, "detail-reason").text
    assert not browser.find_element(By.ID, "halt").is_displayed()
    assert browser_errors(browser) == []
    # a viewer may not open it (the page answers in words, not with the data)
    login(browser, console, "viewer")
    browser.get(console.url + "/rollouts")
    assert not browser.find_elements(By.CSS_SELECTOR, f'#rollouts tr[data-id="{rid}"]')
