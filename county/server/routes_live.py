"""Live broadcast (实时喊话): the WebSocket `/ws/v1/live` of a logged-in session. (Not under /api/: the
OpenAPI document describes the HTTP API; the session is checked here, as the auth middleware does there.)

    browser --WebSocket: JSON start, Opus frames (binary), JSON end--> here --MQTT--> boxes

Checks, in order, before anything is sent: the session (the `vc_session` cookie, or a Bearer token for
scripts); for a cookie session the `Origin` header must be this server's own origin (the WebSocket has no
CSRF header: a page on another site could otherwise open one with the user's cookie) — refused before the
handshake completes; the role (`broadcast.create`, and `broadcast.emergency` for an emergency) and the
scope of the targets, exactly as POST /api/v1/broadcasts (403 audited, 422 `nobody_hears`).

Messages (text = JSON):
- client `{"type": "start", "to": [...], "class", "level", "title", "max_s", "force"}` -> server
  `{"type": "started", "id", "session", "boxes"}` once the `broadcast.live` command (signed with the county
  key, QoS 1) is on the broker; or `{"type": "error", "status", "detail"}` and the socket closes (4000+status).
- client binary: one Opus frame (48 kHz mono, 20-60 ms); grouped into signed packets (county/live.py).
  Format v2 (`"v": 2` in start; `started` echoes it) adds `"container": "webm" | "ogg"`: then each binary
  message is a slice (any size up to MAX_CHUNK, in order) of the browser's MediaRecorder stream, demuxed
  here (county/webm.py, county/oggopus.py) into the same Opus packets; a malformed stream ends the session
  (END to the boxes, `{"type": "error", "status": 400, "detail"}`, close 4400). Without `container`, v2 is v1.
- client `{"type": "end"}` -> the END packet (three copies), server `{"type": "ended", ...counts}`, close.
A socket that drops without `end` (the browser was killed) just stops the audio: the boxes end the session
after their silence timeout. The server ends a session itself (END, `ended` with `end` `max_duration` or
`idle`) at `max_s`, or when an open socket sends nothing for IDLE_S (a hung page).

The session is stored as a broadcast row (`audio_mime` application/x-village-live) so the receipt board
(GET /api/v1/broadcasts/{id}) shows each box's started/finished with its packet counts; start and end are
audited.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent.broadcast.live import LIVE_MIME, MAX_LIVE_S
from county import push
from county.live import DEFAULT_MAX_S, END_COPIES, AudioPublisher, LiveError, LiveSession, new_session_id, ogg_opus
from county.oggopus import OggOpusReader
from county.server import auth
from county.server.routes_common import (
    ApiError,
    Parts,
    audit_append,
    now_ms,
    parse_targets,
    publish_all,
    reach_boxes,
    signing_key,
    topics_of,
)
from county.store.tables import broadcasts as broadcasts_t
from county.store.tables import messages as messages_t
from county.store.tables import receipts as receipts_t
from county.webm import DemuxError, WebmOpusReader
from drivers.aio import wait_within

log = logging.getLogger("county.live")

PATH = "/ws/v1/live"
IDLE_S = 10.0  # a socket that stays open but sends nothing this long ends the session (END to the boxes)
FALLBACK_AFTER_S = 20.0  # after the end: boxes report finished (or fail after their 5 s silence timeout)
NEEDS_FALLBACK = frozenset({"failed", "expired", "preempted"})  # and no receipt, or finished with link_poor
START_KEYS = frozenset({"type", "v", "to", "class", "level", "title", "max_s", "force", "container"})
PROTOCOL = (1, 2)  # the message format versions understood (the start message's "v"; absent = 1)
CONTAINERS = ("webm", "ogg")  # v2: binary messages are slices of a MediaRecorder stream, demuxed here
MAX_CHUNK = 1 << 16  # one binary message; MediaRecorder's 20-60 ms slices at 24 kbit/s are ~100-300 bytes


def _parts(ws: WebSocket) -> Parts:
    st = ws.app.state
    return Parts(config=st.config, db=st.db, hub=getattr(st, "hub", None), mqtt=getattr(st, "mqtt", None),
                 regions=getattr(st, "regions", None), clock=getattr(st, "clock", now_ms))


def same_origin(ws: WebSocket) -> bool:
    """The Origin header names this server (scheme and host:port as the browser reached it)."""
    origin, host = ws.headers.get("origin"), ws.headers.get("host")
    if not origin or not host:
        return False
    o = urlsplit(origin)
    want = "https" if ws.url.scheme in ("wss", "https") else "http"
    return o.scheme == want and o.netloc.lower() == host.lower()


async def _user(ws: WebSocket) -> tuple[auth.User | None, str | None]:
    """The session's user (None: none or expired) and how it came: "cookie", "bearer" or None (nothing)."""
    from county.server.app import _session_user, bearer_or_cookie

    token, via = bearer_or_cookie(ws)  # type: ignore[arg-type]  # reads only .headers and .cookies
    if token is None:
        return None, None
    return await _session_user(ws.app.state, token, via), via


