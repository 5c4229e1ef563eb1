"""The county's side of the simulated village: one paho client that sees what the county platform would see.

It subscribes to every box's uplink and state topics, keeps every message as received (duplicates
included: at-least-once is part of what is observed) and de-duplicates on the envelope `id` as the county
does. It also publishes the county's signed commands (broadcasts, cancels). paho runs its own network
thread (loop_start); the simulator reads what arrived with `take()` from its event loop, so the only shared
state is a list behind a lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol.batch import expand
from agent.protocol.envelope import MsgClass
from agent.protocol.topics import Topics


class CountyViewError(Exception):
    """The county-side client could not connect or publish."""


@dataclass(frozen=True, slots=True)
class Seen:
    t_s: float  # scenario time of arrival
    mono: float  # time.monotonic() of arrival (for latency)
    box: str
    cls: str  # "alarm" | "event" | "telemetry" | "receipt" | "state"
    kind: str
    envelope: dict[str, Any]  # for "state": the state payload
    duplicate: bool = False


@dataclass
class CountyView:
    broker_url: str
    scenario_time: Callable[[], float]  # the runner's scenario clock
    topics: Topics = field(default_factory=Topics)
    client_id: str = "county-sim-view"
    seen: list[Seen] = field(default_factory=list)  # every message, in arrival order
    ids: set[str] = field(default_factory=set)
    bad: int = 0  # payloads that were not envelopes (counted, never crash the view)
    _new: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: mqtt.Client | None = None
    _subscribed: threading.Event = field(default_factory=threading.Event)

    def start(self, timeout_s: float = 15.0) -> CountyView:
        parts = urlsplit(self.broker_url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        if parts.username:
            client.username_pw_set(parts.username, parts.password)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_a: self._subscribed.set()
        client.on_message = self._on_message
        client.max_queued_messages_set(1000)
        self._client = client
        try:
            client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
        except OSError as exc:
            raise CountyViewError(f"county view cannot reach {parts.hostname}:{parts.port}: {exc}") from None
        client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise CountyViewError("county view: no SUBACK from the broker")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        """Publish a county command (QoS 1, never retained) and wait for the broker's PUBACK."""
        if self._client is None:
            raise CountyViewError("county view is not running")
        info = self._client.publish(topic, payload, qos=1, retain=False)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise CountyViewError(f"publish to {topic} failed: {exc}") from None
        if not info.is_published():
            raise CountyViewError(f"publish to {topic}: no PUBACK within {timeout_s:g} s")

    def take(self) -> list[Seen]:
        """What arrived since the last call."""
        return self.take_upto()[0]

    def take_upto(self) -> tuple[list[Seen], float]:
        """What arrived since the last call, and a scenario time no later arrival can be stamped before.

        Arrivals are stamped inside the lock (`_on_message`), so anything taken later has a time at least
        this one: the plain dashboard prints every line up to it in time order."""
        with self._lock:
            new, self._new = self._new, []
            upto = self.scenario_time()
        return new, upto

    def unique(self, box: str | None = None) -> list[Seen]:
        """Envelopes de-duplicated by id (first arrival), in arrival order."""
        with self._lock:
            return [s for s in self.seen if s.cls != "state" and not s.duplicate and (box is None or s.box == box)]

    # ---- paho callbacks (its network thread) -----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(self.topics.all_up(), 1), (self.topics.all_state(), 1)])

    def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        # an uplink batch (issue 14: telemetry and events, one message a minute) as the envelopes it carries
        for topic, payload in expand(msg.topic, bytes(msg.payload)):
            self._one(topic, payload)

    def _one(self, topic: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            self.bad += 1
            return
        up = None
        if (box := self.topics.parse_state(topic)) is None:
            if (up := self.topics.parse_up(topic)) is None:
                return
            if not isinstance(body.get("id"), str):
                self.bad += 1
                return
        with self._lock:  # stamped under the lock: see take_upto
            now, t = time.monotonic(), self.scenario_time()
            if up is None:
                assert box is not None
                seen = Seen(t, now, box, "state", str(body.get("state")), body)
            else:
                box, cls, kind = up
                env_id = body["id"]
                dup = env_id in self.ids
                self.ids.add(env_id)
                seen = Seen(t, now, box, MsgClass(cls).wire, kind, body, dup)
            self.seen.append(seen)
            self._new.append(seen)
