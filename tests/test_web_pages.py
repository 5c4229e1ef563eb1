"""总览, 设备, 摄像头, 用户与审计 in a real browser against a real `village county serve` with stored data:
names everywhere (ids on hover), local times (no epoch numbers), no untranslated string on the Chinese
page, role-aware controls with the server refusing a forged write, the camera assessment sheet, user
management leaving audit rows, the audit chain check; screenshots of each page at 1366×768 and 375×812."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import time
import zoneinfo
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from sqlalchemy import insert, select

from county.store.tables import alarms, audit, boxes, camera_periods, camera_states, messages, positions_latest
from county.web import i18n
from tests.browser import (  # noqa: F401 - the browser and console fixtures
    PASSWORD,
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

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
EPOCH_MS = re.compile(r"(?<!\d)1[6-9]\d{11}(?!\d)")  # an epoch-ms number (2020..2033) shown as such


def local_ms(day: dt.date, hour: int, minute: int = 0) -> int:
    return int(dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=TZ).timestamp() * 1000)


# "now" and the county's day are set when the console is seeded (set_today), not at import: a run that
# crosses midnight in the county's timezone would otherwise seed "today" as what the pages call yesterday
NOW = 0
TODAY = YESTERDAY = dt.date.min
MIDNIGHT = TODAY_SPAN = 0
QUIET_BEFORE_MIDNIGHT_S = 300  # longer than this module's tests take


def set_today() -> None:
    global NOW, TODAY, YESTERDAY, MIDNIGHT, TODAY_SPAN
    now = dt.datetime.now(TZ)
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), TZ)
    if (tomorrow - now).total_seconds() < QUIET_BEFORE_MIDNIGHT_S:  # the day would change under the tests
        time.sleep((tomorrow - now).total_seconds() + 1)
    NOW = int(time.time() * 1000)
    TODAY = dt.datetime.fromtimestamp(NOW / 1000, TZ).date()
    YESTERDAY = TODAY - dt.timedelta(days=1)
    MIDNIGHT = local_ms(TODAY, 0)
    TODAY_SPAN = min(900_000, NOW - MIDNIGHT)  # a period ending now (its end, the sample, is today)


def heartbeat() -> dict[str, Any]:
    return {"uptime_s": 7200, "disk_free_mb": 5120, "version": "1.4.0",
            "outbox": {"depth": {"telemetry": 3, "event": 0}, "oldest_ts": NOW - 60_000, "bytes": 900,
                       "counters": {"evicted_telemetry": 2, "sent": 40}},
            "clock": {"plausible": True, "synchronised": True, "offset_s": 0.2, "reason": "ntp synchronised"}}


def envelope(box: str, seq: int, cls: str, kind: str, data: dict[str, Any], ts: int) -> dict[str, Any]:
    raw = json.dumps({"v": 1, "id": f"{box}:{seq}", "box": box, "seq": seq, "ts": ts, "class": cls, "kind": kind,
                      "data": data})
    return {"id": f"{box}:{seq}", "box": box, "seq": seq, "ts": ts, "class": cls, "kind": kind, "received": ts + 200,
            "raw": raw}


async def seed(conn: Any) -> None:
    await conn.execute(insert(boxes), [
        {"id": "a1", "state": "online", "groups": ["town-a"], "first_seen": NOW - 86_400_000, "last_seen": NOW - 60_000,
         "backlog": 3, "version": "1.4.0", "heartbeat": heartbeat(), "heartbeat_ts": NOW - 60_000,
         "min_seq": 1, "last_seq": 5, "stored": 4}])
    await conn.execute(insert(boxes), [
        {"id": "a2", "state": "offline", "groups": ["town-a"], "first_seen": NOW - 86_400_000,
         "last_seen": NOW - 7_200_000, "backlog": 12, "version": "1.3.9"},
        {"id": "b1", "state": "online", "groups": ["town-b"], "first_seen": NOW - 86_400_000, "last_seen": NOW - 5000,
         "backlog": 0, "version": "1.4.0"},
        {"id": "stray-9", "state": "online", "groups": ["lab"], "first_seen": NOW - 86_400_000,
         "last_seen": NOW - 3000, "backlog": 0, "version": "1.4.1"},
    ])
    await conn.execute(insert(camera_states), [
        {"box": "a1", "camera": "门口", "state": "online", "reason": None, "since": NOW - 3_600_000, "updated": NOW},
        {"box": "a1", "camera": "广场", "state": "offline", "reason": "unreachable", "since": NOW - 1_800_000,
         "updated": NOW},
        {"box": "b1", "camera": "路口", "state": "degraded", "reason": "black", "since": NOW - 600_000, "updated": NOW},
    ])
    # yesterday 10:00-10:30: 门口 online all along; 路口 online 800 s + degraded 100 s, then degraded 900 s
    # (point in time 1 of 2 samples online, time-weighted 800/1800); 广场 offline
    y10, y1015, y1030 = local_ms(YESTERDAY, 10), local_ms(YESTERDAY, 10, 15), local_ms(YESTERDAY, 10, 30)
    periods = [("a1", "门口", y10, y1015, {"online": 900}, "online"),
               ("a1", "门口", y1015, y1030, {"online": 900}, "online"),
               ("a1", "广场", y10, y1015, {"offline": 900}, "offline"),
               ("a1", "广场", y1015, y1030, {"offline": 900}, "offline"),
               ("b1", "路口", y10, y1015, {"online": 800, "degraded": 100}, "online"),
               ("b1", "路口", y1015, y1030, {"degraded": 900}, "degraded")]
    # today: 门口 online at the end of its period, 广场 offline: today's (point-in-time) rate of 甲一村 is 50 %
    span_s = TODAY_SPAN / 1000
    periods.append(("a1", "门口", NOW - TODAY_SPAN, NOW, {"online": span_s}, "online"))
    periods.append(("a1", "广场", NOW - TODAY_SPAN, NOW, {"offline": span_s}, "offline"))
    await conn.execute(insert(camera_periods), [
        {"box": b, "camera": c, "period_from": f, "period_to": t, "seconds": s, "state": st}
        for b, c, f, t, s, st in periods])
    await conn.execute(insert(positions_latest), [
        {"box": "a1", "wearer": "w-1", "device": "d-1", "lat": 21.95, "lon": 100.45, "ts": NOW - 300_000},
        {"box": "a1", "wearer": "w-2", "device": "d-2", "lat": 21.95, "lon": 100.45, "ts": NOW - 7_200_000},
    ])
    await conn.execute(insert(alarms), {"id": "a1:9", "box": "a1", "kind": "sos", "wearer": "w-1", "device": "d-1",
                                        "ts": NOW - 120_000, "received": NOW - 119_000, "data": {}, "state": "new"})
    await conn.execute(insert(messages), [
        envelope("a1", 1, "event", "camera", {"camera": "广场", "state": "offline", "reason": "unreachable"},
                 NOW - 1_800_000),
        envelope("a1", 2, "telemetry", "heartbeat", {"uptime_s": 7000}, NOW - 600_000),
        envelope("a1", 4, "receipt", "cmd", {"cmd": "c-1", "state": "finished"}, NOW - 300_000),
        envelope("a1", 5, "telemetry", "heartbeat", {"uptime_s": 7200}, NOW - 60_000),
    ])


@pytest.fixture(scope="module", name="console")
def seeded_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    need_browser()
    c = start_console(tmp_path_factory.mktemp("pages"))
    try:
        set_today()
        c.run(seed)
        yield c
    finally:
        c.stop()


def open_page(browser: Any, console: Console, path: str) -> str:
    browser.get(console.url + path)
    wait_loaded(browser)
    text = page_text(browser)
    assert untranslated(text) == [], (path, untranslated(text))
    assert not EPOCH_MS.search(text), (path, EPOCH_MS.search(text))
    assert "Traceback" not in text
    return text


def test_overview_shows_the_region_tree_with_names_and_a_health_line(console: Console, browser: Any) -> None:
    login(browser, console, "admin")
    text = open_page(browser, console, "/")
    counts = {el.get_attribute("id"): el.find_element(By.CSS_SELECTOR, ".n").text
              for el in browser.find_elements(By.CSS_SELECTOR, ".count")}
    assert counts["count-boxes"] == "3/4" and counts["count-cameras"] == "1/3"
    assert counts["count-wearers"] == "1" and counts["count-alarms"] == "1"
    for name in ("勐海县", "甲镇", "乙镇", "甲一村", "甲二村", "乙一村", "甲一村委会", "今日摄像头在线率",
                 "手环上报人数"):
        assert name in text, name
    # ids only on hover
    village = browser.find_element(By.CSS_SELECTOR, "[data-village=va1] .name")
    assert village.get_attribute("title") == "va1"
    assert browser.find_element(By.LINK_TEXT, "甲一村委会").get_attribute("title") == "a1"
    visible = browser.find_element(By.TAG_NAME, "body").text
    for box_id in ("va1", "town-a", "a1", "b1"):
        assert not re.search(rf"(?<![\w-]){box_id}(?![\w-])", visible), box_id
    line = browser.find_element(By.CSS_SELECTOR, "[data-village=va1]").text
    assert "1/1" in line and "分钟前" in line  # a1 online, seen a minute ago
    assert "50%" in line and counts["count-rate"] == "50%", line  # today's camera rate
    a2 = browser.find_element(By.CSS_SELECTOR, "[data-village=va2]").text
    assert "0/1" in a2 and "12" in a2  # offline, backlog 12
    assert "未登记" in text and "stray-9" in text  # an unregistered box is listed by its id, never dropped
    assert browser_errors(browser) == []
    shoot(browser, "overview")


def test_boxes_list_and_box_page_with_its_timeline(console: Console, browser: Any) -> None:
    login(browser, console, "operator")
    text = open_page(browser, console, "/boxes")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-box=a1]").text
    for part in ("甲一村委会", "甲镇 · 甲一村", "在线", "1.4.0", "时钟正常", "被挤出 (遥测) 2"):
        assert part in row, (part, row)
    assert "离线" in browser.find_element(By.CSS_SELECTOR, "tr[data-box=a2]").text
    assert "2026" not in row or "/" in row
    Select(browser.find_element(By.ID, "state")).select_by_value("offline")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#boxes tbody tr[data-box]")) == 1)
    assert "共 4 台，显示 1 台" in page_text(browser)
    shoot(browser, "boxes")
    text = open_page(browser, console, "/boxes/a1")
    assert browser.find_element(By.ID, "box-name").text == "甲一村委会"
    items = browser.find_elements(By.CSS_SELECTOR, "#timeline li")
    assert [i.get_attribute("data-seq") for i in items] == ["5", "4", "2", "1"]  # newest first
    finished = i18n.catalog("zh_CN").gettext("finished")
    assert "指令回执" in items[1].text and finished in items[1].text and finished != "finished"
    assert "摄像头状态变化" in items[3].text and "网络不通" in items[3].text
    assert "广场" in text and "网络不通，无法连接摄像头" in text  # the camera's reason in words
    shoot(browser, "box")


def test_cameras_page_rates_side_by_side_offline_reasons_and_the_sheet(console: Console, browser: Any) -> None:
    from openpyxl import load_workbook

    login(browser, console, "viewer")
    open_page(browser, console, "/cameras")
    day = browser.find_element(By.ID, "day")
    browser.execute_script("arguments[0].value = arguments[1]", day, YESTERDAY.isoformat())
    browser.execute_script("delete document.body.dataset.loaded")
    browser.find_element(By.CSS_SELECTOR, "#pick button[type=submit]").click()
    wait_loaded(browser)
    b = browser.find_element(By.CSS_SELECTOR, "#rates tr[data-region=vb1]")
    assert b.find_element(By.CSS_SELECTOR, ".rate-pit").text == "50%"
    assert b.find_element(By.CSS_SELECTOR, ".rate-tw").text == "44.4%"
    county = browser.find_element(By.CSS_SELECTOR, "#rates tr[data-region=menghai]")
    assert county.find_element(By.CSS_SELECTOR, ".rate-pit").text == "50%"  # 3 of 6 samples
    offline = {r.get_attribute("data-camera"): r.find_element(By.CSS_SELECTOR, ".reason").text
               for r in browser.find_elements(By.CSS_SELECTOR, "#offline tr[data-camera]")}
    assert offline == {"广场": "网络不通，无法连接摄像头", "路口": "画面全黑"}
    href = browser.find_element(By.ID, "xlsx").get_attribute("href")
    assert f"date={YESTERDAY.isoformat()}" in href
    cookie = {"vc_session": browser.get_cookie("vc_session")["value"]}
    r = httpx.get(href, cookies=cookie, timeout=30)
    assert r.status_code == 200 and "camera-assessment-day" in r.headers["content-disposition"]
    ws = load_workbook(io.BytesIO(r.content)).active
    rows = [[c.value for c in row] for row in ws.iter_rows()]
    assert rows[0][0] == f"勐海县 摄像头在线率考核表（{YESTERDAY.year}年{YESTERDAY.month:02d}月{YESTERDAY.day:02d}日）"
    assert rows[2][:6] == ["序号", "乡镇", "村", "摄像头数", "时点在线率", "时长加权在线率"]
    body = [r[:6] for r in rows[3:]]
    assert body == [[1, "甲镇", "甲一村", 2, 0.5, 0.5], [2, "甲镇", "甲二村", 0, None, None],
                    [None, "甲镇 小计", None, 2, 0.5, 0.5], [3, "乙镇", "乙一村", 1, 0.5, 0.4444],
                    [None, "乙镇 小计", None, 1, 0.5, 0.4444], [None, "全县合计", None, 3, 0.5, 0.4815]]
    assert ws["E4"].number_format == "0.00%"
    csv_text = httpx.get(href.replace("format=xlsx", "format=csv"), cookies=cookie, timeout=30).content.decode(
        "utf-8-sig")
    assert csv_text.splitlines()[3] == "1,甲镇,甲一村,2,0.5,0.5,1.0,0.5,0.0,0.5,0.0"
    shoot(browser, "cameras")


def test_a_viewer_sees_no_write_control_and_a_forged_post_is_refused(console: Console, browser: Any) -> None:
    from county.server import auth
    from county.web.pages import all_pages

    # the push / write controls of the pages, by page: present for an operator, absent for a viewer
    writes = {"/broadcasts": "#new-broadcast", "/fences": "#push, #save-tools",
              "/alarms": "button[data-action=ack]"}
    login(browser, console, "operator")
    browser.get(console.url + "/broadcasts")
    wait_loaded(browser)
    assert browser.find_elements(By.CSS_SELECTOR, writes["/broadcasts"])  # the check can see one
    login(browser, console, "viewer")
    grants = auth.GRANTS["viewer"]
    for page in all_pages():
        if "{" in page.path or (page.need is not None and page.need not in grants):
            continue
        browser.get(console.url + page.path)
        wait_loaded(browser)
        needs = [el.get_attribute("data-needs") for el in browser.find_elements(By.CSS_SELECTOR, "[data-needs]")
                 if el.is_displayed()]
        assert [a for a in needs if a not in grants] == [], (page.path, needs)
        if page.path in writes:
            shown = [el for el in browser.find_elements(By.CSS_SELECTOR, writes[page.path]) if el.is_displayed()]
            assert shown == [], page.path
    forged = browser.execute_async_script("""
