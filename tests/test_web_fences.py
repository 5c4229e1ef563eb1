"""电子围栏 in a real browser: draw a polygon with the mouse on the map, name it, assign it to a wearer, push it to a
real `village agent run` and see the box's `applied` arrive; the fence is stored in WGS-84 although the map's
tiles are GCJ-02.

The county's own tile server ([map] tiles = "custom", crs = "GCJ02") is a small HTTP server in this test that
draws every tile itself (no map data, no internet): so the page shifts what it draws to GCJ-02 and shifts
what the mouse drew back to WGS-84 before saving, and the tiles must pass the Content-Security-Policy."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

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
from tests.web_sim import BOX, Village

pytestmark = pytest.mark.timeout(240)


def tile_png() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (256, 256), (236, 240, 228))
    d = ImageDraw.Draw(img)
    for i in range(0, 256, 32):  # a grid, so a screenshot shows the tiles are there
        d.line([(i, 0), (i, 255)], fill=(200, 210, 190))
        d.line([(0, i), (255, i)], fill=(200, 210, 190))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


class Tiles(ThreadingHTTPServer):
    served = 0


class TileHandler(BaseHTTPRequestHandler):
    png = b""

    def do_GET(self) -> None:
        assert isinstance(self.server, Tiles)
        self.server.served += 1
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Console, Village, Tiles]]:
    need_browser()
    TileHandler.png = tile_png()
    tiles = Tiles(("127.0.0.1", 0), TileHandler)
    threading.Thread(target=tiles.serve_forever, daemon=True).start()
    work = tmp_path_factory.mktemp("web-fences")
    url = f"http://127.0.0.1:{tiles.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
    console = start_console(work / "county", extra_toml=f'[map]\ntiles = "custom"\nurl = "{url}"\ncrs = "GCJ02"\n'
                                                        'attribution = "县自然资源局"\n')
    village = None
    try:
        village = Village(console, work / "box").start()
        yield console, village, tiles
    finally:
        if village is not None:
            village.stop()
        console.stop()
        tiles.shutdown()
        tiles.server_close()


def data(browser: Any, el_id: str, key: str) -> Any:
    return browser.execute_script("return document.getElementById(arguments[0]).dataset[arguments[1]]", el_id, key)


def test_draw_a_polygon_assign_push_and_the_box_applies_it(county: tuple[Console, Village, Tiles],
                                                           browser: Any) -> None:
    console, village, _tiles = county
    login(browser, console, "operator")
    browser.get(console.url + "/fences")
    wait_loaded(browser)
    assert data(browser, "fence-map", "crs") == "GCJ02"
    browser.find_element(By.ID, "draw-polygon").click()
    the_map = browser.find_element(By.ID, "fence-map")
    clicks = [(-120, -70), (130, -50), (20, 100)]
    for n, (dx, dy) in enumerate(clicks, 1):
        ActionChains(browser).move_to_element_with_offset(the_map, dx, dy).click().perform()
        wait(browser, lambda d, n=n: data(d, "fence-map", "vertices") == str(n))
    browser.find_element(By.ID, "draw-finish").click()
    wait(browser, lambda d: data(d, "fence-map", "drawing") == "done")
    browser.find_element(By.ID, "fence-name").send_keys("勐楼小学")
    browser.find_element(By.ID, "fence-save").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fence-list li[data-fence]"))
    # stored in WGS-84: the clicked GCJ-02 points shifted back, the ring closed
    token = console.token("operator")
    stored = httpx.get(f"{console.url}/api/v1/fences", headers={"Authorization": f"Bearer {token}"}).json()
    assert [(f["name"], f["crs"]) for f in stored] == [("勐楼小学", "WGS84")]
    ring = stored[0]["feature"]["geometry"]["coordinates"][0]
    view = [tuple(p) for p in json.loads(data(browser, "fence-map", "viewPoints"))]
    assert len(ring) == 4 and ring[0] == ring[-1]
    for (lon, lat), (vlat, vlon) in zip(ring[:3], view, strict=True):
        want = geo.gcj02_to_wgs84(vlat, vlon)
        assert abs(lat - want[0]) < 1e-9 and abs(lon - want[1]) < 1e-9
        assert abs(lat - vlat) + abs(lon - vlon) > 1e-4  # it was really shifted (hundreds of metres)
    # tick the box, assign to W1, push; the box answers applied
    fence_id = stored[0]["id"]
    assert browser.find_element(By.CSS_SELECTOR, f'.pick-fence[value="{fence_id}"]').is_selected()  # ticked on save
    browser.find_element(By.CSS_SELECTOR, f'.pick-box[value="{BOX}"]').click()
    browser.find_element(By.ID, "push-wearers").send_keys("W1")
    browser.find_element(By.ID, "push").click()
    wait(browser, lambda d: board_state(d, BOX) == "applied", timeout=60)
    pushes = village.audit("fence.push")
    assert [(a["actor"], a["detail"]["fences"], a["detail"]["wearers"]) for a in pushes] == [
        ("operator", [fence_id], 1)]
    assert untranslated(page_text(browser)) == []
    shoot(browser, "fences")
    assert browser_errors(browser) == []  # no script error, no CSP refusal (the tiles' origin is allowed)


def test_the_countys_own_tiles_pass_the_content_security_policy(county: tuple[Console, Village, Tiles],
                                                               browser: Any) -> None:
    console, _village, tiles = county
    login(browser, console, "viewer")
    served = tiles.served
    browser_errors(browser)
    browser.get(console.url + "/fences")
    wait_loaded(browser)
    wait(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#fence-map img.leaflet-tile')]"
        ".some(i => i.complete && i.naturalWidth > 0)"))
    assert tiles.served > served
    assert browser_errors(browser) == []


def board_state(browser: Any, box: str) -> str | None:
    return browser.execute_script(  # type: ignore[no-any-return]
        "const r = [...document.querySelectorAll('#board tr')].find(e => e.dataset.box === arguments[0]);"
        "return r ? r.dataset.state : null;", box)


def test_a_circle_pushed_for_a_wearer_shows_on_that_wearers_alarm(county: tuple[Console, Village, Tiles],
                                                                  browser: Any) -> None:
    console, village, _tiles = county
    login(browser, console, "operator")
    browser.get(console.url + "/fences")
    wait_loaded(browser)
    browser.find_element(By.ID, "draw-circle").click()
    the_map = browser.find_element(By.ID, "fence-map")
    ActionChains(browser).move_to_element_with_offset(the_map, -30, 10).click().perform()
    wait(browser, lambda d: data(d, "fence-map", "vertices") == "1")
    ActionChains(browser).move_to_element_with_offset(the_map, 50, 10).click().perform()  # the edge: 80 px east
    wait(browser, lambda d: data(d, "fence-map", "drawing") == "done")
    centre_view = json.loads(data(browser, "fence-map", "viewPoints"))[0]
    name = "水井<i>旁</i>"  # markup in a name stays text, in the list and in the map's tooltip
    browser.find_element(By.ID, "fence-name").send_keys(name)
    browser.find_element(By.ID, "fence-save").click()
    token = console.token("operator")
    stored = wait(browser, lambda d: [f for f in httpx.get(f"{console.url}/api/v1/fences", headers={
        "Authorization": f"Bearer {token}"}).json() if f["name"] == name])
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "draw-polygon")).perform()  # off the map
    ActionChains(browser).move_to_element_with_offset(the_map, -30, 10).perform()  # then over the stored circle
    tip = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fence-map .leaflet-tooltip"))
    assert tip[0].text == name and not tip[0].find_elements(By.TAG_NAME, "i")
    assert browser.find_element(By.CSS_SELECTOR, f'#fence-list li[data-fence="{stored[0]["id"]}"] strong').text == name
    feature = stored[0]["feature"]
    assert feature["geometry"]["type"] == "Point" and feature["properties"]["radius_m"] > 0
    lon, lat = feature["geometry"]["coordinates"]
    want = geo.gcj02_to_wgs84(*centre_view)
    assert abs(lat - want[0]) < 1e-9 and abs(lon - want[1]) < 1e-9
    # only the circle this time, for W2
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'.pick-fence[value="{stored[0]["id"]}"]'))
    for box in browser.find_elements(By.CSS_SELECTOR, ".pick-fence:checked"):
        if box.get_attribute("value") != stored[0]["id"]:
            box.click()
    browser.find_element(By.CSS_SELECTOR, f'.pick-box[value="{BOX}"]').click()
    browser.find_element(By.ID, "push-wearers").send_keys("W2")
    browser.find_element(By.ID, "push").click()
    wait(browser, lambda d: board_state(d, BOX) == "applied", timeout=60)
    # W2 presses SOS: the alarm page draws the fences last pushed for W2
    before = {a["id"] for a in village.alarms("W2")}
    village.press_sos(2)
    new = wait(browser, lambda d: [a for a in village.alarms("W2") if a["id"] not in before])
    browser.get(f"{console.url}/alarms/{new[0]['id']}")
    wait_loaded(browser)
    wait(browser, lambda d: data(d, "alarm-map", "ready") == "1")
    assert data(browser, "alarm-map", "fences") == "1" and data(browser, "alarm-map", "crs") == "GCJ02"


def test_a_viewer_sees_the_fences_but_no_drawing_or_push(county: tuple[Console, Village, Tiles], browser: Any) -> None:
    console, _village, _tiles = county
    login(browser, console, "viewer")
    browser.get(console.url + "/fences")
    wait_loaded(browser)
    assert not browser.find_element(By.ID, "draw-tools").is_displayed()
    assert not browser.find_element(By.ID, "push-card").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#fence-list li[data-fence]")  # the fence drawn above
    assert not browser.find_elements(By.CSS_SELECTOR, ".pick-fence")
