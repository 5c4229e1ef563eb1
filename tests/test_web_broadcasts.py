"""广播 pages in a real headless Chromium against a real `village county serve`, a real mosquitto and boxes:
甲镇's two boxes (a1, a2) are real `village agent run` processes (profile sim: the relay and player twins,
the real espeak-ng), trusting the console's key; 乙镇's b1 is a twin on the broker (SimBox) that verifies
each command and answers as told (finish, reject with a reason, stay silent), for the cases a real box
cannot be made to produce on demand.

Log in; compose a text broadcast to one township on the region tree (the page shows the exact boxes first);
the broadcast page shows every box of that township going to `finished`; a scheduled one shows its local
play time and, cancelled from the page, `cancelled` per box; a rejected receipt shows its reason in words;
resend reaches a box that did not answer; an upload is fitted and sent; a CAP file fills the form; a weekly
repeat reaches the box; review on: a reviewer approves; the server's spoken preview plays in the page;
every reason code the box's code can send has words; screenshots at 1366x768 and 375x812; no untranslated
string."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from agent.protocol.topics import Topics
from tests.agentproc import AgentProcess
from tests.browser import (  # noqa: F401 - the browser and console fixtures
    KID,
    Console,
    browser_errors,
    browser_fixture,
    console_fixture,
    login,
    page_text,
    shoot,
    start_console,
    untranslated,
    wait,
    wait_loaded,
)
from tests.support import TwinBox, agent_config_dict, wait_until
from tests.web_sim import public_key_file

REPO = Path(__file__).resolve().parents[1]
T = Topics("vc/v1")
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
LONG = 90.0  # a round trip through the server, the broker and the boxes, on a machine that may be busy


class SimBox(TwinBox):
    """A box twin on the broker: retained online state with its groups, its cmd topics subscribed, every
    command verified (signature with the county key, `to` naming it) and answered with the receipts the
    box's broadcast engine sends. `silent` boxes verify but never answer (until `silent` is cleared)."""

    def __init__(self, url: str, box: str, groups: list[str], key: Any, *, silent: bool = False,
                 reject: str | None = None) -> None:
        self.silent, self.reject = silent, reject
        self.items: dict[str, str] = {}   # broadcast id -> its state on this box
        self.got: list[dict[str, Any]] = []
        super().__init__(url, box, groups, {KID: key}, client_id=f"simbox-{box}")

    def _receipt(self, cmd: str, state: str, **extra: Any) -> None:
        self.receipt(cmd, state, int(dt.datetime.now(dt.UTC).timestamp() * 1000), **extra)

    def on_command(self, topic: str, cmd: dict[str, Any], retained: bool) -> None:
        if not self.addressed(cmd):
            return
        self.got.append(cmd)
        if self.silent:
            return
        data, cid = cmd["data"], cmd["id"]
        if cmd["kind"] == "broadcast.play":
            self._receipt(cid, "received")
            if self.reject:
                self._receipt(cid, "rejected", reason=self.reject, detail="refused by the twin")
            elif data.get("start") and data["start"] > dt.datetime.now(dt.UTC).timestamp() + 5:
                self.items[cid] = "scheduled"
                self._receipt(cid, "scheduled", at=data["start"])
            else:
                self._receipt(cid, "started", volume=data.get("volume") or 70, lead_s=1.2)
                self._receipt(cid, "finished", duration_s=3.0, total_s=5.1)
                self.items[cid] = "finished"
        elif cmd["kind"] == "broadcast.cancel":
            target = data.get("broadcast")
            if self.items.get(target) == "scheduled":
                self.items[target] = "cancelled"
                self._receipt(target, "cancelled", by=cid)
                self._receipt(cid, "applied", cancelled=[target])
            else:
                self._receipt(cid, "failed", reason="unknown_broadcast", broadcast=target)


def county_key(console: Console) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key((console.dir / "county.key").read_bytes(), None).public_key()


