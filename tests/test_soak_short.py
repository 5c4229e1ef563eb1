"""The short chaos soak (bench/soak, --short) as a CI test: every fault kind at least once, every invariant holds.

Real parts only: mosquitto, the agent as a subprocess, the band and camera twins, a TCP proxy, a tmpfs state
directory (when root). About 2.5 min wall; deselect locally with `-m "not soak"`. The figures are printed
(`pytest -s`) and the soak's JSON verdict is kept in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak.faults import KINDS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_short_soak_keeps_every_invariant(tmp_path: Path) -> None:
    out = tmp_path / "verdict.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--short", "--seed", "7", "--workdir", str(tmp_path / "run"),
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=280)
    print(result.stdout)
    assert result.returncode in (0, 1), f"the soak could not run:\n{result.stdout}\n{result.stderr[-4000:]}"
    verdict = json.loads(out.read_text())
    failed = [c for c in verdict["checks"] if not c["ok"]]
    assert not failed, "invariant violated:\n" + "\n".join(f"{c['name']}: {c['detail']}" for c in failed)
    figures = verdict["figures"]
    expected = [k for k in KINDS if k != "disk_full" or os.geteuid() == 0]
    assert all(figures["faults"][k] >= 1 for k in expected), figures["faults"]
    assert figures["produced"].get("alarm", 0) > 0 and figures["sos_presses"]["sent"] > 0
    assert figures["commands"]["valid_accepted"] > 0


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), b""
    while True:
        n, digit = n >> 7, n & 0x7F
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([first]) + length + body


@pytest.mark.parametrize("level", [4, 5])
def test_the_proxy_reads_publish_and_puback_from_a_split_stream(level: int) -> None:
    from bench.soak.proxy import Connect, MqttStream, Puback, Publish

    connect = _packet(0x10, b"\x00\x04MQTT" + bytes([level]) + b"\x02\x00\x1e" + (b"\x00" if level == 5 else b"")
                      + b"\x00\x01c")
    topic, payload = "vc/v1/box/b/up/alarm/sos", b'{"id":"b:7"}' * 20  # > 127 bytes: a 2-byte length
    props = b"\x00" if level == 5 else b""
    publish = _packet(0x3A, len(topic).to_bytes(2, "big") + topic.encode() + b"\x01\x02" + props + payload)
    stream = MqttStream()
    wire = connect + publish + _packet(0xC0, b"")  # + PINGREQ, skipped
    got = [p for i in range(0, len(wire), 7) for p in stream.feed(wire[i:i + 7])]
    assert got == [Connect(level), Publish(topic, 1, True, 0x0102, payload)]
    assert MqttStream(level).feed(_packet(0x40, b"\x01\x02" + (b"\x00" if level == 5 else b""))) == [Puback(0x0102)]