def parse_start(msg: Any) -> dict[str, Any]:
    if not isinstance(msg, dict) or msg.get("type") != "start":
        raise ApiError(400, 'the first message must be {"type": "start", "to": [...], ...}')
    unknown = sorted(set(msg) - START_KEYS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown[:8])}")
    v = msg.get("v", 1)
    if type(v) is not int or v not in PROTOCOL:
        raise ApiError(400, f"unknown message format v={str(v)[:10]!r} (this server speaks v1, v2)")
    container = msg.get("container")
    if container is not None and (v < 2 or container not in CONTAINERS):
        raise ApiError(400, "container must be webm or ogg, and needs v 2")
    cls = msg.get("class", "emergency")
    if cls not in ("emergency", "daily", "drill"):
        raise ApiError(400, "class must be emergency, daily or drill")
    level = msg.get("level", 2 if cls == "emergency" else 3)
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 4:
        raise ApiError(400, "level must be 1..4")
    title = msg.get("title") or ""
    if not isinstance(title, str) or len(title) > 200:
        raise ApiError(400, "title must be a string of at most 200 characters")
    max_s = msg.get("max_s", DEFAULT_MAX_S)
    if isinstance(max_s, bool) or not isinstance(max_s, int) or not 1 <= max_s <= MAX_LIVE_S:
        raise ApiError(400, f"max_s must be 1..{MAX_LIVE_S}")
    return {"to": parse_targets(msg.get("to")), "class": cls, "level": level, "title": title, "max_s": max_s,
            "force": msg.get("force") is True, "v": v, "container": container}


async def _fail(ws: WebSocket, exc: ApiError) -> None:
    body: dict[str, Any] = {"type": "error", "status": exc.status, "detail": exc.message}
    body.update({k: v for k, v in exc.extra.items() if k in ("reason", "unheard")})
    await ws.send_text(json.dumps(body, ensure_ascii=False))
    await ws.close(code=4000 + exc.status)


def audio_publisher(ws: WebSocket) -> AudioPublisher:
    st = ws.app.state
    pub = getattr(st, "live_audio", None)
    if pub is None:
        pub = st.live_audio = AudioPublisher(st.config.mqtt)
    return pub  # type: ignore[no-any-return]


async def live(ws: WebSocket) -> None:
    user, via = await _user(ws)
    if via == "cookie" and not same_origin(ws):
        await ws.close(code=1008)  # before the handshake: the browser sees 403, the page learns nothing
        if user is not None:
            await _audit(ws, user.name, "denied", {"why": "origin", "origin": (ws.headers.get("origin") or "")[:200]})
        return
    await ws.accept()
    if user is None:
        await _fail(ws, ApiError(401, "no session: log in first"))
        return
    p = _parts(ws)
    try:
        start = parse_start(json.loads(await ws.receive_text()))
        for action in ("broadcast.create", *(("broadcast.emergency",) if start["class"] == "emergency" else ())):
            if not auth.allowed(user, action):
                await _audit(ws, user.name, "denied", {"why": "forbidden", "action": action})
                raise ApiError(403, f"{user.role} {user.name!r} may not {action}")
        boxes = await reach_boxes(p, user, start["to"], force=start["force"], refused="broadcast.refused")
        session, stored = await _begin(ws, p, user, start, boxes)
    except ApiError as exc:
        await _fail(ws, exc)
        return
    except (ValueError, KeyError, WebSocketDisconnect) as exc:
        if not isinstance(exc, WebSocketDisconnect):
            await _fail(ws, ApiError(400, "the first message must be JSON text"))
        return
    await ws.send_text(json.dumps({"type": "started", "id": session.cmd_id, "session": session.session,
                                   "boxes": boxes, "v": start["v"]}))
    await _stream(ws, p, user, session, start["max_s"], start["container"])
    task = asyncio.get_running_loop().create_task(fallback(ws, p, user.name, session, stored),
                                                  name="county.live.fallback")
    st = ws.app.state
    if getattr(st, "live_tasks", None) is None:
        st.live_tasks = set()  # kept until done (the loop holds only weak references to tasks)
    tasks: set[asyncio.Task[Any]] = st.live_tasks
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _begin(ws: WebSocket, p: Parts, user: auth.User, start: dict[str, Any],
                 boxes: list[str]) -> tuple[LiveSession, dict[str, Any]]:
    pub = audio_publisher(ws)
    try:
        await pub.start()
    except LiveError as exc:
        raise ApiError(503, f"the live audio connection to the broker failed: {exc}") from None
    key, kid = await signing_key(ws)  # type: ignore[arg-type]  # reads only .app.state
    now = p.now_s()
    cmd_id = str(uuid.uuid4())
    session = LiveSession(new_session_id(), cmd_id, p.config.mqtt.topic_prefix)
    data = {"session": session.session, "class": start["class"], "level": start["level"], "title": start["title"],
            "codec": {"name": "opus", "rate": session.rate, "channels": session.channels},
            "max_s": start["max_s"], "key": session.public_key()}
    payload = push.command("broadcast.live", data, start["to"], now=now, ttl_s=min(push.MAX_TTL_S, 120),
                           cmd_id=cmd_id)
    token = push.sign(payload, key, kid)
    row = {"id": cmd_id, "state": "publishing", "created_by": user.name, "created_at": p.now_ms(),
           "class": start["class"], "level": start["level"], "title": start["title"], "text": "",
           "audio_mime": LIVE_MIME, "audio_sha256": None, "audio": None, "volume": None, "start": None,
           "end": None, "exp": payload["exp"], "targets": start["to"], "boxes": boxes, "token": token.decode()}
    async with p.db.begin() as conn:
        await conn.execute(broadcasts_t.insert().values(**row))
        await audit_append(conn, user.name, "broadcast.live", cmd_id,
                           {"class": start["class"], "targets": start["to"], "boxes": len(boxes),
                            "session": session.session, "max_s": start["max_s"]})
    t = topics_of(p)
    failure = await publish_all(p, token, [push.target_topic(x, t) for x in payload["to"]])
    async with p.db.begin() as conn:
        await conn.execute(broadcasts_t.update().where(broadcasts_t.c.id == cmd_id)
                           .values(state="sent" if failure is None else "publish_failed"))
    if failure is not None:
        raise ApiError(503, f"the broker did not take the session command: {failure}")
    return session, row


