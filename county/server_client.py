"""`village county push|cancel --server URL`: the console as a client of the county server's API.

The server signs (with the county key it holds) and publishes; the console logs in as a user
(`POST /api/v1/session`), sends the broadcast (`POST /api/v1/broadcasts`), and with `--wait` polls
`GET /api/v1/broadcasts/{id}` for the per-box board. Only the standard library (urllib.request, ssl): the
`[county]` extra needs nothing new for the console, and a console machine needs no HTTP library.

The password comes from `--password-file` or $VILLAGE_COUNTY_PASSWORD, never from argv; it is sent only in the
login body and never printed. The session token lives in memory only; the session is ended
(`DELETE /api/v1/session`) when the command is done. Errors are `ServerError` with the HTTP status and the
server's `error`/`detail`/`reason`, so the CLI maps them to its exit codes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent import words
from agent.i18n import N_, _
from agent.protocol.topics import Topics
from county import cap as cap_mod
from county import push
from county.console import BoxRow, ReceiptBoard, print_board

# county.cli (exit codes, its helpers) is imported inside the command functions: it imports this module lazily

PASSWORD_ENV = "VILLAGE_COUNTY_PASSWORD"
TIMEOUT_S = 30.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class ServerError(Exception):
    """An answer that is not a success (or no answer). `status` 0 = the server could not be reached."""

    def __init__(self, status: int, message: str, *, error: str | None = None, reason: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.reason, self.body = status, error, reason, body or {}


def read_password(path: Path | None) -> str:
    """The password from the file or $VILLAGE_COUNTY_PASSWORD; ServerError(0) if neither. The file is read as
    `village county user add --password-file` reads it (its text without one trailing newline), so the file
    that set a password logs in with it."""
    if path is not None:
        try:
            with path.open("rb") as f:
                raw = f.read(64 * 1024)
            text = raw.decode("utf-8")
        except OSError as exc:
            raise ServerError(0, N_("--password-file {path}: cannot read: {strerror}",
                                    path=path, strerror=exc.strerror)) from None
        except UnicodeDecodeError:
            raise ServerError(0, N_("--password-file {path}: not UTF-8 text", path=path)) from None
        password = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
        if not password:
            raise ServerError(0, N_("--password-file {path}: empty", path=path))
        return password
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise ServerError(0, N_("--server needs a password: --password-file F or ${password_env}",
                                password_env=PASSWORD_ENV))
    return password


def _clean(text: str, most: int = 300) -> str:
    """Server text for one console line: no control characters, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:most] + ("..." if len(text) > most else "")


