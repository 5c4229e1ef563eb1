"""The console's shell in a real browser against a real `village county serve`: login through the form (the
page never gets the token), pages redirect to login without a session, security headers on every response,
no CSP violation or script error, the language switch, dates in the county's timezone, logout."""

from __future__ import annotations

from typing import Any

import httpx
from selenium.webdriver.common.by import By

from tests.browser import (  # noqa: F401 - the browser and console fixtures
    Console,
    browser_errors,
    browser_fixture,
    console_fixture,
    login,
    page_text,
    shoot,
    wait,
    wait_loaded,
)


def test_a_page_without_a_session_redirects_to_login(console: Console) -> None:
    r = httpx.get(console.url + "/?x=1", follow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F%3Fx%3D1"
    page = httpx.get(console.url + "/login", timeout=10)
    assert page.status_code == 200 and "登录" in page.text and 'lang="zh-CN"' in page.text


def test_every_response_has_the_security_headers(console: Console) -> None:
    for path in ("/login", "/static/js/api.js", "/api/v1/health", "/api/v1/boxes", "/i18n/zh_CN.json"):
        r = httpx.get(console.url + path, timeout=10)
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert r.headers.get("x-content-type-options") == "nosniff", path
    login_page = httpx.get(console.url + "/login", timeout=10).text
    assert "<script>" not in login_page and " on" + "click=" not in login_page and "style=" not in login_page


def test_the_login_form_sets_the_cookie_and_no_token_reaches_the_page(console: Console) -> None:
    with httpx.Client(base_url=console.url, timeout=30) as client:
        bad = client.post("/login", data={"username": "admin", "password": "wrong password!", "next": "/"})
        assert bad.status_code == 401 and "用户名或密码错误" in bad.text
        r = client.post("/login", data={"username": "admin", "password": "correct horse battery",
                                        "next": "https://evil.example/"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"  # never off-site
        cookie = r.headers["set-cookie"]
        assert "vc_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict",
                                                                                                       "strict")
        token = client.cookies["vc_session"]
        page = client.get("/")
        assert page.status_code == 200 and token not in page.text and token not in r.text
        # a login posted from another site is refused (login CSRF)
        forged = httpx.post(console.url + "/login", data={"username": "admin", "password": "correct horse battery"},
                            headers={"Origin": "https://evil.example"}, timeout=30)
        assert forged.status_code == 403 and "set-cookie" not in forged.headers


def test_login_shows_the_page_in_chinese_and_switches_to_english(console: Console, browser: Any) -> None:
    login(browser, console, "admin")
    browser.get(console.url + "/")
    wait_loaded(browser)
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.nav a")]
    assert nav == ["总览", "告警", "广播", "实时喊话", "电子围栏", "设备", "摄像头", "远程升级", "用户与审计"]
    assert browser.find_element(By.CSS_SELECTOR, ".who").text.startswith("王管理")
    browser.find_element(By.CSS_SELECTOR, "[data-set-lang=en]").click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "html").get_attribute("lang") == "en")
    wait_loaded(browser)
    assert "Overview" in page_text(browser) and "总览" not in page_text(browser)
    browser.find_element(By.CSS_SELECTOR, "[data-set-lang=zh_CN]").click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "html").get_attribute("lang") == "zh-CN")
    assert browser_errors(browser) == []


def test_a_gridworker_is_not_shown_pages_of_other_roles(console: Console, browser: Any) -> None:
    login(browser, console, "gw-a")
    browser.get(console.url + "/")
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.nav a")]
    assert "用户与审计" not in nav and "广播" not in nav and "实时喊话" not in nav and "远程升级" not in nav \
        and "告警" in nav


def test_dates_are_local_time_in_the_county_timezone(console: Console, browser: Any) -> None:
    login(browser, console, "admin")
    browser.get(console.url + "/")
    wait_loaded(browser)
    # 2026-12-01 00:00 UTC is 08:00 in Asia/Shanghai
    got = browser.execute_script("return import('/static/js/fmt.js').then(m => m.fmtDateTime(Date.UTC(2026, 11, 1)))")
    assert got == "2026/12/01 08:00:00", got


def test_logout_ends_the_session(console: Console, browser: Any) -> None:
    login(browser, console, "viewer")
    browser.get(console.url + "/")
    cookie = browser.get_cookie("vc_session")["value"]
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: "/login" in d.current_url)
    assert httpx.get(console.url + "/api/v1/me", cookies={"vc_session": cookie}, timeout=10).status_code == 401


def test_the_login_page_screenshots(console: Console, browser: Any) -> None:
    browser.delete_all_cookies()
    browser.get(console.url + "/login")
    shoot(browser, "login")
