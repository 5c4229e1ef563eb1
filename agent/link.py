"""The MQTT link to the county: drains the outbox with a window of QoS 1 publishes, receives commands.

A state machine that logs edges (one WARNING when the link goes down, one INFO when it is back; the attempts
in between at DEBUG, except a refused login or certificate, which the operator must fix), built on paho-mqtt 2:
- one paho client per connection, its network loop in paho's thread; every callback hops to the event
  loop with `call_soon_threadsafe`. When a connection drops the client is thrown away with whatever it
  held in memory: the outbox still has every unacknowledged row, and `rewind()` hands them out again,
  alarms first, with the same `id` (mqtt-notes 1, 2).
- broker URLs tried in turn; capped exponential backoff with full jitter between attempts, so a
  thousand boxes coming back after a county outage don't reconnect in the same second; a refused login
  or certificate goes straight to the longest backoff.
- MQTT 5 with a session expiry (mqtt-notes 3), falling back to 3.1.1 for brokers that don't speak 5
  (amqtt, old mosquitto); the fallback is remembered per URL.
- persistent session with a stable client id so commands queued while the box was offline arrive;
  subscribe again on every connect whatever CONNACK says, and report a lost session (mqtt-notes 4).
- retained `state` online on connect, the will says offline; a clean stop publishes offline itself.
- every state edge (connecting, connected, disconnected) goes to link.json and to the `on_state` callback,
  with the MQTT version of the connection (agent.app mirrors it on the sd_notify STATUS= line).
- a window of `inflight` unacknowledged publishes (plus a small reserve only alarms and receipts may
  use), fed from the outbox only while connected (mqtt-notes 8). Telemetry and events together may use
  only BULK_INFLIGHT of it: paho sends in FIFO order, so whatever bulk is in flight is queued ahead of an
  alarm (paho's queue, the socket, the broker, the PUBACKs back); the bound keeps that queue short. A row
  is acknowledged to the outbox, and so deleted, only on the broker's PUBACK with a success code
  (mqtt-notes 1).
- commands: retained ones are flagged for the router to refuse (mqtt-notes 7); the PUBACK for an
  inbound command is sent only after the router has handled it (paho manual ack), so a crash in between
  gets the command redelivered rather than lost. Flow control keeps a flood of junk from costing memory or
  delaying the valid commands in it: QoS 0 on a cmd topic is refused on arrival (commands are QoS 1 by
  contract; counted, logged at most once a minute); MQTT 5 CONNECT carries Receive Maximum
  COMMAND_WINDOW, so a compliant broker holds the rest of a flood until we acknowledge; a broker that sends
  more anyway (MQTT 3.1.1 has no Receive Maximum; mosquitto 2.0.11 overruns it once PUBACKs flow) finds
  paho's reading paused once COMMAND_QUEUE commands are held, so TCP holds the rest. Nothing is dropped
  unacknowledged, so nothing waits for a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.clocksanity import EPOCH_FLOOR
from agent.config import Config
from agent.linkstate import LinkStateFile
from agent.outbox import Outbox, Row
from agent.protocol import batch
from agent.protocol.broker import parse_broker_url
from agent.protocol.envelope import MsgClass
from agent.protocol.topics import Topics
from agent.service import CommandSink, InboundCommand, TopicCallback
from agent.uplink_usage import SocketMeter, Usage

log = logging.getLogger("agent.link")

X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL >= 1.1.0; the ssl module has no name for it
ALARM_RESERVE = 64  # publishes beyond the window that only alarms and receipts may use
BULK_INFLIGHT = 16  # telemetry and events in flight at most (and at most `inflight`): see _drain
COMMAND_WINDOW = 32  # MQTT 5 Receive Maximum: unacknowledged commands the broker may send us at a time
COMMAND_QUEUE = 256  # commands held (received, not yet acknowledged) before paho stops reading the socket
QOS0_LOG_EVERY_S = 60.0  # refused QoS 0 commands: one log line at most this often
STOP_BUDGET_S = 2.0
BATCH_INFLIGHT = 2  # batches in flight at most: each is up to [uplink] batch_max_bytes before compression
ALIAS_MAX = 32  # MQTT 5 topic aliases we use at most (fewer if the broker's CONNACK allows fewer)
SMALL_BATCH = 16 * 1024  # envelope bytes up to which a batch is compressed at level 9, on the event loop
METER_EVERY_S = 10.0  # the socket's byte counts are read this often (and when it closes)
FALLBACK_HOLD_S = 3600.0  # after an ambiguous MQTT 5 failure that 3.1.1 survived: stay on 3.1.1 this long


class LinkState(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


StateCallback = Callable[[LinkState, str | None], None]
"""Called on every state edge of the link, on the event loop, with the new state and the MQTT version of
the connection ("5" or "3.1.1"; None unless the state is CONNECTED)."""


class ConnectFailed(Exception):
    """A connection attempt that did not reach CONNACK success."""

    def __init__(self, reason: str, *, auth: bool = False, protocol: bool = False, ambiguous: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.auth, self.protocol, self.ambiguous = reason, auth, protocol, ambiguous


@dataclass(frozen=True, slots=True)
class Broker:
    url: str
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str, username: str | None, password: str | None) -> Broker:
        """Credentials in the URL win over [mqtt] username/password_file."""
        u = parse_broker_url(url)
        return cls(url=u.display, host=u.host, port=u.port, tls=u.tls, username=u.username or username,
                   password=u.password if u.password is not None else password)


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog): uniform in [lo, min(hi, lo * 2**attempt)]."""
    return rng.uniform(lo, min(hi, lo * (2 ** min(attempt, 30))))


