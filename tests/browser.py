"""The web console's browser tests: a real `village county serve` and a real headless Chromium.

Use in a test module (one server and one browser per module, both module-scoped):

    from tests.browser import Console, browser_fixture, console_fixture, login, shoot  # noqa: F401 - fixtures

    def test_overview(console: Console, browser: WebDriver) -> None:
        login(browser, console, "admin")
        browser.get(console.url + "/")
        wait_loaded(browser)
        shoot(browser, "overview")           # 1366x768 and 375x812 PNGs, checked not blank, CJK rendered

`console` starts mosquitto, writes county.toml (signing key, [county] timezone Asia/Shanghai, the regions
below), creates one user per role (USERS; password PASSWORD) straight in the database the server migrates,
and starts `python -m agent.cli county serve`. Put rows in its database with `console.run(coro_fn)` (an
async function of an AsyncConnection inside a transaction) or drive simulated boxes through its broker
(`console.broker`). A module needing other settings writes its own fixture with `start_console(dir,
extra_toml=..., regions=...)`.

The browser is Debian's chromium through Debian's chromedriver (`Service('/usr/bin/chromedriver')`: no
driver download). Missing: the tests skip saying so; with CI=true they fail (scripts/test installs them).

Screenshots go to build/test-artifacts/web/ (gitignored). "Not blank": at least 16 distinct colours and the
commonest colour under 97 % of the pixels. "CJK renders" (cjk_renders): the page's own font stack draws
several CJK characters on a canvas; they must all differ from each other and from an unassigned code point's
glyph. A missing CJK font draws every one of them as the same .notdef box (or nothing), so this fails then;
`fc-list` would only say a font is installed, not that the page's CSS reaches it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import in_ci
from tests.support import Mosquitto, free_port, toml_dumps, wait_until

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "build" / "test-artifacts" / "web"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"
KID = "county-web-test"
SIZES = ((1366, 768), (375, 812))
WAIT_S = 20.0  # a condition's generous timeout (the page shows it long before on a quiet machine)

REGIONS: dict[str, Any] = {
    "county": {"id": "menghai", "name": "勐海县"},
    "township": [
        {"id": "town-a", "name": "甲镇", "village": [
            {"id": "va1", "name": "甲一村", "lat": 21.95, "lon": 100.45,
             "box": [{"id": "a1", "name": "甲一村委会", "groups": ["town-a"], "lat": 21.95, "lon": 100.45}]},
            {"id": "va2", "name": "甲二村", "lat": 21.97, "lon": 100.47,
             "box": [{"id": "a2", "name": "甲二村委会", "groups": ["town-a"], "lat": 21.97, "lon": 100.47}]},
        ]},
        {"id": "town-b", "name": "乙镇", "village": [
            {"id": "vb1", "name": "乙一村", "lat": 22.01, "lon": 100.52,
             "box": [{"id": "b1", "name": "乙一村委会", "groups": ["town-b"], "lat": 22.01, "lon": 100.52}]},
        ]},
    ],
}
# name -> (role, scope, display name)
USERS: dict[str, tuple[str, str | None, str]] = {
    "admin": ("admin", None, "王管理"),
    "operator": ("operator", None, "李操作"),
    "reviewer": ("reviewer", None, "张审核"),
    "viewer": ("viewer", None, "赵查看"),
    "gw-a": ("gridworker", "town-a", "刘网格"),
    "op-a": ("operator", "town-a", "陈甲镇"),
}


def need_browser() -> None:
    """Skip (fail in CI) unless chromium and chromedriver are installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        try:
            import selenium  # noqa: F401
        except ImportError:
            missing.append("the selenium package ([test] extra)")
    if missing:
        why = f"the browser tests need {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)"
        if in_ci():
            pytest.fail(f"{why}; CI=true needs it", pytrace=False)
        pytest.skip(why)


# ------------------------------------------------------------------------------------------- the server
@dataclass
class Console:
    dir: Path
    broker: Mosquitto
    port: int
    proc: subprocess.Popen[bytes] | None = None
    db_url: str = ""
    config: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "serve.log"

    def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """`await fn(conn)` in one transaction of the server's database (from this test process)."""
        from county.store import Database

        async def go() -> Any:
            db = await Database.open(self.db_url, migrate=False)
            try:
                async with db.begin() as conn:
                    return await fn(conn)
            finally:
                await db.close()

        return asyncio.run(go())

    def token(self, user: str) -> str:
        """A bearer token for API calls from the test (a login through the API)."""
        r = httpx.post(f"{self.url}/api/v1/session", json={"username": user, "password": PASSWORD}, timeout=30)
        r.raise_for_status()
        return str(r.json()["token"])

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.broker.stop()


