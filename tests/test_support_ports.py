"""tests/support.py's ports under pytest-xdist: each worker its own slice, and a broker that lost its port
to another process moves to a new one instead of a test talking to that other process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import support
from tests.support import Mosquitto, listening


def test_the_workers_slices_are_disjoint_and_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    slices = []
    for i in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{i}")
        ports = support._worker_ports()
        assert ports is not None and len(ports) >= 200
        slices.append(set(ports))
    assert all(not (a & b) for i, a in enumerate(slices) for b in slices[i + 1:])
    assert max(max(s) for s in slices) < support._ephemeral_low()
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert support._worker_ports() is None  # one process: the kernel's port 0


def test_free_port_stays_in_the_slice_and_passes_over_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    monkeypatch.setattr(support, "_port_next", [])
    ports = support._worker_ports()
    assert ports is not None
    first = support.free_port()
    assert first in ports
    with socket.socket() as taken:
        nxt = ports[(ports.index(first) + 1) % len(ports)]
        taken.bind(("127.0.0.1", nxt))
        taken.listen()
        got = support.free_port()
    assert got in ports and got not in (first, nxt)


def test_listening_is_about_the_process_not_the_port(tmp_path: Path) -> None:
    with socket.socket() as other:  # someone else listens on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            with pytest.raises(TimeoutError):
                listening(proc, port, timeout=0.5)
        finally:
            proc.kill()
            proc.wait()
        assert listening(proc, port) is False  # it exited


def test_a_broker_whose_port_was_taken_moves_to_another(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        b = Mosquitto(tmp_path)
        b.port = other.getsockname()[1]  # taken between free_port() and mosquitto's bind
        b.start()
        try:
            assert b.port != other.getsockname()[1]
            assert b.proc is not None and listening(b.proc, b.port)
        finally:
            b.stop()


def test_a_broker_on_a_port_the_caller_chose_does_not_move(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(RuntimeError, match="could not listen"):
            Mosquitto(tmp_path, other.getsockname()[1]).start()
