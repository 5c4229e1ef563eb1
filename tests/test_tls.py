"""Mutual TLS against a real mosquitto started from the shipped docs/county/mosquitto.conf.

A test CA made here (tests/pki.py) signs the broker and the boxes; the broker requires a client
certificate and takes its CN as the username. The agent's link runs in-process (tests/test_link.py
`agent_core`): a box with a valid certificate connects and delivers; without one, with one from another
CA, expired, or facing a broker it does not trust, it is refused, says so in one log line without secrets,
and waits the longest backoff between attempts (counted at the broker's log, bounded by arithmetic, never
by a timing figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import agent.link
from agent.clock import ManualClock
from agent.config import Config, parse_config
from agent.link import Link
from agent.outbox import Outbox
from agent.protocol.envelope import MsgClass
from county.acl import parse_fleet, render
from tests.pki import CountyBroker, Issued, TestCA, tls_collector
from tests.support import agent_config_dict, wait_until
from tests.test_link import RecordingSink, agent_core

SECRET = "pw-that-must-never-be-logged-7f3a"
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 0.5


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def county(tmp_path: Path, ca: TestCA) -> Iterator[CountyBroker]:
    (tmp_path / "broker").mkdir()
    acl = render(parse_fleet({"boxes": {"box-1": ["town-test"]}}))
    broker = CountyBroker(tmp_path / "broker", ca, acl).start()
    try:
        yield broker
    finally:
        broker.stop()


def tls_config(tmp_path: Path, url: str, trust: TestCA, identity: Issued | None) -> Config:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    pw = tmp_path / "mqtt.password"
    pw.write_text(SECRET + "\n")  # ignored by a broker that takes the certificate's CN; must never be logged
    mqtt: dict[str, object] = {"url": url, "ca": str(trust.pem), "username": "box-1", "password_file": str(pw),
                               "backoff_min_s": BACKOFF_MIN_S, "backoff_max_s": BACKOFF_MAX_S}
    if identity is not None:
        mqtt |= {"cert": str(identity.cert), "key": str(identity.key)}
    return parse_config(agent_config_dict(state, url, mqtt=mqtt))


async def until(pred, timeout: float = 20.0) -> None:
    await asyncio.to_thread(wait_until, pred, timeout)


async def test_box_with_a_valid_certificate_connects_and_delivers(tmp_path: Path, ca: TestCA,
                                                                  county: CountyBroker) -> None:
    console = tls_collector(county, ca.client("county-console"), ["vc/v1/box/+/up/#"])
    try:
        config = tls_config(tmp_path, county.url, ca, ca.client("box-1"))
        async with agent_core(config) as (outbox, link):
            sent = await outbox.send(MsgClass.ALARM, "sos", {"wearer": "W1"})
            await until(lambda: console.envelopes())
            await until(lambda: sum(outbox.depth().values()) == 0)
            assert link.state.value == "connected"
    finally:
        console.stop()
    (env,) = console.envelopes()
    assert env["id"] == sent.id and env["kind"] == "sos"
    # the broker knows the box by its certificate, whatever username the box sent
    assert "as box-1 (" in county.log.read_text() and "u'box-1'" in county.log.read_text()


def _other_ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "other-pki", "another-county-ca")


CASES = {
    # name: (what the box trusts, the certificate it presents, a word the log line must contain)
    "no_certificate": (lambda t, ca: ca, lambda t, ca: None, "certificate"),
    "certificate_from_another_ca": (lambda t, ca: ca, lambda t, ca: _other_ca(t).client("box-1"), "certificate"),
    "expired_certificate": (lambda t, ca: ca, lambda t, ca: ca.client("box-1", expired=True), "certificate"),
    "broker_not_signed_by_the_trusted_ca": (lambda t, ca: _other_ca(t), lambda t, ca: ca.client("box-1"),
                                            "CERTIFICATE_VERIFY_FAILED"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_refused_box_says_so_once_and_backs_off_longest(tmp_path: Path, ca: TestCA, county: CountyBroker,
                                                              case: str, caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    trust, identity, word = CASES[case]
    config = tls_config(tmp_path, county.url, trust(tmp_path, ca), identity(tmp_path, ca))
    attempts: list[int] = []

    def recording_backoff(attempt: int, lo: float, hi: float, rng) -> float:  # the real one, observed
        attempts.append(attempt)
        return real_backoff(attempt, lo, hi, rng)

    real_backoff = agent.link.backoff_delay
    monkeypatch.setattr(agent.link, "backoff_delay", recording_backoff)
    caplog.set_level(logging.INFO, logger="agent.link")
    before = county.new_connections()
    async with agent_core(config) as (outbox, link):
        await outbox.send(MsgClass.ALARM, "sos", {"wearer": "W1"})
        started = time.monotonic()
        await until(lambda: county.new_connections() - before >= 3 and len(attempts) >= 3)
        elapsed = time.monotonic() - started
        seen = county.new_connections() - before
        assert link.state.value != "connected"
        assert outbox.depth()[MsgClass.ALARM] == 1, "the alarm waits in the outbox, nothing is lost"

    # backoff: every failed attempt went straight to the longest backoff; so the number of attempts in
    # the window is bounded by the shortest possible delay (an upper bound a slow machine can't break)
    assert set(attempts) == {30}, attempts
    assert seen <= 1 + (elapsed + 1.0) / BACKOFF_MIN_S + 1
    # one clear line for the whole failure edge, however many attempts; never a secret
    failures = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(failures) == 1, failures
    assert word in failures[0]
    assert not [r for r in caplog.records if "does not speak MQTT 5" in r.getMessage()], \
        "a refused certificate is not a protocol-version problem"
    secrets = [SECRET]
    if config.mqtt.key is not None:
        secrets += [line for line in config.mqtt.key.read_text().splitlines() if not line.startswith("-----")]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [s for s in secrets if s in logged]


async def test_refused_then_fixed_certificate_recovers_and_delivers(tmp_path: Path, ca: TestCA,
                                                                   county: CountyBroker,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The technician installs the right certificate: the next run connects and the held alarm arrives."""
    caplog.set_level(logging.INFO, logger="agent.link")
    bad = tls_config(tmp_path, county.url, ca, _other_ca(tmp_path).client("box-1"))
    async with agent_core(bad) as (outbox, _link):
        sent = await outbox.send(MsgClass.ALARM, "sos", {"wearer": "W1"})
        await until(lambda: any("cannot connect" in r.getMessage() for r in caplog.records))
    console = tls_collector(county, ca.client("county-console"), ["vc/v1/box/+/up/#"])
    try:
        good = tls_config(tmp_path, county.url, ca, ca.client("box-1"))
        async with agent_core(good) as (outbox, _link):
            await until(lambda: console.envelopes())
    finally:
        console.stop()
    assert [e["id"] for e in console.envelopes()] == [sent.id]