class Link:
    name = "link"

    def __init__(self, config: Config, outbox: Outbox, sink: CommandSink, *, clock: Clock | None = None,
                 rng: random.Random | None = None, on_state: StateCallback | None = None) -> None:
        self.config = config
        self.outbox = outbox
        self.sink = sink
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.topics = Topics(config.mqtt.topic_prefix)
        self.box = config.box.id
        self.brokers: list[Broker] = []  # parsed in run(): reading the password file is work
        self.state = LinkState.DISCONNECTED
        self.mqtt_version: str | None = None  # "5" or "3.1.1" while CONNECTED, else None
        self._on_state = on_state
        self.reconnects = 0
        self.published = 0
        self.tls_time_unchecked = False  # the last TLS connection skipped certificate dates (clock unset)
        self.refused = 0  # publishes the broker refused (v5 PUBACK >= 0x80, e.g. ACL): rows kept, counted
        self.bulk_window = BULK_INFLIGHT  # telemetry and events in flight at most (bench/outbox.py varies it)
        self.qos0_refused = 0  # QoS 0 messages on a cmd topic, refused unread (written by paho's thread only)
        self.commands_held_hwm = 0  # most commands ever held at once (received, not yet acknowledged)
        self._qos0_logged_at = float("-inf")
        self._qos0_logged_count = 0
        self._outage: _Outage | None = _Outage(self.clock.monotonic())  # down from the start to the first CONNACK
        self._v311: dict[str, float] = {}  # URL -> monotonic time until which it gets MQTT 3.1.1
        self._statefile = LinkStateFile(config.box.state_dir / "link.json")
        self._had_session = False
        up = config.uplink
        self.usage = Usage.beside(outbox.path, self.clock, budget_bytes=int(up.monthly_budget_mb * 1_000_000),
                                  thin_at=up.thin_at)
        self.batches = 0  # batch messages acknowledged by the broker
        self.thinned = 0  # telemetry rows dropped unsent because the monthly budget is near
        self.tls_resumed = 0  # connections whose TLS handshake resumed the previous session
        self.urgent_timeouts = 0  # connections given up because an alarm or receipt got no PUBACK in time
        self.current: _Connection | None = None  # the connection being served (for tests and benches)
        self._thin_last: dict[tuple[str, str], int] = {}  # (kind, subject) -> ts of the last one kept
        self._tls: dict[str, tuple[tuple[Any, ...], _ResumingContext]] = {}  # URL -> (what made it, context)
        self._listening: dict[str, TopicCallback] = {}  # QoS 0 topics other than commands (live audio), see listen

    # ------------------------------------------------------------------ QoS 0 listeners (agent.service.TopicListener)
    def listen(self, topic: str, on_message: TopicCallback) -> None:
        """Take QoS 0 messages of `topic` on this box's own connection, now and after every reconnect.

        On the box's connection, not a second one: the county broker makes the client id the certificate's CN
        (use_username_as_clientid), so a second client of the same box takes the first one's session over and
        the two would keep displacing each other. `on_message(payload, retained, arrived_monotonic)` runs in
        paho's thread (keep it short). Commands are unaffected: their topics still take QoS 1 only."""
        self._listening[topic] = on_message
        conn = self.current
        if conn is not None and self.state is LinkState.CONNECTED:
            conn.listen(topic, on_message)

    def unlisten(self, topic: str) -> None:
        if self._listening.pop(topic, None) is not None and self.current is not None:
            self.current.unlisten(topic)

    # ------------------------------------------------------------------ service
    async def run(self, ready: Callable[[], None]) -> None:
        password = None
        if self.config.mqtt.password_file is not None:
            password = (await asyncio.to_thread(self.config.mqtt.password_file.read_text)).strip()
        self.brokers = [Broker.parse(u, self.config.mqtt.username, password) for u in self.config.mqtt.url]
        ready()  # serving means trying; the outbox holds everything until a broker answers
        await self.outbox.wait_open()
        attempt = 0
        index = 0
        while True:
            broker = self.brokers[index % len(self.brokers)]
            index += 1
            self._set_state(LinkState.CONNECTING, broker)
            try:
                await self._session(broker)
                attempt = 0  # we were connected: start the backoff again from the bottom
                continue_now = True
            except ConnectFailed as exc:
                self._connect_failed(broker, exc)
                attempt = 30 if exc.auth else attempt + 1
                continue_now = False
            finally:
                self._set_state(LinkState.DISCONNECTED, broker)
            lo, hi = self.config.mqtt.backoff_min_s, self.config.mqtt.backoff_max_s
            delay = backoff_delay(attempt, lo, hi, self.rng) if not continue_now else self.rng.uniform(0, lo)
            await asyncio.sleep(delay)

    def _connect_failed(self, broker: Broker, exc: ConnectFailed) -> None:
        """One WARNING per outage: the edge (a lost connection, or the first failure since the start). The
        attempts after it are routine on a 4G link and go to DEBUG; a refused login or certificate is a setup
        fault the operator must fix, so each new such reason is a WARNING too."""
        if self._outage is None:  # a session that ended without a loss (it raised): this starts the outage
            self._outage = _Outage(self.clock.monotonic())
        outage = self._outage
        outage.failures += 1
        if outage.warned is None or (exc.auth and exc.reason != outage.warned):
            log.warning("link: cannot connect to %s: %s; retrying with backoff", broker.url, exc.reason)
            outage.warned = exc.reason
        else:
            log.debug("link: cannot connect to %s: %s (attempt %d of this outage)", broker.url, exc.reason,
                      outage.failures)

    def _connected_line(self, conn: _Connection) -> str:
        """The recovery edge (INFO), with what the outage was. For people: programs follow `on_state`."""
        outage, self._outage = self._outage, None
        proto = "MQTT 5" if conn.v5 else "MQTT 3.1.1"
        if conn.fallback is not None:
            proto += f" (MQTT 5 was not taken: {conn.fallback})"
        line = f"link: connected to {conn.broker.url} ({proto}, session {'resumed' if conn.session_present else 'new'})"
        if outage is not None and outage.failures:
            line += (f" after {self.clock.monotonic() - outage.since:.0f} s down"
                     f" and {outage.failures} failed attempt{'s' if outage.failures != 1 else ''}")
        return line

    def _lost(self, conn: _Connection) -> None:
        self._outage = _Outage(self.clock.monotonic(), warned="lost")
        held = sum(len(f.seqs) for f in conn.inflight.values()) + sum(len(b.rows) for b in conn.building.values())
        log.warning("link: lost connection to %s (%s); %d messages were in flight, kept in the outbox; reconnecting",
                    conn.broker.url, conn.lost_reason, held)
        self.usage.save(force=True)

    def _refused_qos0(self, topic: str) -> None:
        """paho's thread: a QoS 0 message on a cmd topic. Counted; a log line at most once a minute."""
        self.qos0_refused += 1
        now = self.clock.monotonic()
        if now - self._qos0_logged_at >= QOS0_LOG_EVERY_S:
            n = self.qos0_refused - self._qos0_logged_count
            self._qos0_logged_at, self._qos0_logged_count = now, self.qos0_refused
            log.warning("link: refused %d QoS 0 message%s on cmd topics (commands are QoS 1), the latest on %s; "
                        "%d refused since start, next line in %.0f s at the earliest", n, "s" if n != 1 else "",
                        topic, self.qos0_refused, QOS0_LOG_EVERY_S)

    def _set_state(self, state: LinkState, broker: Broker, mqtt_version: str | None = None) -> None:
        if state is self.state:
            return
        self.state = state
        self.mqtt_version = mqtt_version if state is LinkState.CONNECTED else None
        self._statefile.update(state=state.value, broker=broker.url, ts=self.clock.time())
        if self._on_state is not None:
            try:
                self._on_state(state, self.mqtt_version)
            except Exception:  # an observer's fault: it must not take the link down
                log.exception("link: the state callback failed on %s", state.value)

    # ------------------------------------------------------------------ one connection
    async def _session(self, broker: Broker) -> None:
        mode = self.config.mqtt.protocol
        v5 = mode == "5" or (mode == "auto" and self.clock.monotonic() >= self._v311.get(broker.url, 0.0))
        try:
            conn = await self._connect(broker, v5)
        except ConnectFailed as exc:
            if not (v5 and mode == "auto" and (exc.protocol or exc.ambiguous)):
                raise
            # A refusal that names the protocol is final for this URL. Silence until the connect timeout is
            # ambiguous: a black-holed 4G link looks like a broker that cannot read MQTT 5 (amqtt 0.12 never
            # answers one). Try 3.1.1 now; only if that works, stay on it for a while, then retry 5. A
            # connection closed before CONNACK is the network (a 4G reset): no fallback for that.
            log.debug("link: %s: %s with MQTT 5; trying 3.1.1", broker.url, exc.reason)
            conn = await self._connect(broker, False)
            hold = float("inf") if exc.protocol else FALLBACK_HOLD_S
            self._v311[broker.url] = self.clock.monotonic() + hold
            conn.fallback = exc.reason  # said in the "connected" line: one INFO per recovery
        self.current = conn
        try:
            await conn.serve()
        finally:
            self.current = None
            await conn.close(graceful=not conn.lost.is_set())
            self.outbox.rewind()
            self.usage.save(force=True)  # the connection's last bytes (sampled as its socket closed)

    async def _connect(self, broker: Broker, v5: bool) -> _Connection:
        try:
            conn = _Connection(self, broker, v5)
        except (ssl.SSLError, OSError, ValueError) as exc:
            # CA, certificate or key unreadable or not matching (rotated, replaced by hand): a setup fault
            # the operator must fix, not a crash loop; the longest backoff, and one log line per edge
            raise ConnectFailed(f"TLS setup failed: {type(exc).__name__}: {exc}", auth=True) from None
        await conn.open()
        return conn


    def _tls_context(self, broker: Broker) -> _ResumingContext:
        """The TLS context for `broker`: kept from one connection to the next (a session can be resumed only
        with the context that made it) until the CA, certificate or key file changes or the clock's verdict
        does. Raises OSError / ssl.SSLError / ValueError for files that cannot be read (a setup fault)."""
        cfg = self.config.mqtt
        unchecked = self.clock.time() < EPOCH_FLOOR
        if unchecked and not self.tls_time_unchecked:
            log.warning("link: wall clock is not set (before %s): TLS certificate dates are not checked "
                        "until it is", dt.datetime.fromtimestamp(EPOCH_FLOOR, dt.UTC).date())
        self.tls_time_unchecked = unchecked
        files = tuple(p.stat().st_mtime_ns if p is not None else None for p in (cfg.ca, cfg.cert, cfg.key))
        made = (unchecked, files)
        kept = self._tls.get(broker.url)
        if kept is not None and kept[0] == made and self.config.uplink.tls_resumption:
            return kept[1]
        ctx = _ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # what create_default_context makes, resumable
        if cfg.ca is not None:
            ctx.load_verify_locations(cafile=str(cfg.ca))
        else:
            ctx.load_default_certs()
        if unchecked:
            # A box without RTC boots in 1970: every certificate is "not yet valid" and the box could
            # never connect, not even to hear an emergency. With a clock that is certainly wrong, check
            # the chain to the county CA and the host name but not the validity dates (the broker
            # still checks the box's certificate with its own clock). Back to full checks once set.
            ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        if cfg.cert is not None and cfg.key is not None:
            ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
        self._tls[broker.url] = (made, ctx)
        return ctx

    def keep_row(self, row: Row) -> bool:
        """False for a telemetry row the monthly budget thins (at most one per kind and subject per
        thin_interval_s, by the envelope's ts); everything else, and everything while not thinning, is kept."""
        if row.cls is not MsgClass.TELEMETRY or not self.usage.thinning:
            return True
        try:
            obj = json.loads(row.body)
            data, ts = obj.get("data") or {}, int(obj["ts"])
            subject = next((str(data[k]) for k in ("wearer", "camera", "device") if k in data), "")
        except (ValueError, KeyError, TypeError, AttributeError):
            return True  # not ours to judge: sent as it is
        key = (row.kind, subject)
        last = self._thin_last.get(key)
        if last is not None and 0 <= ts - last < self.config.uplink.thin_interval_s * 1000:
            self.thinned += 1
            self.usage.add_thinned()
            self.outbox.thin(row.seq)
            return False
        self._thin_last[key] = ts
        return True


