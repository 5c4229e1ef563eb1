"""The console's side of the wire: one blocking MQTT connection per command, the receipt board, watch output.

Blocking paho (its network thread plus a queue) rather than asyncio: a console command does one thing and
exits, and the blocking calls read top to bottom. Every topic comes from agent.protocol.topics and every
envelope is decoded by agent.protocol.envelope, so the console and the box cannot disagree about the wire.
The broker password is never printed: the URL is shown through `redact_url`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent import i18n, words
from agent.i18n import _
from agent.protocol.batch import expand
from agent.protocol.broker import parse_broker_url, redact_url
from agent.protocol.envelope import Envelope, EnvelopeError, MsgClass
from agent.protocol.topics import Topics

CONNECT_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 30.0
MAX_QUEUED = 100_000
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 8  # paho doubles the wait from min to max between tries


class ConsoleError(Exception):
    """A console command that cannot go on; `str()` is the one line shown (no secrets)."""


@dataclass(frozen=True)
class BrokerSpec:
    url: str
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: Path | None = None
    cert: Path | None = None
    client_key: Path | None = None

    @property
    def display(self) -> str:
        return redact_url(self.url)

    @classmethod
    def parse(cls, url: str | None, *, ca: Path | None = None, cert: Path | None = None,
              client_key: Path | None = None) -> BrokerSpec:
        if not url:
            raise ConsoleError(_("no broker: pass --broker URL or set VILLAGE_BROKER"))
        try:
            u = parse_broker_url(url)
        except ValueError as exc:
            raise ConsoleError(_("broker {error}").format(error=exc)) from None
        if (cert is None) != (client_key is None):
            raise ConsoleError(_("--cert and --client-key go together"))
        tls = u.tls
        if not tls and (ca or cert):
            raise ConsoleError(_("--ca/--cert/--client-key need an mqtts:// broker URL"))
        for p in (ca, cert, client_key):
            if p is not None and not p.is_file():
                raise ConsoleError(_("{file}: file does not exist").format(file=p))
        return cls(url=url, host=u.host, port=u.port, tls=tls, username=u.username, password=u.password,
                   ca=ca, cert=cert, client_key=client_key)


def set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho leaves Nagle on: a small PUBLISH then waits for the peer's delayed ACK (~40 ms on Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _why(rc: Any) -> str:
    """paho's reason for a lost connection; its 3.1.1 "Unspecified error" just means the socket closed."""
    text = str(rc)
    return "the connection closed" if text in ("Unspecified error", "") else text


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