def start_console(workdir: Path, *, regions: dict[str, Any] | None = None, extra_toml: str = "",
                  users: dict[str, tuple[str, str | None, str]] | None = None, db_url: str | None = None) -> Console:
    """Mosquitto, county.toml, the users, `village county serve` (see the module doc); `db_url` an existing
    database to serve (default: a new SQLite file in `workdir`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "broker").mkdir(exist_ok=True)
    broker = Mosquitto(workdir / "broker").start()
    console = Console(workdir, broker, free_port())
    key = Ed25519PrivateKey.generate()
    (workdir / "county.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (workdir / "regions.toml").write_text(toml_dumps(regions or REGIONS), encoding="utf-8")
    console.db_url = db_url or f"sqlite:///{workdir / 'county.db'}"
    console.config = workdir / "county.toml"
    console.config.write_text(f"""
[server]
listen = "127.0.0.1:{console.port}"
[database]
url = "{console.db_url}"
[mqtt]
url = "{broker.url}"
client_id = "web-test-{console.port}"
[signing]
key = "{workdir / 'county.key'}"
kid = "{KID}"
[county]
timezone = "Asia/Shanghai"
regions = "{workdir / 'regions.toml'}"
{extra_toml}
""", encoding="utf-8")
    try:
        _add_users(console.db_url, users or USERS)
        with console.log.open("ab") as log:
            console.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "county", "serve", "-c",
                                             str(console.config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

        def healthy() -> bool:
            if console.proc is not None and console.proc.poll() is not None:
                raise RuntimeError(f"county serve exited {console.proc.returncode}:\n{console.tail()}")
            try:
                return httpx.get(f"{console.url}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, interval=0.1)
    except BaseException:
        console.stop()
        raise
    return console


def _add_users(db_url: str, users: dict[str, tuple[str, str | None, str]]) -> None:
    from sqlalchemy import insert

    from county.server.auth import hash_password
    from county.store import Database
    from county.store.tables import users as users_t

    hashed = hash_password(PASSWORD)  # one hash for all: argon2 takes a while
    now = int(time.time() * 1000)

    async def go() -> None:
        db = await Database.open(db_url)  # migrates: the server finds its schema ready
        try:
            async with db.begin() as conn:
                await conn.execute(insert(users_t), [
                    {"name": n, "role": r, "scope": s, "password_hash": hashed, "display_name": d,
                     "phone": f"1380000{i:04d}", "disabled": False, "created_at": now}
                    for i, (n, (r, s, d)) in enumerate(users.items())])
        finally:
            await db.close()

    asyncio.run(go())


@pytest.fixture(scope="module", name="console")
def console_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A running `village county serve` with the regions and users above (one per test module)."""
    need_browser()
    c = start_console(tmp_path_factory.mktemp("console"))
    try:
        yield c
    finally:
        c.stop()


# ------------------------------------------------------------------------------------------- the browser
def new_browser(lang: str = "zh-CN") -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,768", f"--lang={lang}", "--hide-scrollbars", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """One headless Chromium for the module (log in as another user with `login`)."""
    need_browser()
    driver = new_browser()
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # a page re-rendering a list replaces its elements: look again rather than fail
    return WebDriverWait(driver, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(condition)


def wait_loaded(driver: Any, timeout: float = WAIT_S) -> None:
    """Until the page's module has filled it (`<body data-loaded>`, set by session.js loaded())."""
    wait(driver, lambda d: d.execute_script("return document.body && document.body.dataset.loaded"), timeout)


def login(driver: Any, console: Console, user: str, password: str = PASSWORD, *, lang: str | None = None) -> None:
    """Log `user` in through the login form (any earlier session's cookies are dropped first); `lang`
    ("zh_CN" / "en") sets the language cookie as the page's switch does."""
    from selenium.webdriver.common.by import By

    driver.get(console.url + "/login")
    driver.delete_all_cookies()
    if lang is not None:
        driver.add_cookie({"name": "vc_lang", "value": lang, "path": "/"})
    driver.get(console.url + "/login")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    wait(driver, lambda d: "/login" not in d.current_url)