def online(console: Console, boxes: set[str]) -> None:
    """Until the county has stored each box's retained `online` state (with its groups)."""
    import httpx

    token = console.token("admin")

    def known() -> bool:
        r = httpx.get(f"{console.url}/api/v1/boxes", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        return {b["id"] for b in r.json() if b.get("state") == "online"} >= boxes

    wait_until(known, timeout=60, interval=0.1)


@pytest.fixture(scope="module")
def agents(console: Console, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, AgentProcess]]:
    """甲镇's boxes a1 and a2 as real agents (no quiet hours, no warm-up or chime: the content alone plays)."""
    pub = public_key_file(console)
    procs: dict[str, AgentProcess] = {}
    try:
        for box in ("a1", "a2"):
            work = tmp_path_factory.mktemp(f"agent-{box}")
            cfg = agent_config_dict(work / "state", console.broker.url, box, trust={"keys": {KID: str(pub)}},
                                    broadcast={"quiet_hours": [], "warmup_s": 0, "tail_s": 0, "chime": "",
                                               "off_delay_s": 0, "timezone": "Asia/Shanghai"})
            cfg["box"]["groups"] = ["town-a"]
            procs[box] = AgentProcess(work, cfg).start(wait_ready=False)
        for proc in procs.values():
            proc.wait_message("READY=1", LONG)
        online(console, set(procs))
        yield procs
    finally:
        for proc in procs.values():
            proc.close()


@pytest.fixture(scope="module")
def boxes(console: Console) -> Iterator[dict[str, SimBox]]:
    """乙镇's b1 as a twin that answers as a test tells it."""
    sims = {"b1": SimBox(console.broker.url, "b1", ["town-b"], county_key(console))}
    online(console, set(sims))
    try:
        yield sims
    finally:
        for sim in sims.values():
            sim.stop()


def board(driver: Any) -> dict[str, str]:
    """{box: state} of the board, read in one script (the rows are re-rendered as receipts arrive)."""
    return dict(driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#bc-board tbody tr')]"
        ".map((tr) => [tr.dataset.box, tr.dataset.state]))"))


def text_of(driver: Any, css: str, attr: str | None = None) -> str:
    """An element's visible text (or attribute), read in one script: no stale element between find and read."""
    return str(driver.execute_script(
        "const el = document.querySelector(arguments[0]); if (!el) return null;"
        "return arguments[1] ? el.getAttribute(arguments[1]) : el.innerText", css, attr))


def tick(driver: Any, target: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#target-tree input[data-target="{target}"]').click()


def compose(driver: Any, console: Console, text: str, target: str, *, start: str | None = None) -> str:
    """Fill the compose form (text, one target on the tree), wait for the exact box list, send; the id."""
    driver.get(console.url + "/broadcasts/new")
    wait_loaded(driver, LONG)
    driver.find_element(By.ID, "text").send_keys(text)
    if start is not None:
        field = driver.find_element(By.ID, "start")
        driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', "
                              "{bubbles: true}))", field, start)
    tick(driver, target)
    wait(driver, lambda d: not d.find_element(By.ID, "send").get_attribute("disabled"), LONG)
    driver.find_element(By.ID, "send").click()
    wait(driver, lambda d: re.search(r"/broadcasts/[0-9a-f-]{36}$", d.current_url), LONG)
    wait_loaded(driver, LONG)
    return str(driver.current_url.rsplit("/", 1)[1])


