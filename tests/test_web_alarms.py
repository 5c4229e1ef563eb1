"""告警 in a real browser: a real `village county serve`, a real mosquitto and a real `village agent run` whose
wristband gateway this test drives (tests/web_sim.py). A band's SOS press reaches the alarm list over the
event stream and rings the page's bell (its counters, not a microphone); the operator acknowledges it on the
list, assigns it to a 网格员 and the 网格员 resolves it on the phone view; the audit log has every action with
its user. One server, one box and one browser for the module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from county import geo
from tests.browser import (  # noqa: F401 - fixtures
    Console,
    browser_errors,
    browser_fixture,
    login,
    need_browser,
    page_text,
    shoot,
    start_console,
    untranslated,
    wait,
    wait_loaded,
)
from tests.web_sim import LAT0, LON0, Village

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Console, Village]]:
    need_browser()
    work = tmp_path_factory.mktemp("web-alarms")
    console = start_console(work / "county")
    village = None
    try:
        village = Village(console, work / "box").start()
        yield console, village
    finally:
        if village is not None:
            village.stop()
        console.stop()


def bell(browser: Any) -> dict[str, str]:
    return dict(browser.execute_script("return Object.assign({}, document.getElementById('alarm-sound').dataset)"))


def open_alarms(browser: Any, console: Console) -> None:
    browser.get(console.url + "/alarms")
    wait_loaded(browser)
    wait(browser, lambda d: d.execute_script("return document.body.dataset.stream") == "open")


def row(browser: Any, alarm_id: str) -> dict[str, str] | None:
    """The alarm's row as {state, text, shownAt} (read in one script: the list re-renders as events arrive)."""
    return browser.execute_script(  # type: ignore[no-any-return]
        "const li = [...document.querySelectorAll('#alarm-list li[data-id]')].find(e => e.dataset.id === arguments[0]);"
        "return li ? {state: li.dataset.state, text: li.innerText, shownAt: li.dataset.shownAt} : null;", alarm_id)


def sos(browser: Any, village: Village, wearer: int) -> tuple[str, float]:
    """Press SOS on band W<wearer>; wait for its row in the open list; (alarm id, press -> row seconds by the
    browser's own clock, a figure for the log: the benchmark measures it, no test asserts a time)."""
    before = {a["id"] for a in village.alarms()}
    pressed_ms = browser.execute_script("return Date.now()")
    village.press_sos(wearer)
    new = wait(browser, lambda d: [a for a in village.alarms(f"W{wearer}") if a["id"] not in before])
    alarm_id = new[0]["id"]
    li = wait(browser, lambda d: row(d, alarm_id))
    return alarm_id, (int(li["shownAt"]) - pressed_ms) / 1000