class _ResumingContext(ssl.SSLContext):
    """An SSLContext whose sockets resume `session` (paho wraps the socket itself and passes no session).

    Python's ssl resumes a TLS 1.2 session or a TLS 1.3 ticket given to `wrap_socket(session=...)`, and only
    with the context that made it, hence one context per broker kept across connections."""

    session: ssl.SSLSession | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.session is not None and kwargs.get("session") is None:
            kwargs["session"] = self.session
        return super().wrap_socket(sock, *args, **kwargs)


@dataclass(slots=True)
class _Flight:
    """One publish in flight: the outbox rows it carries (one, or a batch's)."""

    seqs: tuple[int, ...]
    bulk: bool  # telemetry or event: counts against the bulk share
    batch: bool = False


@dataclass(slots=True)
class _Building:
    """An uplink batch being filled: sent when full or at `deadline` (loop time)."""

    deadline: float
    rows: list[Row] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True)
class _Outage:
    since: float  # monotonic
    warned: str | None = None  # what this outage already said at WARNING ("lost", or a connect failure)
    failures: int = 0


class _Connection:
    """One paho client from CONNECT to disconnect."""

    def __init__(self, link: Link, broker: Broker, v5: bool) -> None:
        self.link, self.broker, self.v5 = link, broker, v5
        self.loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[tuple[bool, Any]] = self.loop.create_future()
        # An attempt given up on (connect timeout, cancelled) can still be answered by paho's disconnect
        # callback later, with nobody awaiting: mark the outcome seen, or asyncio logs "Future exception was
        # never retrieved" at ERROR for every abandoned attempt of a routine outage.
        self.connected.add_done_callback(_seen)
        self.lost = asyncio.Event()
        self.lost_reason = "closed"
        self.acked = asyncio.Event()
        self.inflight: dict[int, _Flight] = {}  # paho mid -> what that publish carries
        self.bulk_inflight = 0
        self.urgent_sent: dict[int, float] = {}  # mid -> loop time it was published, for alarms and receipts
        self.alias_max = 0  # MQTT 5 topic aliases the broker allows (CONNACK), capped at ALIAS_MAX
        self.aliases: dict[str, int] = {}
        self.building: dict[MsgClass, _Building] = {}  # uplink batches being filled, per class
        self.meter = SocketMeter(link.usage)
        # held commands: received and not yet acknowledged. The semaphore is taken in paho's thread before a
        # command is handed over and given back after its PUBACK, so at most COMMAND_QUEUE are ever held
        self.commands: asyncio.Queue[tuple[InboundCommand, int, int]] = asyncio.Queue()
        self.held = 0
        self._room = threading.Semaphore(COMMAND_QUEUE)
        self._closing = threading.Event()
        self._paused_logged = False
        self.refused_by_broker = 0
        self.socket_error: str | None = None  # paho's last socket error before CONNACK (TLS refusals)
        self.fallback: str | None = None  # why MQTT 5 was not used, when this is a 3.1.1 fallback
        self.session_present = False
        cfg = link.config.mqtt
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=link.box,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
            reconnect_on_failure=False,  # we reconnect, with jitter; paho's thread ends with its connection
        )
        self.client.max_inflight_messages_set(cfg.inflight + ALARM_RESERVE)
        self.client.max_queued_messages_set(cfg.inflight + ALARM_RESERVE + 16)
        self.client.connect_timeout = cfg.connect_timeout_s
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set_context(link._tls_context(broker))
        self.client.will_set(link.topics.state(link.box), self._state_payload("offline"), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_log = self._on_log  # only until CONNACK: see _on_log
        self.client.on_socket_close = self._socket_closing


    def _state_payload(self, state: str) -> bytes:
        return json.dumps({
            "state": state, "ts": int(self.link.clock.time() * 1000), "version": __version__,
            "groups": list(self.link.config.box.groups),
        }).encode()

    # paho thread -> event loop ------------------------------------------------
    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # A broker that refuses the client certificate (missing, expired, another CA) closes the TLS
        # session after the handshake looks complete to the client (TLS 1.3): paho only logs the socket
        # error and reports a bare disconnect. Keep that error line (paho's error lines carry no
        # credentials) to name the cause; the hook is removed at CONNACK so it costs nothing after.
        if level == mqtt.MQTT_LOG_ERR and buf.startswith("failed to receive on socket"):
            self.socket_error = buf.removeprefix("failed to receive on socket: ")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.alias_max = min(ALIAS_MAX, int(getattr(props, "TopicAliasMaximum", 0) or 0)) \
            if self.v5 and self.link.config.uplink.topic_aliases else 0
        self.loop.call_soon_threadsafe(self._connack, flags.session_present, reason)

    def _socket_closing(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.meter.sample(sock)  # paho's thread, just before the close: the connection's last bytes

    def _connack(self, session_present: bool, reason: Any) -> None:
        self.client.on_log = None
        if not self.connected.done():
            self.connected.set_result((session_present, reason))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.loop.call_soon_threadsafe(self._disconnected, reason)

    def _disconnected(self, reason: Any) -> None:
        self.lost_reason = str(reason)
        if not self.connected.done():
            if self.broker.tls and self.socket_error is not None:
                # not a protocol-version problem: never fall back to 3.1.1 for it; longest backoff. The
                # reason stays the same from attempt to attempt (one log line per edge): the SSL detail
                # differs by a race (alert or bare EOF), so it goes to debug only.
                log.debug("link: TLS socket error before CONNACK: %s", self.socket_error)
                self.connected.set_exception(ConnectFailed(
                    "the broker closed the TLS connection before CONNACK: client certificate missing, expired,"
                    " revoked or not issued by the county CA (the broker's log says which)", auth=True))
            else:
                self.connected.set_exception(ConnectFailed(f"closed before CONNACK ({reason})"))
        self.lost.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.loop.call_soon_threadsafe(self._puback, mid, reason)

    def _puback(self, mid: int, reason: Any) -> None:
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return  # the state message, or a message from before a rewind
        self.urgent_sent.pop(mid, None)
        self.bulk_inflight -= entry.bulk
        if getattr(reason, "is_failure", False):
            # the broker refused it (v5 PUBACK >= 0x80, e.g. not authorized): keep the row for the next
            # connection and count it; it is not lost, and the operator sees it in the heartbeat
            self.refused_by_broker += 1
            self.link.refused += 1
            if self.refused_by_broker == 1:
                log.warning("link: broker refused a publish (%s); kept for retry", reason)
        else:
            for seq in entry.seqs:  # a batch's PUBACK acknowledges every row it carried
                self.link.outbox.ack(seq)
            self.link.published += len(entry.seqs)
            self.link.batches += entry.batch
            # "last publish" means the broker took it: status must not look healthy while nothing is acked
            self.link._statefile.published(self.link.clock.time())
        self.acked.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.qos == 0:
            # the contract says QoS 1: nothing to acknowledge, so nothing holds it back. Refused unread, here
            # in paho's thread, so a flood of them costs a counter and not a queue or the event loop's time
            self.link._refused_qos0(msg.topic)
            return
        while not self._room.acquire(timeout=0.5):
            # COMMAND_QUEUE held: the broker sent more unacknowledged commands than we asked for (3.1.1 has no
            # Receive Maximum). Stop reading here; TCP holds the rest until the router has made room. Never
            # drop one unacknowledged: the broker would not send it again before a reconnect.
            if self._closing.is_set():
                return  # not acknowledged: the broker sends it again on the next connection
            if not self._paused_logged:
                self._paused_logged = True
                log.warning("link: %d commands held: reading from the broker paused until the router has handled "
                            "some (the broker does not limit what it sends unacknowledged: MQTT 3.1.1, or it "
                            "ignores Receive Maximum)", COMMAND_QUEUE)
        cmd = InboundCommand(msg.topic, bytes(msg.payload), bool(msg.retain), self.link.clock.time())
        self.loop.call_soon_threadsafe(self._enqueue_command, cmd, msg.mid, msg.qos)

    def _enqueue_command(self, cmd: InboundCommand, mid: int, qos: int) -> None:
        self.commands.put_nowait((cmd, mid, qos))  # unbounded type, bounded by self._room
        self.held += 1
        self.link.commands_held_hwm = max(self.link.commands_held_hwm, self.held)

    # event loop -----------------------------------------------------------------
    async def open(self) -> None:
        cfg = self.link.config.mqtt
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = COMMAND_WINDOW  # the broker holds the rest of a flood, not us
        # asyncio.timeout, never asyncio.wait_for: on 3.11 wait_for drops a cancellation (the supervisor's stop on
        # SIGTERM) that lands as the awaited connect completes, and returns its outcome instead (CPython gh-86296)
        # -- the link then went on into its backoff and the stop budget ended the process with code 3
        try:
            async with asyncio.timeout(cfg.connect_timeout_s + 1):
                await _in_thread(
                    self.client.connect, self.broker.host, self.broker.port, cfg.keepalive_s,
                    clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=props,
                )
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake failed: {exc.reason or exc}", auth=True) from None
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        _no_delay(self.client)
        self.client.loop_start()
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                session_present, reason = await asyncio.shield(self.connected)  # a timeout leaves it to paho
        except TimeoutError:
            await self.close(graceful=False)
            raise ConnectFailed("no CONNACK within the connect timeout", ambiguous=True) from None
        except (ConnectFailed, asyncio.CancelledError):
            await self.close(graceful=False)  # a stop in the middle of an attempt: paho's thread ends with it
            raise
        if reason.is_failure:
            await self.close(graceful=False)
            text = str(reason)
            raise ConnectFailed(
                f"broker refused: {text}",
                auth=reason.value in (4, 5, 0x86, 0x87, 0x8C),
                protocol=reason.value in (1, 0x84),
            )
        self.session_present = bool(session_present)

    async def serve(self) -> None:
        link = self.link
        sock = self.client.socket()
        if isinstance(sock, ssl.SSLSocket):
            if sock.session_reused:
                link.tls_resumed += 1
            ctx = sock.context
            if isinstance(ctx, _ResumingContext) and link.config.uplink.tls_resumption:
                # read after CONNACK: a TLS 1.3 server sends its session ticket after the handshake
                ctx.session = sock.session
        log.info("%s%s", link._connected_line(self),
                 ", TLS session resumed" if isinstance(sock, ssl.SSLSocket) and sock.session_reused else "")
        if link._had_session and not self.session_present:
            log.warning("link: the broker lost this box's session; commands sent meanwhile may be missed")
            link.outbox.send_nowait(MsgClass.EVENT, "session_lost", {"broker": self.broker.url})
        link._had_session = True
        cmd_topics = [link.topics.box_cmd(link.box)] + [link.topics.group_cmd(g) for g in link.config.box.groups]
        if self.v5:
            # Retain As Published: without it a retained command published while we are subscribed
            # arrives with the retain flag cleared, and could not be refused (mqtt-notes 7)
            opts = SubscribeOptions(qos=1, retainAsPublished=True)
            self.client.subscribe([(t, opts) for t in cmd_topics])
        else:  # 3.1.1 cannot tell; the replay store still refuses the copy a later subscription brings
            self.client.subscribe([(t, 1) for t in cmd_topics])
        for topic, on_message in list(link._listening.items()):
            self.listen(topic, on_message)
        self.client.publish(link.topics.state(link.box), self._state_payload("online"), qos=1, retain=True)
        link.reconnects += 1
        link._set_state(LinkState.CONNECTED, self.broker, "5" if self.v5 else "3.1.1")
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._drain(), name="link.drain"),
                     tg.create_task(self._commands(), name="link.commands"),
                     tg.create_task(self._watch(), name="link.watch")]
            await self.lost.wait()
            for task in tasks:
                task.cancel()
        link._lost(self)

    def listen(self, topic: str, on_message: TopicCallback) -> None:
        def deliver(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            on_message(bytes(msg.payload), bool(msg.retain), self.link.clock.monotonic())

        self.client.message_callback_add(topic, deliver)  # before the SUBSCRIBE: nothing reaches _on_message
        if self.v5:  # Retain As Published: the live gate refuses a retained packet, so it must see the flag
            self.client.subscribe(topic, options=SubscribeOptions(qos=0, retainAsPublished=True))
        else:
            self.client.subscribe(topic, qos=0)

    def unlisten(self, topic: str) -> None:
        self.client.unsubscribe(topic)
        self.client.message_callback_remove(topic)

    async def _watch(self) -> None:
        """Every second: an alarm or receipt without PUBACK for urgent_ack_timeout_s means the connection is dead
        though TCP has not noticed (a 4G link gone silent; the 4G keepalive is long): drop it, so the alarm goes
        again on a new one (same id). Every METER_EVERY_S: the socket's byte counts into the month's usage."""
        timeout = self.link.config.uplink.urgent_ack_timeout_s
        metered = self.loop.time()
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            if self.urgent_sent and now - min(self.urgent_sent.values()) > timeout:
                self.link.urgent_timeouts += 1
                self.lost_reason = f"no PUBACK for an alarm or receipt within {timeout:.0f} s"
                self.lost.set()
                return
            if now - metered >= METER_EVERY_S:
                metered = now
                self.meter.sample(self.client.socket())

    def _publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """QoS 1, with an MQTT 5 topic alias when the broker allows one: the first use of a topic sends it
        with its alias, later ones send the alias alone (2 bytes instead of ~45). Aliases live as long as the
        connection, as does this client."""
        props = None
        if self.alias_max:
            alias = self.aliases.get(topic)
            if alias is None and len(self.aliases) < self.alias_max:
                alias = self.aliases[topic] = len(self.aliases) + 1
                props = Properties(PacketTypes.PUBLISH)
                props.TopicAlias = alias
            elif alias is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.TopicAlias = alias
                topic = ""
        info = self.client.publish(topic, payload, qos=1, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("link: publish failed locally: %s", mqtt.error_string(info.rc))
        return info

    def _send_row(self, row: Row) -> None:
        link = self.link
        info = self._publish(link.topics.up(link.box, row.cls, row.kind), row.body)
        bulk = row.cls > MsgClass.RECEIPT
        self.inflight[info.mid] = _Flight((row.seq,), bulk)
        self.bulk_inflight += bulk
        if not bulk:
            self.urgent_sent[info.mid] = self.loop.time()

    async def _send_batch(self, cls: MsgClass) -> None:
        """One batch of `cls`: its oldest rows up to batch_max_bytes / batch_max_count (at least one); what is
        left stays for the next one, due at once."""
        up = self.link.config.uplink
        building = self.building[cls]
        take, size = 0, 0
        for row in building.rows:
            if take and (size + len(row.body) > up.batch_max_bytes or take >= up.batch_max_count):
                break
            take, size = take + 1, size + len(row.body)
        rows, building.rows = building.rows[:take], building.rows[take:]
        building.size -= size
        if not building.rows:
            del self.building[cls]
        link = self.link
        bodies = [r.body for r in rows]
        if size <= SMALL_BATCH:  # the minute's batch of a village: well under a millisecond at level 9
            payload = batch.pack(bodies)
        else:  # a backlog's: level 9 costs ~18 ms per 64 KiB here (more on a Pi), level 6 ~3 ms for 5 % more
            payload = await asyncio.to_thread(batch.pack, bodies, batch.DEFAULT_DICT, 6)
        info = self._publish(batch.batch_topic(link.topics.prefix, link.box, cls), payload)
        self.inflight[info.mid] = _Flight(tuple(r.seq for r in rows), True, batch=True)
        self.bulk_inflight += 1

    async def _drain(self) -> None:
        window = self.link.config.mqtt.inflight
        up = self.link.config.uplink
        batching = up.batching
        bulk_max = min(window, BATCH_INFLIGHT if batching else self.link.bulk_window)
        outbox = self.link.outbox
        while True:
            # clear before reading: a commit or PUBACK that lands meanwhile sets them again
            outbox.available.clear()
            self.acked.clear()
            # alarms and receipts first, up to the window plus the reserve (next_batch reads nothing for a
            # class the outbox has no rows of), each at once on its own; then telemetry and events, within
            # their share: one publish each, or (batching) into the batch of their class
            rows = await outbox.next_batch(window + ALARM_RESERVE - len(self.inflight), max_cls=MsgClass.RECEIPT)
            for row in rows:
                self._send_row(row)
            more = False  # rows may be waiting that were not read (the read stopped at its limit)
            if not batching:
                bulk_room = min(window - len(self.inflight), bulk_max - self.bulk_inflight)
                if bulk_room > 0:
                    got = await outbox.next_batch(bulk_room)  # best class first: an alarm committed meanwhile too
                    for row in got:
                        if row.cls <= MsgClass.RECEIPT or self.link.keep_row(row):
                            self._send_row(row)
                    rows += got
                if rows:
                    continue
                if bulk_room > 0:  # nothing waiting: only a commit can bring work
                    await outbox.available.wait()
                else:  # bulk at its bound: a PUBACK makes room, and an alarm may still come
                    await _first(outbox.available, self.acked)
                continue
            room = up.batch_max_count - sum(len(b.rows) for b in self.building.values())
            if room > 0 and len(self.inflight) < window:
                got = await outbox.next_batch(room)
                more = len(got) == room
                for row in got:
                    if row.cls <= MsgClass.RECEIPT:  # committed meanwhile: never waits for a batch
                        self._send_row(row)
                    elif self.link.keep_row(row):
                        b = self.building.get(row.cls)
                        if b is None:
                            b = self.building[row.cls] = _Building(self.loop.time() + up.batch_window_s)
                        b.rows.append(row)
                        b.size += len(row.body)
                rows += got
            now = self.loop.time()
            full = sum(len(b.rows) for b in self.building.values()) >= up.batch_max_count
            for cls in sorted(self.building):
                while (b := self.building.get(cls)) is not None and self.bulk_inflight < bulk_max and (
                        full or now >= b.deadline or b.size >= up.batch_max_bytes or len(b.rows) >= up.batch_max_count):
                    await self._send_batch(cls)
            if rows and (more or not self.building):
                continue
            if self.building and self.bulk_inflight < bulk_max:
                left = min(b.deadline for b in self.building.values()) - self.loop.time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, left)):
                        await _first(outbox.available, self.acked)
            elif self.bulk_inflight >= bulk_max or len(self.inflight) >= window:
                await _first(outbox.available, self.acked)
            else:
                await outbox.available.wait()

    async def _commands(self) -> None:
        while True:
            cmd, mid, qos = await self.commands.get()
            try:
                await self.link.sink.on_command(cmd)
            finally:
                with contextlib.suppress(Exception):
                    self.client.ack(mid, qos)
                self.held -= 1
                self._room.release()

    async def close(self, *, graceful: bool) -> None:
        self._closing.set()  # paho's thread may be waiting for room for a command: let it go
        client = self.client
        if graceful:
            with contextlib.suppress(Exception):
                info = client.publish(self.link.topics.state(self.link.box), self._state_payload("offline"),
                                      qos=1, retain=True)
                # bounded by paho itself; no asyncio.timeout here: close runs while the task is being cancelled,
                # where 3.11.0-3.11.2 (Debian bookworm) turn the timeout's expiry into a CancelledError (gh-102780)
                await asyncio.to_thread(info.wait_for_publish, STOP_BUDGET_S)
            with contextlib.suppress(Exception):
                client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        with contextlib.suppress(Exception):
            client.socket() and client.disconnect()



_in_thread = asyncio.to_thread  # the blocking connect runs through this (a seam for tests/test_link_cancel.py)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _no_delay(client: mqtt.Client) -> None:
    """Turn Nagle off: paho leaves it on, and every small write behind an unacknowledged one then waits
    ~40 ms for a delayed ACK (measured: command -> receipt halves with it off)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):  # TLS too: ssl.SSLSocket is one
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set, inside a TaskGroup so no waiter outlives the call."""
    done = asyncio.Event()

    async def wait_one(event: asyncio.Event) -> None:
        await event.wait()
        done.set()

    async with asyncio.TaskGroup() as tg:
        waiters = [tg.create_task(wait_one(e), name="link.wait") for e in events]
        await done.wait()
        for w in waiters:
            w.cancel()