class ServerClient:
    """One logged-in session against the county server at `base` (http:// or https://)."""

    def __init__(self, base: str, *, ca: Path | None = None, timeout: float = TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(base)
        if "@" in parsed.netloc:  # never shown: it may hold a password
            raise ServerError(0, N_("--server URL carries a user or password: give --user and --password-file instead"))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ServerError(0, N_("--server {base!r} is not http://HOST:PORT or https://HOST:PORT",
                                    base=_clean(base)))
        self.base = base.rstrip("/")
        self.display = f"{parsed.scheme}://{parsed.netloc}"
        self.timeout = timeout
        self.token: str | None = None
        self.context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            try:
                self.context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
            except (OSError, ssl.SSLError) as exc:
                raise ServerError(0, N_("--ca {ca}: cannot load the CA certificate: {exc}", ca=ca, exc=exc)) from None
        elif ca is not None:
            raise ServerError(0, N_("--ca is for an https:// --server"))

    # ------------------------------------------------------------------------------------------ http
    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, JSON answer) of a 2xx answer; ServerError otherwise."""
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                return resp.status, _json(resp.read(MAX_ANSWER_BYTES))
        except urllib.error.HTTPError as exc:
            raw = exc.read(MAX_ANSWER_BYTES)
            exc.close()
            answer = _json(raw)
            raise _error(exc.code, answer) from None
        except urllib.error.URLError as exc:
            why = exc.reason
            text = why.strerror or str(why) if isinstance(why, OSError) else str(why)
            raise ServerError(0, N_("cannot reach the county server at {display}: {text}",
                                    display=self.display, text=_clean(str(text)))) from None
        except (TimeoutError, OSError) as exc:
            raise ServerError(0, N_("the county server at {display} did not answer: {exc}",
                                    display=self.display, exc=_clean(str(exc)))) from None

    def login(self, user: str, password: str) -> dict[str, Any]:
        try:
            _status, answer = self.request("POST", "/api/v1/session", {"username": user, "password": password})
        except ServerError as exc:
            if exc.status == 401:
                raise ServerError(401, N_("login as {user!r} at {display} failed: wrong user name or password",
                                          user=user, display=self.display),
                                  error=exc.error) from None
            raise
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            raise ServerError(0, N_("{display} answered the login without a token: is it a county server?",
                                    display=self.display))
        self.token = answer["token"]
        return answer

    def logout(self) -> None:
        if self.token is None:
            return
        try:
            self.request("DELETE", "/api/v1/session")
        except ServerError:
            pass  # the session expires by itself
        finally:
            self.token = None

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.logout()

    # ----------------------------------------------------------------------------------------- calls
    def create_broadcast(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            _status, answer = self.request("POST", "/api/v1/broadcasts", body)
        except ServerError as exc:
            if exc.status == 503 and exc.body.get("id"):  # stored, the broker did not take it
                error = _clean(str(exc.body.get("error") or exc))
                raise ServerError(503, N_("broadcast {id} is {state}: {error}", id=exc.body["id"],
                                          state=exc.body.get("state"), error=error), body=exc.body) from None
            raise
        return _object(answer)

    def broadcast(self, bid: str) -> dict[str, Any]:
        return _object(self.request("GET", f"/api/v1/broadcasts/{urllib.parse.quote(bid, safe='')}")[1])

    def cancel(self, bid: str) -> dict[str, Any]:
        return _object(self.request("POST", f"/api/v1/broadcasts/{urllib.parse.quote(bid, safe='')}/cancel", {})[1])


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _object(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise ServerError(0, N_("the county server's answer is not a JSON object"))
    return answer


def _error(status: int, answer: Any) -> ServerError:
    body = answer if isinstance(answer, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), str) else None
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    code = error or f"HTTP {status}"
    if reason in words.REASONS:  # a reason the console knows: its words (this module only runs in a console)
        code = f"{code}, {words.reason(reason)}"
    # the server's own detail is English (the API's words); the frame around it is the reader's
    text = (N_("the county server answered {status} {code}: {detail}", status=status, code=code, detail=_clean(detail))
            if detail else N_("the county server answered {status} {code}", status=status, code=code))
    return ServerError(status, text, error=error, reason=reason, body=body)


# ------------------------------------------------------------------------------------ the commands
POLL_S = 0.5
NO_ANSWER = "no_answer"


def _iso(ts: int | None, tz: Any) -> str | None:
    """Epoch s -> ISO 8601 with the county's offset (what the server reads back to the same instant)."""
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz).isoformat()


def broadcast_body(args: Any, now: float) -> dict[str, Any]:
    """The POST /api/v1/broadcasts body from push's options, built and checked with the console's own
    builders (county/push.py), so a value the local mode refuses is refused here before anything is sent."""
    from county import cli

    if args.cmd_id:
        raise push.UsageError(N_("--id: the county server names its broadcasts; leave --id out with --server"))
    tz = push.zone(args.tz)
    start = push.parse_time(args.at, now, tz) if args.at else None
    end = push.parse_time(args.until, now, tz) if args.until else None
    body: dict[str, Any] = {"to": list(args.to), "ttl_s": int(args.ttl)}
    if args.cap:
        try:
            plan = cap_mod.plan(cap_mod.parse_cap(cli._read_cap(args.cap)), now)
        except cap_mod.CapError as exc:
            raise cli.ConsoleError(N_("{cap}: {exc}", cap=args.cap, exc=exc)) from None
        if plan.cancels or plan.play is None:
            raise push.UsageError(N_("{cap}: a CAP Update or Cancel names earlier broadcasts by their CAP identifier, "
                                     "the county server by its own id: cancel ID --server, then push",
                                     cap=args.cap))
        data = dict(plan.play)
        if data["end"] is not None and data["end"] <= now and end is None:
            raise cli.ConsoleError(N_("{cap}: the alert expired already (pass --until to broadcast it anyway)",
                                      cap=args.cap))
        overrides = {"class": args.cls, "level": args.level, "title": args.title, "volume": args.volume,
                     "start": start, "end": end}
        data.update({k: v for k, v in overrides.items() if v is not None})
        audio = None
    else:
        audio = push.audio_data(args.audio) if args.audio else None
        text = args.text if args.text is not None else args.spoken
        title = args.title or (args.audio.stem if args.audio and not text else None)
        data = {"class": args.cls or "daily", "level": args.level, "title": title, "text": text,
                "start": start, "end": end, "volume": args.volume}
    checked = push.play_data(cls=data["class"], level=data["level"], title=data["title"], text=data["text"],
                             audio=audio, start=data["start"], end=data["end"], volume=data["volume"])
    cli._check_times(args, checked, now, tz)
    body["class"] = checked["class"]
    for key in ("level", "title", "volume"):
        if checked[key] is not None:
            body[key] = checked[key]
    if checked["text"]:
        body["text"] = checked["text"]
    if audio is not None:
        body["audio_b64"], body["audio_mime"] = audio["b64"], audio["mime"]
    for key in ("start", "end"):
        if checked[key] is not None:
            body[key] = _iso(checked[key], tz)
    if args.force:
        body["force"] = True
    return body


