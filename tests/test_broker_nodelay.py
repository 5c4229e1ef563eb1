"""The test and simulator brokers turn Nagle off on their client sockets, as the county broker does.

Without `set_tcp_nodelay true` mosquitto holds each small write (a PUBACK, a receipt) behind the peer's
delayed ACK, about 40 ms on Linux: the latency figures in bench/ then measure the broker's config, not the
agent. Checked on the broker's own accepted socket, not by timing: the socket is copied out of the broker
process with pidfd_getfd(2) (Linux 5.6+) and TCP_NODELAY read from it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sim.broker import BrokerKind, LocalBroker
from tests.support import Mosquitto

SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (the generic syscall table)
# MQTT 3.1.1 CONNECT, clean session, keepalive 60, client id "n"; the broker answers CONNACK 20 02 00 00
CONNECT = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01n"


@contextmanager
def connected(port: int) -> Iterator[socket.socket]:
    """A client the broker has accepted: its CONNACK came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(CONNECT)
        ack = b""
        while len(ack) < 4:
            chunk = c.recv(4 - len(ack))
            assert chunk, "the broker closed the connection instead of answering CONNECT"
            ack += chunk
        assert ack == b"\x20\x02\x00\x00", ack
        yield c


def broker_nodelay(pid: int, client: socket.socket) -> int:
    """TCP_NODELAY on the broker's socket for `client` (read from the broker's own fd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                err = ctypes.get_errno()
                if err in (errno.EPERM, errno.ENOSYS, errno.EACCES):
                    pytest.skip(f"pidfd_getfd cannot copy the broker's socket here: {os.strerror(err)}")
                continue
            with socket.socket(fileno=fd) as s:
                try:
                    if s.type == socket.SOCK_STREAM and s.getpeername() == client.getsockname():
                        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                except OSError:  # a listening or unix socket: no peer
                    continue
    finally:
        os.close(pidfd)
    raise AssertionError(f"no socket in broker {pid} is connected to {client.getsockname()}")


def test_the_test_broker_turns_nagle_off(tmp_path: Path) -> None:
    for nodelay in (True, False):  # False: the probe tells the two apart
        work = tmp_path / str(nodelay)
        work.mkdir()
        b = Mosquitto(work, persistence=False, tcp_nodelay=nodelay).start()
        try:
            assert b.proc is not None
            with connected(b.port) as c:
                assert broker_nodelay(b.proc.pid, c) == int(nodelay)
        finally:
            b.stop()


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_the_simulator_broker_turns_nagle_off(tmp_path: Path, kind: BrokerKind) -> None:
    if kind == "amqtt":
        pytest.importorskip("amqtt", reason="amqtt is the sim extra's broker (pip install 'village-edge[sim]')")
    b = LocalBroker(tmp_path, kind)
    b.start()
    try:
        assert b.proc is not None
        with connected(b.port) as c:
            assert broker_nodelay(b.proc.pid, c) == 1
    finally:
        b.stop()