def test_push_to_a_township_and_watch_every_box_finish(console: Console, browser: Any,
                                                       agents: dict[str, AgentProcess],
                                                       boxes: dict[str, SimBox]) -> None:
    login(browser, console, "operator")
    browser.get(console.url + "/broadcasts/new")
    wait_loaded(browser, LONG)
    tick(browser, "town-a")
    wait(browser, lambda d: d.find_element(By.ID, "target-boxes").get_attribute("data-count") == "2", LONG)
    listed = [li.get_attribute("data-box") for li in browser.find_elements(By.CSS_SELECTOR, "#target-boxes li")]
    assert listed == ["a1", "a2"]  # exactly the township's boxes, by name
    assert "甲一村委会" in browser.find_element(By.ID, "target-boxes").text
    assert untranslated(page_text(browser)) == []
    shoot(browser, "broadcast-compose")

    compose(browser, console, "今晚开会。", "town-a")
    wait(browser, lambda d: board(d) == {"a1": "finished", "a2": "finished"}, LONG)  # the real agents played it
    assert text_of(browser, '#bc-board tr[data-box="a1"] [data-field=state]') == "完成"
    assert boxes["b1"].got == []  # the other township heard nothing
    times = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#bc-board time")]
    assert times and all(re.match(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}$", x) for x in times), times
    assert untranslated(page_text(browser)) == []
    shoot(browser, "broadcast-finished")
    assert browser_errors(browser) == []


def test_cancel_a_scheduled_broadcast_and_see_cancelled(console: Console, browser: Any,
                                                        agents: dict[str, AgentProcess]) -> None:
    login(browser, console, "operator")
    later = (dt.datetime.now(TZ) + dt.timedelta(hours=3)).replace(second=0, microsecond=0)
    bid = compose(browser, console, "明天上午九点停水。", "town-a", start=later.strftime("%Y-%m-%dT%H:%M"))
    wait(browser, lambda d: board(d) == {"a1": "scheduled", "a2": "scheduled"}, LONG)
    shown = text_of(browser, '#bc-board tr[data-box="a1"]')
    assert f"{later:%Y/%m/%d %H:%M}:00" in shown and "播放" in shown, shown  # the box's own `at`, local
    button = browser.find_element(By.ID, "bc-cancel")
    button.click()  # arms it
    wait(browser, lambda d: d.find_element(By.ID, "bc-cancel").get_attribute("data-armed") == "1", LONG)
    button.click()
    wait(browser, lambda d: board(d) == {"a1": "cancelled", "a2": "cancelled"}, LONG)
    wait(browser, lambda d: d.find_element(By.ID, "bc-state").get_attribute("data-state") == "cancelled", LONG)
    browser.get(console.url + "/broadcasts")
    wait_loaded(browser, LONG)
    row = browser.find_element(By.CSS_SELECTOR, f'#broadcast-list tr[data-id="{bid}"]')
    assert row.get_attribute("data-state") == "cancelled" and "已取消" in row.text
    assert untranslated(page_text(browser)) == []
    shoot(browser, "broadcast-list")


def test_a_rejection_in_words_and_resend_to_the_silent_box(console: Console, browser: Any,
                                                            boxes: dict[str, SimBox]) -> None:
    b1 = boxes["b1"]
    login(browser, console, "operator")
    b1.reject = "audio_type"
    try:
        compose(browser, console, "测试", "b1")
        wait(browser, lambda d: board(d) == {"b1": "rejected"}, LONG)
    finally:
        b1.reject = None
    reason = '#bc-board tr[data-box="b1"] [data-field=reason]'
    assert text_of(browser, reason) == "广播箱不能播放这种音频格式"
    assert text_of(browser, reason, "title") == "audio_type"
    b1.silent = True
    try:
        bid = compose(browser, console, "再测试", "b1")
        wait(browser, lambda d: [c["id"] for c in b1.got].count(bid) == 1, LONG)
        wait(browser, lambda d: board(d) == {"b1": "no_answer"}, LONG)
    finally:
        b1.silent = False
    resend = browser.find_element(By.ID, "bc-resend")
    assert "1" in resend.text
    resend.click()
    wait(browser, lambda d: board(d) == {"b1": "finished"}, LONG)
    assert [c["id"] for c in b1.got].count(bid) == 2


def test_the_servers_spoken_preview_plays_in_the_page(console: Console, browser: Any) -> None:
    login(browser, console, "operator")
    browser.get(console.url + "/broadcasts/new")
    wait_loaded(browser, LONG)
    browser.find_element(By.ID, "text").send_keys("请注意，这是一条测试广播。")
    browser.find_element(By.ID, "preview").click()
    wait(browser, lambda d: d.find_element(By.ID, "preview-state").get_attribute("data-ready") == "1", LONG)
    duration = browser.execute_script("return document.getElementById('preview-audio').duration")
    assert duration > 1.0  # the browser decoded the server's Ogg/Opus rendering
    assert browser_errors(browser) == []


def test_a_viewer_sees_no_compose_button_and_cannot_open_the_form(console: Console, browser: Any) -> None:
    login(browser, console, "viewer")
    browser.get(console.url + "/broadcasts")
    wait_loaded(browser, LONG)
    assert browser.find_elements(By.ID, "new-broadcast") == []
    browser.get(console.url + "/broadcasts/new")
    assert "403" in browser.title or "无权" in page_text(browser) or "不能" in page_text(browser)


def test_an_uploaded_file_is_fitted_and_sent(console: Console, browser: Any, boxes: dict[str, SimBox],
                                            tmp_path: Path) -> None:
    wav = tmp_path / "通知.wav"  # 15 s of 48 kHz stereo PCM, 2.9 MB: over the 2 MiB a command carries
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=15", "-ac", "2", "-ar", "48000", str(wav)], check=True, timeout=60)
    login(browser, console, "operator")
    browser.get(console.url + "/broadcasts/new")
    wait_loaded(browser, LONG)
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=audio]").click()
    browser.find_element(By.ID, "audio-file").send_keys(str(wav))
    wait(browser, lambda d: d.find_element(By.ID, "audio-state").get_attribute("data-ready") == "1", LONG)
    state = browser.find_element(By.ID, "audio-state").text
    assert "转码为 Opus 64 kbit/s" in state and "15 秒" in state, state
    assert browser.find_element(By.ID, "title").get_attribute("value") == "通知"
    tick(browser, "b1")
    wait(browser, lambda d: not d.find_element(By.ID, "send").get_attribute("disabled"), LONG)
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda d: re.search(r"/broadcasts/[0-9a-f-]{36}$", d.current_url), LONG)
    wait(browser, lambda d: board(d) == {"b1": "finished"}, LONG)
    audio = boxes["b1"].got[-1]["data"]["audio"]
    assert audio["mime"] == "audio/ogg" and len(audio["b64"]) * 3 // 4 <= 2 * 1024 * 1024


