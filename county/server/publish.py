"""The server's MQTT publisher: signed commands out to the boxes, QoS 1, never retained.

One paho connection owned by the server process (the console's `CountyClient`: its own network thread,
reconnects after a lost connection, waits for the PUBACK). The blocking publish runs in a worker thread so
the event loop never waits on the broker; `publish` returns only once the broker acknowledged the message,
so a broadcast reported as `sent` is on the broker. Several broker URLs (`[mqtt] url` as a list) are tried
in order at start; the password in a URL is never logged (`redact_url`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from county.console import BrokerSpec, ConsoleError, CountyClient

log = logging.getLogger("county.publish")

PUBLISH_TIMEOUT_S = 15.0
RECONNECT_POLL_S = 0.05  # how often a publish waiting for a reconnection looks (in its worker thread)


class PublishError(Exception):
    """The broker did not take a message (down, refused, no PUBACK in time); `str()` has no secrets."""


class Publisher:
    """`await start()`, then `await publish(topic, payload)` (QoS 1, retain false); `await close()`."""

    def __init__(self, urls: Sequence[str], *, ca: Path | None = None, cert: Path | None = None,
                 key: Path | None = None, username: str | None = None, password: str | None = None,
                 client_id: str = "", timeout: float = PUBLISH_TIMEOUT_S) -> None:
        if not urls:
            raise ValueError("no broker URL")
        specs = [BrokerSpec.parse(u, ca=ca, cert=cert, client_key=key) for u in urls]
        if username is not None:  # [mqtt] username/password_file: for every URL that names no user itself
            specs = [s if s.username is not None else dataclasses.replace(s, username=username, password=password)
                     for s in specs]
        self.specs = specs
        self.client_id = client_id
        self.timeout = timeout
        self._client: CountyClient | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, mqtt: Any, client_id: str | None = None) -> Publisher:
        """From the `[mqtt]` config section (county.server.config.MqttConfig). The client id is
        `{client_id}-pub-{random}`: every instance and its ingest connection need their own."""
        password = None
        if mqtt.password_file is not None:
            password = Path(mqtt.password_file).read_text(encoding="utf-8").strip()
        cid = client_id if client_id is not None else f"{mqtt.client_id}-pub-{secrets.token_hex(4)}"
        return cls(list(mqtt.urls), ca=mqtt.ca, cert=mqtt.cert, key=mqtt.key, username=mqtt.username,
                   password=password, client_id=cid)

    @property
    def display(self) -> str:
        return ", ".join(s.display for s in self.specs)

    def _connect(self) -> CountyClient:
        errors = []
        for spec in self.specs:
            client = CountyClient(spec, max_queued=1, client_id=self.client_id, name="serve")
            try:
                client.connect()
            except ConsoleError as exc:
                errors.append(str(exc))
                continue
            return client
        raise PublishError("; ".join(errors))

    async def start(self) -> None:
        """Connect to the first broker that answers (raises PublishError naming each failure)."""
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._connect)
                log.info("publisher connected to %s", self._client.spec.display)

    async def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, never retained; returns once the broker acknowledged it, else raises PublishError."""
        if self._client is None:
            try:
                await self.start()
            except PublishError as exc:
                raise PublishError(f"no broker connection: {exc}") from None
        client = self._client
        assert client is not None
        try:
            await asyncio.to_thread(self._publish, client, topic, payload)
        except ConsoleError as exc:
            raise PublishError(str(exc)) from None

    def _publish(self, client: CountyClient, topic: str, payload: bytes) -> None:
        """In a worker thread: wait (up to the timeout) for paho to be connected again after an outage, so a
        broker restart delays a publish instead of failing it, then publish and wait for the PUBACK."""
        deadline = time.monotonic() + self.timeout
        while not client.client.is_connected():
            if time.monotonic() >= deadline:
                raise PublishError(f"not connected to broker {client.spec.display} (waited {self.timeout:.0f} s)")
            time.sleep(RECONNECT_POLL_S)
        client.publish(topic, payload, max(0.1, deadline - time.monotonic()))

    async def close(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
