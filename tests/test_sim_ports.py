"""The simulator's own servers on ports of their own: a port picked free can be taken before the child binds it
(a second simulator, another test worker), and a connect alone would then reach the other process's server.
`sim.broker.listens` asks /proc who holds the listening socket; the broker moves to a new port when it is not
its own."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.broker import LocalBroker, free_port, listens, mosquitto_path


@pytest.fixture
def taken() -> Iterator[int]:
    """A port this test process listens on, as another simulator's broker would."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_listens_names_the_process_holding_the_port(taken: int) -> None:
    import os

    if listens(os.getpid(), taken) is None:
        pytest.skip("no /proc here: the broker then trusts its connect")
    assert listens(os.getpid(), taken) is True
    assert listens(os.getpid(), free_port()) is False  # nobody listens there
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert listens(child.pid, taken) is False  # alive, but not the one listening
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_a_broker_given_a_taken_port_moves_to_one_of_its_own(kind: str, taken: int, tmp_path: Path) -> None:
    if kind == "mosquitto" and mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    broker = LocalBroker(tmp_path, kind)  # type: ignore[arg-type]
    broker.port = taken  # what a race between picking and binding hands it
    broker.start()
    try:
        assert broker.port != taken and broker.proc is not None
        assert listens(broker.proc.pid, broker.port) is not False  # its own listener, not ours
    finally:
        broker.stop()


def test_a_broker_out_of_tries_says_so(taken: int, tmp_path: Path) -> None:
    from sim.broker import BrokerError

    broker = LocalBroker(tmp_path, "amqtt")
    broker.port = taken
    with pytest.raises(BrokerError):  # one try, on a port that is another's: a clear error, nothing left running
        broker.start(attempts=1)
    assert broker.proc is not None and broker.proc.poll() is not None


def test_the_county_server_given_a_taken_port_starts_on_another(taken: int, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.keys import new_keypair
    from sim import county_server
    from tests.support import Mosquitto

    if not county_server.county_installed():
        pytest.skip("the [county] extra is not installed")
    ports = iter([taken])  # the first pick is the one somebody took; then free ones
    monkeypatch.setattr(county_server, "_free_port", lambda: next(ports, None) or free_port())
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    key, _pub = new_keypair("county-sim", tmp_path / "keys")
    server = county_server.CountyServer(tmp_path, broker.url, key, "county-sim", "menglou", "勐楼村", "lhk-1",
                                        ("town-menglou",))
    try:
        server.start()
        assert server.port != taken and server.proc is not None
        assert listens(server.proc.pid, server.port) is not False
    finally:
        server.stop()
        broker.stop()