const done = arguments[arguments.length - 1];
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const post = (headers) => fetch('/api/v1/broadcasts', {method: 'POST', credentials: 'same-origin',
  headers: {'Content-Type': 'application/json', ...headers},
  body: JSON.stringify({to: ['box:a1'], text: '伪造广播', class: 'emergency'})})
  .then(r => r.json().then(b => [r.status, b.error]));
Promise.all([post({'X-CSRF-Token': csrf}), post({})]).then(done);""")
    assert forged == [[403, "forbidden"], [403, "csrf"]]
    token = console.token("admin")
    listed = httpx.get(console.url + "/api/v1/broadcasts", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert listed.status_code == 200 and "伪造广播" not in listed.text

    async def denied(conn: Any) -> list[str]:
        rows = (await conn.execute(select(audit.c.detail).where(audit.c.actor == "viewer",
                                                                audit.c.action == "denied"))).all()
        return sorted(json.loads(r.detail)["why"] for r in rows)

    assert console.run(denied) == ["csrf", "forbidden"]


def test_an_admin_manages_users_and_every_change_is_audited(console: Console, browser: Any) -> None:
    login(browser, console, "admin")
    open_page(browser, console, "/users")
    form = browser.find_element(By.ID, "add-user")
    form.find_element(By.NAME, "name").send_keys("zhou")
    form.find_element(By.NAME, "display_name").send_keys("周网格")
    Select(form.find_element(By.NAME, "role")).select_by_value("gridworker")
    Select(form.find_element(By.NAME, "scope")).select_by_value("town-b")
    form.find_element(By.NAME, "password").send_keys("zhou's password")
    form.find_element(By.ID, "add-submit").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-user=zhou]"))
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-user=zhou]")
    assert "周网格" in row.text and "网格员" in row.text and "乙镇" in row.text and "正常" in row.text
    assert httpx.post(console.url + "/api/v1/session", json={"username": "zhou", "password": "zhou's password"},
                      timeout=30).status_code == 200
    shoot(browser, "users")
    browser.find_element(By.CSS_SELECTOR, "tr[data-user=zhou] [data-act=disable]").click()
    wait(browser, lambda d: "已停用" in d.find_element(By.CSS_SELECTOR, "tr[data-user=zhou] .status").text)
    assert httpx.post(console.url + "/api/v1/session", json={"username": "zhou", "password": "zhou's password"},
                      timeout=30).status_code == 401
    # the admin cannot disable themselves
    assert browser.find_element(By.CSS_SELECTOR, "tr[data-user=admin] [data-act=disable]").get_attribute("disabled")
    # the audit page shows both changes by admin, and the chain is intact
    open_page(browser, console, "/audit")
    assert browser.find_elements(By.ID, "chain-ok")
    rows = [(r.find_element(By.CSS_SELECTOR, ".actor").text, r.get_attribute("data-action"))
            for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr[data-seq]")]
    assert ("admin", "user.add") in rows and ("admin", "user.update") in rows
    Select(browser.find_element(By.ID, "action")).select_by_value("user.add")
    browser.execute_script("delete document.body.dataset.loaded")
    browser.find_element(By.CSS_SELECTOR, "#filter button[type=submit]").click()
    wait_loaded(browser)
    shown = {r.get_attribute("data-action")
             for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr[data-seq]")}
    assert shown == {"user.add"}
    assert "添加用户" in page_text(browser) and "zhou" in page_text(browser)
    shoot(browser, "audit")


def test_a_broken_audit_chain_is_shown(console: Console, browser: Any) -> None:
    from sqlalchemy import update

    async def tamper(conn: Any) -> None:
        first = (await conn.execute(select(audit.c.seq).order_by(audit.c.seq).limit(1))).scalar_one()
        await conn.execute(update(audit).where(audit.c.seq == first).values(actor="mallory"))

    console.run(tamper)
    login(browser, console, "admin")
    open_page(browser, console, "/audit")
    assert "审计链已损坏" in browser.find_element(By.ID, "chain").text
    assert "第 1 条" in browser.find_element(By.ID, "chain").text


def test_pages_a_role_may_not_open_answer_403_in_words(console: Console) -> None:
    token_cookie = httpx.post(console.url + "/login", data={"username": "gw-a", "password": PASSWORD},
                              timeout=30).cookies
    for path in ("/users", "/audit", "/cameras"):
        r = httpx.get(console.url + path, cookies=token_cookie, timeout=10)
        assert r.status_code == 403 and "无权访问" in r.text, path


def test_every_page_in_chinese_has_no_untranslated_string(console: Console, browser: Any) -> None:
    """Every page of county/web/pages (the teammates' too) as the admin, in Chinese: no English catalog
    string reached the page, no epoch number, no script error or CSP violation."""
    from county.web.pages import all_pages

    login(browser, console, "admin")
    browser_errors(browser)
    mine = {"/", "/boxes", "/boxes/{id}", "/cameras", "/users", "/audit"}  # opened by the tests above
    assert mine <= {p.path for p in all_pages()}
    for page in all_pages():
        if "{" in page.path or page.path in mine:
            continue  # a page of one object (an alarm, a broadcast): its own module's test opens it
        open_page(browser, console, page.path)
    assert browser_errors(browser) == []