def browser_errors(driver: Any) -> list[str]:
    """SEVERE entries of the browser console since the last call (CSP violations, script errors)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


# ------------------------------------------------------------------------------------------- screenshots
_CJK_PROBE = """
const fam = getComputedStyle(document.body).fontFamily;
function draw(ch) {
  const c = document.createElement('canvas'); c.width = 64; c.height = 64;
  const g = c.getContext('2d'); g.fillStyle = '#fff'; g.fillRect(0, 0, 64, 64);
  g.fillStyle = '#000'; g.font = '40px ' + fam; g.textBaseline = 'top'; g.fillText(ch, 8, 8);
  const d = g.getImageData(0, 0, 64, 64).data; let ink = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] < 128) ink++;
  return [c.toDataURL(), ink];
}
const chars = arguments[0];
return {family: fam, glyphs: chars.map(draw), notdef: draw('\\u0378')};
"""


def cjk_renders(driver: Any, chars: str = "勐海县广播告警") -> None:
    """Assert the page's font stack draws real CJK glyphs (see the module doc)."""
    got = driver.execute_script(_CJK_PROBE, list(chars))
    images = [g[0] for g in got["glyphs"]]
    inks = [g[1] for g in got["glyphs"]]
    assert all(ink > 20 for ink in inks), f"CJK characters draw (almost) no ink with {got['family']}: {inks}"
    assert len(set(images)) == len(images), f"CJK characters draw identical glyphs (tofu) with {got['family']}"
    assert got["notdef"][0] not in images, f"a CJK character draws the missing-glyph box with {got['family']}"


def not_blank(png: bytes, name: str) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    small = img.resize((max(1, img.width // 2), max(1, img.height // 2)))
    colors = small.getcolors(maxcolors=1 << 20) or []
    total = small.width * small.height
    top = max(c for c, _ in colors) if colors else total
    assert len(colors) >= 16, f"{name}: only {len(colors)} colours: blank?"
    assert top / total < 0.97, f"{name}: {top / total:.1%} of the pixels are one colour: blank?"


def shoot(driver: Any, name: str, sizes: tuple[tuple[int, int], ...] = SIZES, *, cjk: bool = True) -> list[Path]:
    """Screenshots of the current page at each size (viewport: width x height CSS px), written to
    build/test-artifacts/web/NAME-WxH.png and checked not blank; with `cjk`, CJK glyphs checked too.
    The page is reloaded at each size (its layout as a phone would first get it) and waited for."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for width, height in sizes:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700})
            driver.refresh()
            wait_loaded(driver)
            wide = driver.execute_script("return document.documentElement.scrollWidth")
            assert wide <= width + 1, f"{name} at {width}px: the page is {wide}px wide (it must not scroll sideways)"
            png = driver.get_screenshot_as_png()
            path = ARTIFACTS / f"{name}-{width}x{height}.png"
            path.write_bytes(png)
            not_blank(png, path.name)
            if cjk:
                cjk_renders(driver)
            paths.append(path)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return paths


def page_text(driver: Any) -> str:
    """The page's visible text plus its title/placeholder/aria-label attributes, without the content of
    elements marked `translate="no"` (records shown as stored, e.g. an audit row's detail JSON)."""
    return str(driver.execute_script("""
let body = document.body.innerText;
for (const el of document.querySelectorAll('[translate="no"]')) body = body.replace(el.innerText, '');
const parts = [document.title, body];
for (const el of document.querySelectorAll('[title],[placeholder],[aria-label]'))
  for (const a of ['title', 'placeholder', 'aria-label']) if (el.hasAttribute(a)) parts.push(el.getAttribute(a));
return parts.join('\\n');"""))


def untranslated(text: str) -> list[str]:
    """English catalog strings (msgids whose zh_CN text differs) found in a Chinese page's text: each one is
    text that reached the page without going through the catalog. Placeholders split a msgid into the
    literal pieces looked for; pieces of fewer than 4 letters are ignored (ids, units)."""
    import re

    from county.web import i18n

    zh = i18n.read_messages("zh_CN")
    found = []
    for msgid, msgstr in zh.items():
        if msgstr == msgid:
            continue
        for piece in re.split(r"%\(\w+\)s|\{\w+\}", msgid):
            piece = piece.strip(" .,:;…")
            if len(re.findall(r"[A-Za-z]", piece)) >= 4 and re.search(rf"(?<![A-Za-z]){re.escape(piece)}(?![A-Za-z])",
                                                                        text):
                found.append(piece)
    return sorted(set(found))


def today_local(tz: str = "Asia/Shanghai") -> dt.date:
    import zoneinfo

    return dt.datetime.now(zoneinfo.ZoneInfo(tz)).date()


__all__ = ["ARTIFACTS", "PASSWORD", "REGIONS", "USERS", "Console", "browser_errors", "browser_fixture",
           "cjk_renders", "console_fixture", "login", "new_browser", "not_blank", "page_text", "shoot", "start_console",
           "untranslated", "wait", "wait_loaded"]