CAP_XML = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>storm-7</identifier><sender>weather@menghai.gov.cn</sender>
  <sent>2026-12-01T15:00:00+08:00</sent><status>Exercise</status><msgType>Alert</msgType><scope>Public</scope>
  <info><language>zh-CN</language><event>暴雨</event><urgency>Immediate</urgency><severity>Moderate</severity>
    <certainty>Likely</certainty><headline>暴雨演练</headline><description>这是暴雨预警演练。</description></info>
</alert>"""


def test_a_cap_file_fills_the_form_and_a_weekly_repeat_is_shown(console: Console, browser: Any,
                                                                 boxes: dict[str, SimBox], tmp_path: Path) -> None:
    cap = tmp_path / "storm.xml"
    cap.write_text(CAP_XML, encoding="utf-8")
    login(browser, console, "operator")
    browser.get(console.url + "/broadcasts/new")
    wait_loaded(browser, LONG)
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=cap]").click()
    evil = tmp_path / "evil.xml"  # refused: the server's reason comes back in the page's language
    evil.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><alert/>', encoding="utf-8")
    browser.find_element(By.ID, "cap-file").send_keys(str(evil))
    wait(browser, lambda d: "CAP 文档带有 DOCTYPE，已拒绝" in d.find_element(By.ID, "cap-state").text, LONG)
    browser.find_element(By.ID, "cap-file").send_keys(str(cap))
    wait(browser, lambda d: d.find_element(By.ID, "cap-state").get_attribute("data-ready") == "1", LONG)
    assert browser.find_element(By.ID, "text").get_attribute("value") == "暴雨演练\n这是暴雨预警演练。"
    assert browser.find_element(By.ID, "class").get_attribute("value") == "drill"  # Exercise
    assert browser.find_element(By.ID, "level").get_attribute("value") == "3"
    Select(browser.find_element(By.ID, "repeat")).select_by_value("weekly")
    for day in ("mon", "thu"):  # Monday is ticked already: untick it, tick Thursday and Saturday
        browser.find_element(By.CSS_SELECTOR, f'#repeat-days input[value="{day}"]').click()
    browser.find_element(By.CSS_SELECTOR, '#repeat-days input[value="sat"]').click()
    at = browser.find_element(By.ID, "repeat-at")
    browser.execute_script("arguments[0].value = '07:30'; arguments[0].dispatchEvent(new Event('input', "
                           "{bubbles: true}))", at)
    tick(browser, "b1")
    wait(browser, lambda d: not d.find_element(By.ID, "send").get_attribute("disabled"), LONG)
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda d: re.search(r"/broadcasts/[0-9a-f-]{36}$", d.current_url), LONG)
    wait_loaded(browser, LONG)
    facts = browser.find_element(By.ID, "bc-facts").text
    assert "周四、周六 07:30" in facts and "演练" in facts, facts
    sent = boxes["b1"].got[-1]["data"]
    assert sent["repeat"]["days"] == ["thu", "sat"] and sent["repeat"]["at"] == "07:30"
    assert sent["repeat"]["tz"] == "Asia/Shanghai" and sent["class"] == "drill"


@pytest.fixture(scope="module")
def review_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    c = start_console(tmp_path_factory.mktemp("review"), extra_toml="[review]\ndaily = true\n")
    try:
        yield c
    finally:
        c.stop()


def test_with_review_on_a_reviewer_approves_and_it_is_sent(review_console: Console, browser: Any) -> None:
    box = SimBox(review_console.broker.url, "b1", ["town-b"], county_key(review_console))
    try:
        login(browser, review_console, "operator")
        browser.get(review_console.url + "/broadcasts/new")
        wait_loaded(browser, LONG)
        assert browser.find_element(By.ID, "review-note").is_displayed()
        bid = compose(browser, review_console, "需要审核的通知", "b1")
        wait(browser, lambda d: text_of(d, "#bc-state", "data-state") == "awaiting_review", LONG)
        assert browser.find_elements(By.ID, "bc-approve") == [] and box.got == []  # an operator may not approve
        login(browser, review_console, "reviewer")
        browser.get(f"{review_console.url}/broadcasts/{bid}")
        wait_loaded(browser, LONG)
        browser.find_element(By.ID, "bc-approve").click()
        wait(browser, lambda d: board(d) == {"b1": "finished"}, LONG)
        assert "张审核" in browser.find_element(By.ID, "bc-facts").text or "reviewer" in browser.find_element(
            By.ID, "bc-facts").text
    finally:
        box.stop()


# ------------------------------------------------------------------------------------------ reason words
CODE_PATTERNS = (
    r'(?:CommandRejected|BadBroadcast|MediaError|PlaybackError|CommandFailed)\(\s*"([a-z_]+)"',
    r'reason = "([a-z_]+)"',
    r'Notify\([^()]*?"(?:scheduled|failed|rejected|expired|preempted|cancelled)", "([a-z_]+)"',
    r'self\._receipt\([^()]*?reason="([a-z_]+)"',
)
SOURCES = ("agent/commands.py", "agent/protocol/jws.py", "agent/broadcast", "drivers/audio")


def box_reason_codes() -> set[str]:
    codes: set[str] = set()
    for src in SOURCES:
        path = REPO / src
        for f in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
            text = f.read_text(encoding="utf-8")
            for pattern in CODE_PATTERNS:
                codes.update(re.findall(pattern, text))
    return codes


def test_every_reason_the_box_sends_has_words() -> None:
    js = (REPO / "county/web/static/js/broadcastwords.js").read_text(encoding="utf-8")
    block = js.split("export const REASONS = {", 1)[1].split("\n};", 1)[0]
    words = set(re.findall(r"^\s*([a-z_]+): t\(", block, re.M))
    codes = box_reason_codes()
    assert {"bad_signature", "expired", "hash_mismatch", "quiet_hours", "tts_failed", "player_missing"} <= codes
    assert codes - words == set(), "reason codes without words in broadcastwords.js"
    families = re.findall(r'f"\{[^}]*\}_(exit|killed)_\{', (REPO / "drivers/audio/player.py").read_text())
    assert set(families) <= {"exit", "killed"} and all(f"_{f}_" in js for f in families)