def _translate(exc: ServerError) -> Exception:
    """A ServerError as the console's exit-code exceptions: 422 nobody hears -> 4, 400 / a past time -> 2, else 1."""
    from county import cli

    text = str(exc)
    if exc.status == 422 and exc.reason == "nobody_hears":
        return cli.NobodyHears(text)
    if exc.status == 400 or (exc.status == 422 and exc.reason in ("start_past", "end_past")):
        return push.UsageError(text)
    return cli.ConsoleError(text)


def _session(args: Any) -> ServerClient:
    client = ServerClient(args.server, ca=args.ca)
    client.login(args.user, read_password(args.password_file))
    return client


def cmd_push(args: Any) -> int:
    from county import cli

    body = broadcast_body(args, time.time())
    try:
        with _session(args) as client:
            out = client.create_broadcast(body)
            bid, state = str(out.get("id")), str(out.get("state"))
            boxes = [str(b) for b in out.get("boxes") or []]
            _announce(args, {"id": bid, "state": state, "boxes": boxes},
                      f"broadcast {bid} {state}: {len(boxes)} box(es): {cli._names(boxes)}")
            if args.wait <= 0:
                return cli.EXIT_OK
            return _wait(args, client, bid)
    except ServerError as exc:
        raise _translate(exc) from None


def cmd_cancel(args: Any) -> int:
    from county import cli

    if args.all:
        raise push.UsageError(N_("--all is not for --server: the county server cancels one broadcast by its id"))
    try:
        with _session(args) as client:
            out = client.cancel(args.broadcast)
            line = f"broadcast {out.get('id')} {out.get('state')}"
            if out.get("cancel_id"):
                line += f" (broadcast.cancel {out['cancel_id']} published)"
            _announce(args, out, line)
            if args.wait <= 0:
                return cli.EXIT_OK
            return _wait(args, client, args.broadcast)
    except ServerError as exc:
        raise _translate(exc) from None


def _announce(args: Any, doc: dict[str, Any], line: str) -> None:
    """The id and state: stdout (a JSON line with --json), or stderr with --wait (stdout carries the rows)."""
    from county import cli

    if args.wait > 0:
        cli._say(args, line)
    elif args.json:
        print(json.dumps(doc, ensure_ascii=False), flush=True)
    else:
        print(line, flush=True)


def _fill(board: Any, doc: dict[str, Any]) -> list[Any]:
    """Put the server's receipt rows on the board; the rows that changed."""
    changed = []
    for item in doc.get("receipts") or []:
        if not isinstance(item, dict) or not isinstance(item.get("box"), str):
            continue
        state = str(item.get("state"))
        answered = state != NO_ANSWER
        row = BoxRow(item["box"], state if answered else "no answer", item.get("reason"),
                     item.get("ts") if isinstance(item.get("ts"), int) else None, answered=answered)
        before = board.rows.get(row.box)
        if before is None or (before.state, before.reason, before.answered) != (row.state, row.reason, row.answered):
            changed.append(row)
        board.rows[row.box] = row
    return changed


def _wait(args: Any, client: ServerClient, bid: str) -> int:
    """Poll GET /api/v1/broadcasts/{id} for up to --wait seconds (ends early when every box is final) and print
    the per-box table of the local mode."""
    from county import cli

    tz = push.zone(args.tz)
    board = ReceiptBoard(bid, list(getattr(args, "to", None) or []), Topics())
    deadline = time.monotonic() + args.wait
    doc = client.broadcast(bid)
    _fill(board, doc)
    cli.say_waiting(args, board)
    while not board.all_final:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(POLL_S, left))
        doc = client.broadcast(bid)
        for row in _fill(board, doc):
            cli.say_progress(args, board, row, max(0.0, deadline - time.monotonic()))
    if board.all_final:
        cli.say_all_final(args, board)
    elif doc.get("state") == "awaiting_review":
        cli._say(args, _("broadcast {id} is still awaiting_review (a reviewer approves it)").format(id=bid))
    print_board(board, sys.stdout, as_json=args.json, tz=tz)
    return cli.EXIT_OK if board.all_good and board.rows else cli.EXIT_UNANSWERED