def test_an_sos_press_rings_and_is_acknowledged_assigned_and_resolved(county: tuple[Console, Village],
                                                                      browser: Any) -> None:
    console, village = county
    village.position(1, LAT0 - 0.002, LON0 - 0.002)  # the last hour's track: two fixes before the press
    village.position(1, LAT0 - 0.001, LON0 - 0.001)
    login(browser, console, "operator")
    browser.execute_cdp_cmd("Browser.grantPermissions", {"origin": console.url, "permissions": ["notifications"]})
    open_alarms(browser, console)
    assert bell(browser).get("rings") is None
    alarm_id, seconds = sos(browser, village, 1)
    print(f"SOS press -> row on the alarm list: {seconds:.3f} s (browser clock)")
    wait(browser, lambda d: "甲一村委会" in row(d, alarm_id)["text"])  # named from the regions file
    li = row(browser, alarm_id)
    assert li["state"] == "new" and "SOS" in li["text"]
    rang = bell(browser)
    assert rang["rings"] == "1" and rang.get("muted") == "0"
    wait(browser, lambda d: bell(d).get("played") == "1")  # the <audio> element really played its sound
    assert bell(browser).get("notified") == "1"  # and a desktop notification was shown
    # acknowledge from the list
    browser.find_element(By.CSS_SELECTOR, f'#alarm-list li[data-id="{alarm_id}"] button[data-action="ack"]').click()
    wait(browser, lambda d: row(d, alarm_id)["state"] == "acknowledged")
    # the alarm page: position, track, raw frame; assign to the 网格员
    browser.get(f"{console.url}/alarms/{alarm_id}")
    wait_loaded(browser)
    assert browser.find_element(By.ID, "alarm-state").get_attribute("data-state") == "acknowledged"
    raw = browser.find_element(By.ID, "alarm-raw").text
    assert '"kind": "sos"' in raw and '"seq"' in raw
    wait(browser, lambda d: d.find_element(By.ID, "alarm-map").get_attribute("data-ready") == "1")
    assert int(browser.find_element(By.ID, "alarm-map").get_attribute("data-track")) >= 2
    # no tiles configured: a plain background with the county's outline (from the regions' places) drawn on it
    assert browser.find_element(By.ID, "alarm-map").get_attribute("data-tiles") == "none"
    assert browser.execute_script("return document.querySelectorAll('#alarm-map path.map-outline').length") == 1
    assert "–" not in browser.find_element(By.ID, "time-ack").text  # acknowledged after N s
    assert "–" in browser.find_element(By.ID, "time-resolve").text  # not yet
    wait(browser, lambda d: [o.get_attribute("value") for o in Select(d.find_element(By.ID, "assign-to")).options]
         == ["gw-a"])
    browser.find_element(By.ID, "assign").click()
    wait(browser, lambda d: d.find_element(By.ID, "alarm-state").get_attribute("data-state") == "assigned")
    # the raw frame is data as the band sent it ("class": "alarm", "wearer": ...), not text of the page
    assert untranslated(page_text(browser).replace(browser.find_element(By.ID, "alarm-raw").text, "")) == []
    shoot(browser, "alarm")
    assert browser_errors(browser) == []
    # the 网格员 on a phone: only their alarm, links into the map apps, resolve with a note
    login(browser, console, "gw-a")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 375, "height": 812, "deviceScaleFactor": 1,
                                                                   "mobile": True})
    try:
        browser.get(console.url + "/alarms")  # a gridworker's alarm list is the phone view
        wait(browser, lambda d: d.current_url.endswith("/grid"))
        wait_loaded(browser)
        cards = browser.find_elements(By.CSS_SELECTOR, "#grid-list li[data-id]")
        assert [c.get_attribute("data-id") for c in cards] == [alarm_id]
        amap = cards[0].find_element(By.CSS_SELECTOR, 'a[data-link="amap"]').get_attribute("href")
        glat, glon = geo.wgs84_to_gcj02(LAT0, LON0)  # AMap gets GCJ-02
        assert f"position={glon:.6f},{glat:.6f}" in amap
        assert cards[0].find_element(By.CSS_SELECTOR, 'a[data-link="geo"]').get_attribute("href").startswith(
            f"geo:{LAT0:.6f},{LON0:.6f}")
        assert untranslated(page_text(browser)) == []
        wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'[data-map-for="{alarm_id}"]').get_attribute(
            "data-ready") == "1")
        shoot(browser, "grid")  # (reloads the page at each size)
        card = browser.find_element(By.CSS_SELECTOR, f'#grid-list li[data-id="{alarm_id}"]')
        card.find_element(By.TAG_NAME, "textarea").send_keys("已到现场，老人安全")
        card.find_element(By.CSS_SELECTOR, 'button[data-action="resolve"]').click()
        wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#grid-list li[data-id]"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert village.alarms("W1")[-1]["state"] == "resolved"
    trail = [(a["actor"], a["action"]) for a in village.audit("alarm.") if a["target"] == alarm_id]
    assert trail == [("operator", "alarm.ack"), ("operator", "alarm.assign"), ("gw-a", "alarm.resolve")]
    resolved = next(a for a in village.audit("alarm.resolve") if a["target"] == alarm_id)
    assert resolved["detail"]["note"] == "已到现场，老人安全"
    # and the console's audit page shows them, with their users, the chain intact
    login(browser, console, "admin")
    browser.get(console.url + "/audit")
    wait_loaded(browser)
    browser.find_element(By.CSS_SELECTOR, '#filter input[name="target"]').send_keys(alarm_id)
    browser.find_element(By.CSS_SELECTOR, '#filter button[type="submit"]').click()
    shown = wait(browser, lambda d: d.execute_script(
        "const rows = [...document.querySelectorAll('#audit tbody tr[data-seq]')];"
        "return rows.length >= 3 && rows.every(r => r.children[4].innerText === arguments[0]) &&"
        " rows.map(r => [r.querySelector('.actor').innerText, r.dataset.action]);", alarm_id))
    assert sorted(shown) == [["gw-a", "alarm.resolve"], ["operator", "alarm.ack"], ["operator", "alarm.assign"]]
    wait(browser, lambda d: d.find_elements(By.ID, "chain-ok"))


def test_silencing_is_per_user(county: tuple[Console, Village], browser: Any) -> None:
    console, village = county
    login(browser, console, "operator")
    open_alarms(browser, console)
    browser.find_element(By.ID, "mute").click()
    assert browser.find_element(By.ID, "mute").get_attribute("aria-pressed") == "true"
    browser.refresh()  # kept for this user
    wait_loaded(browser)
    wait(browser, lambda d: d.execute_script("return document.body.dataset.stream") == "open")
    assert bell(browser).get("muted") == "1"
    sos(browser, village, 2)
    assert bell(browser).get("mutedRings") == "1" and bell(browser).get("rings") is None
    # another user in the same browser is not silenced by it
    login(browser, console, "admin")
    open_alarms(browser, console)
    assert bell(browser).get("muted") == "0"
    sos(browser, village, 3)
    assert bell(browser).get("rings") == "1"


def test_alarm_list_screens_and_language(county: tuple[Console, Village], browser: Any) -> None:
    console, village = county
    login(browser, console, "viewer")
    open_alarms(browser, console)
    # the earlier tests' alarms: the newest (W3's) acknowledged meanwhile, so W2's older but new one leads
    newest = village.alarms("W3")[-1]["id"]
    r = httpx.post(f"{console.url}/api/v1/alarms/{newest}/ack", timeout=10,
                   headers={"Authorization": f"Bearer {console.token('operator')}"})
    assert r.status_code == 200
    wait(browser, lambda d: (row(d, newest) or {}).get("state") == "acknowledged")  # live, no reload
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#alarm-list li[data-id]')].map(li => li.dataset.id)")
    still_open = [a for a in village.alarms() if a["state"] != "resolved"]
    assert len(still_open) >= 2
    assert shown == [a["id"] for a in sorted(still_open, key=lambda a: (a["state"] != "new", -a["ts"]))]
    assert shown[-1] == newest
    assert not browser.find_elements(By.CSS_SELECTOR, 'button[data-action="ack"]')  # a viewer may not ack
    assert untranslated(page_text(browser)) == []
    shoot(browser, "alarms")
    login(browser, console, "viewer", lang="en")
    open_alarms(browser, console)
    assert "Alarms" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser_errors(browser) == []
