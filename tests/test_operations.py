"""Operations: `village agent status` over a real outbox and link.json, clock sanity, the box identity."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from agent import identity, status
from agent.clock import ManualClock
from agent.clocksanity import EPOCH_FLOOR, KernelSync, assess, known_floor, read_kernel
from agent.config import Config, parse_config
from agent.linkstate import LinkStateFile
from agent.outbox import Outbox
from agent.protocol.envelope import MsgClass

NOW = 1_763_900_000.0


def make_config(state: Path) -> Config:
    return parse_config({"box": {"id": "lhk-status-1", "profile": "sim", "state_dir": str(state)},
                         "mqtt": {"url": "mqtt://127.0.0.1:1883"}})


async def fill_outbox(path: Path, clock: ManualClock) -> None:
    outbox = Outbox(path, "lhk-status-1", max_bytes=1 << 20, telemetry_ttl_s=3600, clock=clock)
    opened = asyncio.Event()
    task = asyncio.create_task(outbox.run(opened.set), name="test.outbox")
    try:
        await opened.wait()
        await outbox.send(MsgClass.ALARM, "sos", {"wearer": "W1"}, ts_ms=int(NOW * 1000) - 60_000)
        for i in range(3):
            await outbox.send(MsgClass.TELEMETRY, "heartbeat", {"i": i})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_status_reads_the_outbox_and_link_state_without_the_agent(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path / "state")
    (tmp_path / "state").mkdir()
    await fill_outbox(config.outbox_path, ManualClock(wall=NOW))
    LinkStateFile(tmp_path / "state" / "link.json").update(state="connected", broker="mqtt://u:secret@h:1883",
                                                           ts=NOW - 120, last_publish_ts=NOW - 5)
    before = sorted(p.name for p in (tmp_path / "state").iterdir())
    st = status.collect(config, now=NOW)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == before  # read-only: nothing created
    assert st.outbox.present and st.outbox.depth == {"alarm": 1, "receipt": 0, "event": 0, "telemetry": 3}
    assert st.outbox.oldest_ts_ms["alarm"] == int(NOW * 1000) - 60_000
    assert st.outbox.last_seq == 4 and st.outbox.seq_reserved_to is not None and st.outbox.seq_reserved_to > 4
    assert st.link.state == "connected" and st.link.since_ts == NOW - 120
    assert st.link.broker == "mqtt://u:***@h:1883"  # no secrets, ever
    text = status.render(st)
    assert "connected" in text and "2.0 min ago" in text and "secret" not in text
    assert status.main(config, as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["outbox"]["depth"]["telemetry"] == 3 and doc["link"]["last_publish_ts"] == NOW - 5


async def test_status_reads_through_the_wal_of_a_running_agent(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state")
    (tmp_path / "state").mkdir()
    outbox = Outbox(config.outbox_path, "lhk-status-1", max_bytes=1 << 20, telemetry_ttl_s=3600,
                    clock=ManualClock(wall=NOW))
    opened = asyncio.Event()
    task = asyncio.create_task(outbox.run(opened.set), name="test.outbox")
    try:
        await opened.wait()
        await outbox.send(MsgClass.EVENT, "camera", {"camera": "c1"})
        assert await asyncio.to_thread(Path(str(config.outbox_path) + "-wal").exists)
        st = await asyncio.to_thread(status.collect, config, NOW)
        assert st.outbox.depth["event"] == 1 and st.outbox.last_seq == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_status_before_the_agent_ever_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path / "state")
    assert status.main(config) == status.EXIT_UNREADABLE
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "state").mkdir()
    st = status.collect(config, now=NOW)
    assert not st.outbox.present and not st.link.present
    assert "no outbox.db yet" in status.render(st)


def test_status_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.outbox_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(status.StatusError, match=r"outbox\.db"):
        status.collect(config, now=NOW)


# ---------------------------------------------------------------- clock sanity
def test_a_clock_before_the_floor_is_never_trusted() -> None:
    v = assess(86_400.0, floor_ts=EPOCH_FLOOR)  # a Pi without RTC that booted in 1970
    assert not v.plausible and v.synchronised is False and not v.trustworthy
    assert v.offset_s == 86_400.0 - EPOCH_FLOOR and "1970-01-02" in v.reason


def test_kernel_sync_decides_when_the_time_is_plausible() -> None:
    now = EPOCH_FLOOR + 10 * 86_400
    synced = assess(now, kernel=KernelSync(True, offset_s=0.004, esterror_s=0.002, maxerror_s=0.1))
    assert synced.trustworthy and synced.offset_s == 0.004 and "+4.0 ms" in synced.reason
    free = assess(now, kernel=KernelSync(False, 0.0, 16.0, 16.0))
    assert free.plausible and free.synchronised is False and free.offset_s is None and not free.trustworthy
    unknown = assess(now)
    assert unknown.synchronised is None and unknown.trustworthy


def test_the_floor_rises_with_the_build_and_the_last_sync(tmp_path: Path) -> None:
    clock_file = tmp_path / "clock"
    assert known_floor(None, clock_file) == EPOCH_FLOOR
    later = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
    assert known_floor(later, clock_file) == later
    clock_file.touch()
    os.utime(clock_file, (later + 100, later + 100))
    assert known_floor(later, clock_file) == later + 100


def test_read_kernel_answers_on_linux() -> None:
    k = read_kernel()
    assert k is not None and isinstance(k.synchronised, bool) and k.maxerror_s >= 0


# ---------------------------------------------------------------- identity
@pytest.mark.parametrize(("algo", "kind"), [("ecdsa-p256", ec.EllipticCurvePrivateKey),
                                            ("ed25519", ed25519.Ed25519PrivateKey)])
def test_identity_is_made_once_and_kept(tmp_path: Path, algo: str, kind: type) -> None:
    d = tmp_path / "identity"
    key_path, csr_path, created = identity.ensure_identity(d, "lhk-id-1", algo)
    assert created and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    first = key_path.read_bytes()
    assert isinstance(identity._load_key(key_path), kind)
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lhk-id-1"
    _, _, created = identity.ensure_identity(d, "lhk-id-1", algo)
    assert not created and key_path.read_bytes() == first
    # renamed box: same key, a new CSR with the new CN
    identity.ensure_identity(d, "lhk-id-2", algo)
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lhk-id-2"
    assert key_path.read_bytes() == first


def test_identity_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert identity.main(["--box-id", "lhk-id-3", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "created the key" in out and "sha256" in out
    assert identity.main(["--box-id", "bad id", "--dir", str(tmp_path / "x")]) == 2
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "box.key").write_text("not a key")
    assert identity.main(["--box-id", "lhk-id-3", "--dir", str(tmp_path / "y")]) == 1
    assert "not a usable PEM private key" in capsys.readouterr().err