@contextlib.asynccontextmanager
async def link_with_clock(config: Config, clock: ManualClock | None) -> AsyncIterator[tuple[Outbox, Link]]:
    outbox = Outbox(config.outbox_path, config.box.id, max_bytes=10**7, telemetry_ttl_s=3600.0,
                    commit_interval_s=0.01)
    link = Link(config, outbox, RecordingSink(), clock=clock)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(outbox.run(lambda: None), name="outbox.run"),
                 tg.create_task(link.run(lambda: None), name="link.run")]
        try:
            yield outbox, link
        finally:
            for t in tasks:
                t.cancel()


@pytest.mark.parametrize("box_clock", ["1970", "plausible"])
async def test_a_box_in_1970_still_connects_over_tls(tmp_path: Path, ca: TestCA, box_clock: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Every certificate is "not yet valid" to a box whose clock reads 1970; it must still reach the county
    (emergencies). Made here with a broker certificate valid only from the day after tomorrow: the same
    thing, seen from a clock two days behind. A clock that is set (plausible) keeps the date check."""
    (tmp_path / "broker").mkdir()
    future = ca.server(not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    broker = CountyBroker(tmp_path / "broker", ca, render(parse_fleet({"boxes": {"box-1": []}})), server=future)
    broker.start()
    caplog.set_level(logging.INFO, logger="agent.link")
    console = tls_collector(broker, ca.client("county-console"), ["vc/v1/box/+/up/#"], check_dates=False)
    try:
        config = tls_config(tmp_path, broker.url, ca, ca.client("box-1"))
        clock = ManualClock(wall=5.0) if box_clock == "1970" else None
        async with link_with_clock(config, clock) as (outbox, link):
            await outbox.send(MsgClass.ALARM, "sos", {"wearer": "W1"})
            if box_clock == "1970":
                await until(lambda: console.envelopes())
                assert link.tls_time_unchecked
            else:
                await until(lambda: any("cannot connect" in r.getMessage() for r in caplog.records))
                assert "CERTIFICATE_VERIFY_FAILED" in caplog.text and not console.envelopes()
    finally:
        console.stop()
        broker.stop()
    assert ("TLS certificate dates are not checked" in caplog.text) == (box_clock == "1970")