async def _stream(ws: WebSocket, p: Parts, user: auth.User, session: LiveSession, max_s: int,
                  container: str | None = None) -> None:
    pub = audio_publisher(ws)
    demux = demuxer(container)
    why = "dropped"
    error: str | None = None
    deadline = time.monotonic() + max_s
    idle_s = float(getattr(ws.app.state, "live_idle_s", IDLE_S))
    try:
        while True:
            left = deadline - time.monotonic()
            try:  # never asyncio.wait_for (it can lose a cancellation: drivers/aio.py)
                msg = await wait_within(ws.receive(), max(0.0, min(left, idle_s)))
            except TimeoutError:
                why = "max_duration" if time.monotonic() >= deadline else "idle"
                break
            if msg["type"] == "websocket.disconnect":
                break
            if time.monotonic() >= deadline:
                why = "max_duration"
                break
            if msg.get("bytes") is not None:
                if demux is None:
                    frames = [msg["bytes"]]
                else:
                    try:
                        if len(msg["bytes"]) > MAX_CHUNK:
                            raise DemuxError(f"a binary message of {len(msg['bytes'])} bytes (at most {MAX_CHUNK})")
                        frames = demux.feed(msg["bytes"])
                    except DemuxError as exc:
                        why, error = "malformed", f"{container} stream: {exc}"
                        break
                    except Exception:  # a reader bug: end this session like a malformed stream, keep serving
                        log.exception("live %s: the %s reader failed", session.session, container)
                        why, error = "malformed", f"{container} stream: unreadable"
                        break
                for frame in frames:
                    pkt = session.add_frame(frame)
                    if pkt is not None:
                        pub.publish(session.topic, pkt)
            elif msg.get("text") is not None:
                try:
                    end = json.loads(msg["text"]).get("type") == "end"
                except (ValueError, AttributeError):
                    end = False
                if end:
                    why = "ended"
                    break
    except WebSocketDisconnect:
        pass
    finally:
        if why != "dropped":
            last = session.flush()
            if last is not None:
                pub.publish(session.topic, last)
            end_pkt = session.end_packet()
            for _ in range(END_COPIES):
                pub.publish(session.topic, end_pkt)
        session.close()
        stats = {"end": why, "frames": session.frames_in, "frames_bad": session.frames_bad,
                 "packets": session.packets_sent, "bytes": session.bytes_sent,
                 "seconds": round(session.pos / session.rate, 2)}
        if error is not None:
            stats["error"] = error
        log.info("live %s ended (%s): %d packets, %d bytes", session.session, why, session.packets_sent,
                 session.bytes_sent)
        await _audit(ws, user.name, "broadcast.live.end", {"id": session.cmd_id, **stats})
    if why != "dropped":
        try:
            if error is not None:  # the boxes had their END; the page learns why, the socket closes 4400
                await _fail(ws, ApiError(400, error))
                return
            await ws.send_text(json.dumps({"type": "ended", **stats}))
            await ws.close()
        except (WebSocketDisconnect, RuntimeError):
            pass