class CountyClient:
    """One MQTT connection (MQTT 3.1.1): subscribe, publish with PUBACK, read messages; survives broker restarts.

    paho reconnects by itself after a lost connection, but a clean session comes back with no subscriptions:
    every subscription made here is remembered and sent again at each reconnect (in `on_connect`), whatever
    the broker says about the session. Each outage gets one line on stderr when it starts and one when the
    console is subscribed again, so a person watching knows there was a gap (mqtt-notes 4).
    """

    def __init__(self, spec: BrokerSpec, *, max_queued: int | None = None, client_id: str = "",
                 clean_session: bool = True, name: str = "console", tz: dt.tzinfo | None = None) -> None:
        self.spec = spec
        self.name = name
        self.tz = tz
        self.messages: queue.Queue[Message] = queue.Queue(MAX_QUEUED if max_queued is None else max_queued)
        self.dropped = 0  # messages lost to a full queue; written by paho's network thread only
        self.reconnects = 0  # completed reconnections (subscribed again); paho's thread writes it
        self.clean_session = clean_session
        self._connected = threading.Event()
        self._connect_rc: Any = None
        self._subacks: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._subs: list[tuple[str, int]] = []  # every subscription, sent again at each reconnect
        self._resubs: dict[int, int] = {}  # SUBSCRIBE mid of a resubscription -> number of filters in it
        self._up = False  # connected (CONNACK success) and not lost since
        self._closing = False
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        if spec.username is not None:
            self.client.username_pw_set(spec.username, spec.password)
        if spec.tls:
            ctx = ssl.create_default_context(cafile=str(spec.ca) if spec.ca else None)
            if spec.cert and spec.client_key:
                ctx.load_cert_chain(str(spec.cert), str(spec.client_key))
            self.client.tls_set_context(ctx)
        self.client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_socket_open = set_nodelay

    def notice(self, text: str) -> None:
        """One line on stderr, with the time: `village county watch: 10:02:03 CST lost connection to ...`."""
        now = dt.datetime.now(self.tz) if self.tz is not None else dt.datetime.now().astimezone()
        print(f"village county {self.name}: {now:%H:%M:%S %Z} {text}", file=sys.stderr, flush=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        failed = bool(getattr(rc, "is_failure", False))
        if not self._connected.is_set():  # the first CONNACK: connect() reports it
            self._connect_rc = rc
            self._up = not failed
            self._connected.set()
            return
        if failed:
            self.notice(f"broker {self.spec.display} refused the reconnection ({rc}); retrying")
            return
        self._up = True
        with self._lock:
            subs = list(self._subs)
            res, mid = client.subscribe(subs) if subs else (MQTTErrorCode.MQTT_ERR_SUCCESS, None)
            if mid is not None and res == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._resubs[mid] = len(subs)
        if not subs:
            self.reconnects += 1
            self.notice(f"reconnected to broker {self.spec.display}")
        elif res != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.notice(f"reconnected to broker {self.spec.display} but could not subscribe again: "
                        f"{mqtt.error_string(res)}")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if self._closing:
            return
        was_up, self._up = self._up, False
        if was_up:  # one line per outage, not one per failed retry
            gap = ("the broker keeps what arrives for this session" if not self.clean_session
                   else "what is sent until then is not seen here")
            self.notice(f"lost connection to broker {self.spec.display} ({_why(rc)}); reconnecting ({gap})")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        with self._lock:
            waiter = self._subacks.pop(mid, None)
            resub = self._resubs.pop(mid, None)
        if waiter is not None:
            waiter[1].extend(rcs)
            waiter[0].set()
        if resub is not None:
            self.reconnects += 1
            refused = sum(1 for r in rcs if getattr(r, "is_failure", False))
            what = f"{resub} topic filter(s)" + (f", {refused} refused" if refused else "")
            self.notice(f"reconnected to broker {self.spec.display}; subscribed again to {what}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # an uplink batch (issue 14) is read as the envelopes it carries, each on its single topic, byte for byte
        for topic, payload in expand(msg.topic, bytes(msg.payload)):
            try:
                self.messages.put_nowait(Message(topic, payload, bool(msg.retain)))
            except queue.Full:  # a console that stopped reading: dropping here beats growing without bound,
                self.dropped += 1  # and the reader reports the count (`watch` prints it)

    def __enter__(self) -> CountyClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        try:
            self.client.connect(self.spec.host, self.spec.port, keepalive=30)
        except ssl.SSLError as exc:
            raise ConsoleError(_("TLS with {broker} failed: {error}").format(broker=self.spec.display,
                                                                            error=exc.reason or exc)) from None
        except OSError as exc:
            raise ConsoleError(_("cannot reach broker {broker}: {error}").format(broker=self.spec.display,
                                                                                error=exc.strerror or exc)) from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise ConsoleError(_("no answer from broker {broker} within {s:.0f} s").format(broker=self.spec.display,
                                                                                          s=timeout))
        if self._connect_rc is not None and getattr(self._connect_rc, "is_failure", False):
            self.close()
            raise ConsoleError(_("broker {broker} refused the connection: {reason}").format(
                broker=self.spec.display, reason=self._connect_rc))

    def subscribe(self, topics: Sequence[str | tuple[str, int]], timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Subscribe (QoS 1 unless a `(filter, qos)` says otherwise) and wait for the SUBACK.

        The filters are remembered and subscribed again after every reconnect. A filter the broker refuses
        (its ACL) is an error here, not a silent console that never receives anything.
        """
        subs = [t if isinstance(t, tuple) else (t, 1) for t in topics]
        ev, codes = threading.Event(), list[Any]()
        with self._lock:
            self._subs.extend(subs)
            rc, mid = self.client.subscribe(subs)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise ConsoleError(f"subscribe failed: {mqtt.error_string(rc)}")
            self._subacks[mid] = (ev, codes)
        if not ev.wait(timeout):
            raise ConsoleError(_("broker {broker} did not confirm the subscription").format(broker=self.spec.display))
        refused = [s[0] for s, c in zip(subs, codes, strict=False) if getattr(c, "is_failure", False)]
        if refused:
            raise ConsoleError(_("broker {broker} refused the subscription to {topics} (not allowed by its ACL?)"
                                 ).format(broker=self.spec.display, topics=", ".join(refused)))

    def publish(self, topic: str, payload: bytes, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """QoS 1, never retained (mqtt-notes 7); returns once the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=1, retain=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConsoleError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout)
        except (ValueError, RuntimeError) as exc:
            raise ConsoleError(f"publish to {topic} failed: {exc}") from None
        if not info.is_published():
            raise ConsoleError(_("broker {broker} did not acknowledge the publish within {s:.0f} s").format(
                broker=self.spec.display, s=timeout))

    def get(self, timeout: float) -> Message | None:
        try:
            return self.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        self._closing = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


# ------------------------------------------------------------------------------------ receipts board
FINAL_REPLAY = ("rejected", "replay")
# Receipt states after which a box says nothing more about a command (contract section 4): `--wait` ends
# early once every expected box reached one. `scheduled`/`started` are on the way to `finished`.
FINAL_STATES = frozenset({"rejected", "finished", "failed", "cancelled", "preempted", "expired", "applied"})


@dataclass
class BoxRow:
    box: str
    state: str = "no answer"
    reason: str | None = None
    ts: int | None = None  # epoch ms of the receipt
    seq: int = -1
    answered: bool = False

    def to_json(self, cmd_id: str) -> dict[str, Any]:
        return {"box": self.box, "cmd": cmd_id, "state": self.state, "reason": self.reason, "ts": self.ts}

    @property
    def final(self) -> bool:
        return self.answered and self.state in FINAL_STATES


class ReceiptBoard:
    """One row per box for one command: which boxes are expected, and the last receipt state of each.

    Known boxes are the ones with a retained `state` message (online or offline: the broker keeps QoS 1
    commands for an offline box's session); the box publishes its `groups` there. Expected boxes: every
    `box:ID` target, and every known box that lists a targeted group. Any other box that answers is added
    as it answers. A `rejected`/`replay` after another state is a duplicate delivery (e.g. the command
    reached the box on both its own and its group's topic) and does not hide the real state.
    """

    def __init__(self, cmd_id: str, targets: list[str], topics: Topics) -> None:
        self.cmd_id = cmd_id
        self.topics = topics
        self.targets = list(targets)
        self.groups = {t.split(":", 1)[1] for t in targets if t.startswith("group:")}
        self.known: dict[str, frozenset[str]] = {}  # box -> its groups, from retained state messages
        self.rows: dict[str, BoxRow] = {}
        for t in targets:
            if t.startswith("box:"):
                self.rows.setdefault(t.split(":", 1)[1], BoxRow(t.split(":", 1)[1]))

    def feed(self, msg: Message) -> BoxRow | None:
        """Take one message; returns the row whose state it changed (a receipt for this command), else None."""
        box = self.topics.parse_state(msg.topic)
        if box is not None:
            self._state(box, msg.payload)
            return None
        parsed = self.topics.parse_up(msg.topic)
        if parsed is None or parsed[1] is not MsgClass.RECEIPT or parsed[2] != "cmd":
            return None
        try:
            env = Envelope.decode(msg.payload)
        except EnvelopeError:
            return None
        if env.data.get("cmd") != self.cmd_id:
            return None
        row = self.rows.setdefault(env.box, BoxRow(env.box))
        state, reason = str(env.data.get("state")), env.data.get("reason")
        before = (row.state, row.reason, row.answered)
        if (state, reason) == FINAL_REPLAY and row.answered and (row.state, row.reason) != FINAL_REPLAY:
            return None
        if (env.ts, env.seq) >= (row.ts or 0, row.seq):
            row.state, row.reason, row.ts, row.seq = state, None if reason is None else str(reason), env.ts, env.seq
        row.answered = True
        return row if (row.state, row.reason, row.answered) != before else None

    def _state(self, box: str, payload: bytes) -> None:
        if not payload:  # the retained state was cleared: the box is gone
            self.known.pop(box, None)
            return
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):  # a box's payload: "[[[[..." must not stop the console
            return
        groups = doc.get("groups") if isinstance(doc, dict) else None
        mine = frozenset(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else frozenset()
        self.known[box] = mine
        if self.groups & mine:
            self.rows.setdefault(box, BoxRow(box))

    def unheard(self) -> list[str]:
        """Targets no known box answers to: a `box:ID` without a retained state, a group no known box lists."""
        out = []
        for t in self.targets:
            scope, name = t.split(":", 1)
            if scope == "box" and name not in self.known:
                out.append(t)
            elif scope == "group" and not any(name in g for g in self.known.values()):
                out.append(t)
        return out

    def sorted_rows(self) -> list[BoxRow]:
        return [self.rows[b] for b in sorted(self.rows)]

    @property
    def all_good(self) -> bool:
        return all(r.answered and r.state not in ("rejected", "failed") for r in self.rows.values())

    @property
    def all_final(self) -> bool:
        return bool(self.rows) and all(r.final for r in self.rows.values())

    def progress(self) -> str:
        rows = self.rows.values()
        return _("{answered} of {n} box(es) answered, {final} final").format(
            answered=sum(r.answered for r in rows), n=len(self.rows), final=sum(r.final for r in rows))


def _local(ts_ms: int | None, tz: dt.tzinfo | None = None) -> str:
    if ts_ms is None:
        return ""
    t = dt.datetime.fromtimestamp(ts_ms / 1000, tz) if tz is not None else dt.datetime.fromtimestamp(ts_ms / 1000)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _board_state(state: str) -> str:
    """A receipt state in words; "no answer" (no receipt at all) too. English keeps the codes as they were."""
    return words.state("no_answer" if state == "no answer" else state) if i18n.current() != "en" else state


def print_board(board: ReceiptBoard, out: TextIO, *, as_json: bool, tz: dt.tzinfo | None = None) -> None:
    rows = board.sorted_rows()
    if as_json:
        for row in rows:
            out.write(json.dumps(row.to_json(board.cmd_id), ensure_ascii=False) + "\n")
        return
    # the column heads and the states in the chosen language (the codes themselves stay in --json); padded by
    # display width, as a Chinese character takes two columns
    head, states = (_("BOX"), _("STATE"), _("REASON"), _("AT")), [_board_state(r.state) for r in rows]
    reasons = [words.reason(r.reason) for r in rows]
    width = max([i18n.width(head[0]), *(i18n.width(r.box) for r in rows)])
    sw = max([10, *(i18n.width(st) for st in states)])
    rw = max([20, *(i18n.width(x) for x in reasons)])
    out.write(f"{i18n.pad(head[0], width + 2)}{i18n.pad(head[1], sw + 1)}{i18n.pad(head[2], rw + 1)}{head[3]}\n")
    for r, st, why in zip(rows, states, reasons, strict=True):
        line = f"{i18n.pad(r.box, width + 2)}{i18n.pad(st, sw + 1)}{i18n.pad(why, rw + 1)}{_local(r.ts, tz)}"
        out.write(line.rstrip() + "\n")
    if not rows:
        out.write(_("(no box known for these targets: none answered and none lists the group in its state)") + "\n")


def collect(client: CountyClient, board: ReceiptBoard, seconds: float,
            progress: Callable[[BoxRow, float], None] | None = None) -> bool:
    """Feed receipts to the board for up to `seconds`; returns True as soon as every expected box is final."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if board.all_final:
            return True
        msg = client.get(min(left, 0.5))
        if msg is not None and (row := board.feed(msg)) is not None and progress is not None:
            progress(row, max(0.0, deadline - time.monotonic()))
    return board.all_final


def learn_boxes(client: CountyClient, board: ReceiptBoard, settle_s: float = 1.0) -> None:
    """Read the retained states the broker sent with the subscription into the board.

    mosquitto queues a QoS 0 subscription's retained messages before it answers the next SUBSCRIBE, so the
    caller subscribes to the states (QoS 0) and then to something else: once that SUBACK is in, every
    retained state is in the queue. A broker that orders them otherwise gets `settle_s` more for targets
    still unknown. Non-state messages read meanwhile are fed too (receipts of a fast box are kept).
    """
    def drain() -> None:
        while (msg := client.get(0)) is not None:
            board.feed(msg)

    drain()
    deadline = time.monotonic() + settle_s
    while board.unheard() and (left := deadline - time.monotonic()) > 0:
        msg = client.get(min(left, 0.1))
        if msg is not None:
            board.feed(msg)
            drain()


# ------------------------------------------------------------------------------------ watch
def format_envelope(topic: str, payload: bytes, topics: Topics, tz: dt.tzinfo | None = None) -> str:
    """The human line for one uplink message (time in `tz`, default the machine's); anything undecodable is
    shown as such, never dropped."""
    try:
        env = Envelope.decode(payload)
    except EnvelopeError as exc:
        return f"{'?':<23}  {topic}  (not an envelope: {exc}) {payload[:200]!r}"
    ts = dt.datetime.fromtimestamp(env.ts / 1000, tz) if tz is not None else \
        dt.datetime.fromtimestamp(env.ts / 1000).astimezone()
    data = json.dumps(env.data, ensure_ascii=False, separators=(",", ":"))
    if len(data) > 400:
        data = data[:400] + "…"
    when = f"{ts:%Y-%m-%d %H:%M:%S}.{ts.microsecond // 1000:03d}"
    what = f"{env.cls.wire}/{env.kind}"
    if i18n.current() != "en":  # the words first, the codes (what scripts grep for) beside them
        what = f"{words.cls(env.cls.wire)}/{words.kind(env.kind)} ({what})"
    return f"{when}  {env.box}  {what}  #{env.seq}  {data}"


def state_json_line(topic: str, payload: bytes) -> bytes:
    """`watch --json --state`: a retained state payload is not an envelope, so it is wrapped.

    `{"state_topic": topic, "state": <the payload as JSON>}`; a payload that is not JSON (or empty: a box's
    retained state was cleared) gives `"state": null` and `"raw"` (the text, undecodable bytes replaced).
    """
    line: dict[str, Any] = {"state_topic": topic}
    try:
        line["state"] = json.loads(payload)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, RecursionError):  # a box's payload ("[[[[...", NaN) must not stop the console or the JSON
        line["state"] = None
        line["raw"] = payload[:4096].decode("utf-8", "replace")
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()


def dropped_line(dropped: int, held: int) -> str:
    """What `watch` says about messages lost to a full queue (`held` = the queue's size)."""
    return _("(console: {n} message(s) dropped so far: they arrived faster than this output was read; "
             "at most {held} are held)").format(n=dropped, held=held)


def format_state(box: str, payload: bytes, tz: dt.tzinfo | None = None) -> str:
    try:
        doc = json.loads(payload)
        state = doc.get("state", "?") if isinstance(doc, dict) else "?"
    except (ValueError, RecursionError):
        state = "?"
    now = dt.datetime.now(tz) if tz is not None else dt.datetime.now().astimezone()
    if i18n.current() != "en":
        return f"{now:%Y-%m-%d %H:%M:%S}.000  {box}  {_('state')}  {words.state(state)} ({state})"
    return f"{now:%Y-%m-%d %H:%M:%S}.000  {box}  state  {state}"