async def _audit(ws: WebSocket, actor: str, action: str, detail: dict[str, Any]) -> None:
    try:
        async with ws.app.state.db.begin() as conn:
            await audit_append(conn, actor, action, str(detail.get("id") or PATH), detail)
    except Exception:  # an audit hiccup must not break a live session or turn a refusal into a crash
        log.exception("could not audit %s", action)


def demuxer(container: str | None) -> WebmOpusReader | OggOpusReader | None:
    """v2 container data: the reader that turns its slices into Opus packets (None: raw frames, v1)."""
    if container == "webm":
        return WebmOpusReader()
    if container == "ogg":
        return OggOpusReader()
    return None


def routes() -> list[WebSocketRoute]:
    return [WebSocketRoute(PATH, live)]


# --------------------------------------------------------------------------------------- the fallback
async def poorly_heard(p: Parts, cmd_id: str, boxes: list[str]) -> list[str]:
    """The targeted boxes that did not hear the session well: no receipt at all (offline: store-and-forward
    brings them the recording later), failed (`no_audio`), expired or preempted, or finished with
    `link_poor` (the box measured too many lost or late packets). Not: rejected, cancelled, still playing."""
    stmt = (receipts_t.select().with_only_columns(receipts_t.c.box, receipts_t.c.state, messages_t.c.raw)
            .select_from(receipts_t.outerjoin(messages_t, messages_t.c.id == receipts_t.c.envelope))
            .where(receipts_t.c.cmd == cmd_id))
    async with p.db.connect() as conn:
        got = {r["box"]: r for r in (await conn.execute(stmt)).mappings()}
    out = []
    for box in boxes:
        r = got.get(box)
        if r is None or r["state"] in NEEDS_FALLBACK:
            out.append(box)
        elif r["state"] == "finished":
            try:
                data = json.loads(r["raw"] or "{}").get("data") or {}
            except ValueError:
                data = {}
            if data.get("link_poor") is True:
                out.append(box)
    return out


async def fallback(ws: WebSocket, p: Parts, actor: str, session: LiveSession, row: dict[str, Any]) -> list[str]:
    """After a session: its recording as an ordinary signed broadcast.play (marked `live_fallback`) to the
    boxes that heard it poorly, through store-and-forward like any broadcast. The boxes it went to."""
    await asyncio.sleep(float(getattr(ws.app.state, "live_fallback_after_s", FALLBACK_AFTER_S)))
    try:
        boxes = await poorly_heard(p, session.cmd_id, list(row["boxes"]))
        if not boxes or not session.recording:
            return []
        audio = ogg_opus(session.recording, session.rate, session.channels)
        key, kid = await signing_key(ws)  # type: ignore[arg-type]
        data = {"class": row["class"], "level": row["level"], "title": row["title"], "text": "",
                "audio": {"mime": "audio/ogg", "sha256": hashlib.sha256(audio).hexdigest(),
                          "b64": base64.b64encode(audio).decode()},
                "start": None, "end": None, "volume": None, "live_fallback": session.session}
        targets = [f"box:{b}" for b in boxes]
        payload = push.command("broadcast.play", data, targets, now=p.now_s(), ttl_s=push.DEFAULT_TTL_S)
        token = push.sign(payload, key, kid)
        bid = payload["id"]
        async with p.db.begin() as conn:
            await conn.execute(broadcasts_t.insert().values(
                id=bid, state="publishing", created_by=actor, created_at=p.now_ms(), **{"class": row["class"]},
                level=row["level"], title=row["title"], text="", audio_mime="audio/ogg",
                audio_sha256=data["audio"]["sha256"], audio=audio, volume=None, start=None, end=None,
                exp=payload["exp"], targets=targets, boxes=boxes, token=token.decode()))
            await audit_append(conn, actor, "broadcast.live.fallback", bid,
                               {"live": session.cmd_id, "session": session.session, "boxes": boxes,
                                "bytes": len(audio)})
        t = topics_of(p)
        failure = await publish_all(p, token, [push.target_topic(x, t) for x in targets])
        async with p.db.begin() as conn:
            await conn.execute(broadcasts_t.update().where(broadcasts_t.c.id == bid)
                               .values(state="sent" if failure is None else "publish_failed"))
        log.info("live %s: recording sent to %d box(es) that heard it poorly", session.session, len(boxes))
        return boxes
    except Exception:  # a background task: log, never take the server down
        log.exception("live %s: the fallback recording could not be sent", session.session)
        return []
