"""`village county serve | user add | user list | audit check` (contract section 6; docs/county-server.md).

Wired into county/cli.py by `add_commands(sub)` and `COMMANDS`; everything heavy (SQLAlchemy, Starlette,
uvicorn, argon2) is imported when a command runs, so `village county push` does not load the server.

Exit codes: 0 done; 1 a runtime failure (the database cannot be opened, the user exists, the audit chain is
broken); 2 the config, the regions file or an option is wrong as given. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import words
from agent.i18n import N_, _

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
ROLES = ("admin", "operator", "reviewer", "viewer", "gridworker")  # auth.ROLES, without importing it here
UNREGISTERED = "unregistered"

log = logging.getLogger("county.server")


class Usage(Exception):
    """Wrong as given: exit 2 with this line."""


class Failure(Exception):
    """Could not be done: exit 1 with this line."""


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help=_("run the county server in the foreground until SIGTERM/SIGINT"))
    p.add_argument("-c", "--config", type=Path, required=True, metavar="FILE", help=_("county.toml"))

    p = sub.add_parser("user", help=_("manage the server's users"))
    usub = p.add_subparsers(dest="user_cmd", required=True)
    a = usub.add_parser("add", help=_("create a user (or change one with --update)"))
    a.add_argument("name", help=_("user name: [A-Za-z0-9_.@-]{1,64}"))
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--scope", metavar="REGION",
                   help=_("a township or village id of the regions file (default: the whole county)"))
    a.add_argument("--password-file", type=Path, required=True, metavar="F",
                   help=_("a file holding the password (one trailing newline is ignored); at least 8 characters"))
    a.add_argument("--display-name", metavar="TEXT", help=_("the name shown, e.g. 李明"))
    a.add_argument("--phone", metavar="TEXT", help=_("a phone number (gridworkers: shown on assigned alarms)"))
    a.add_argument("--update", action="store_true",
                   help=_("change an existing user's role, scope and password (ends their sessions)"))
    a.add_argument("-c", "--config", type=Path, required=True, metavar="FILE", help=_("county.toml"))
    a = usub.add_parser("list", help=_("one line per user: name, role, scope"))
    a.add_argument("-c", "--config", type=Path, required=True, metavar="FILE", help=_("county.toml"))

    p = sub.add_parser("audit", help=_("the audit log"))
    asub = p.add_subparsers(dest="audit_cmd", required=True)
    a = asub.add_parser("check", help=_("verify the audit log's hash chain: exit 0 intact, 1 broken"))
    a.add_argument("-c", "--config", type=Path, required=True, metavar="FILE", help=_("county.toml"))
    a.add_argument("--head", metavar="SEQ:HASH",
                   help=_("a head printed by an earlier check: also fails when rows after it were deleted"))


def _say(cmd: str, text: str) -> None:
    print(f"village county {cmd}: {words.problem(text)}", file=sys.stderr, flush=True)


def _run(cmd: str, fn: Any, args: argparse.Namespace) -> int:
    try:
        return int(fn(args))
    except Usage as exc:
        _say(cmd, str(exc))
        return EXIT_USAGE
    except Failure as exc:
        _say(cmd, str(exc))
        return EXIT_ERROR


def _config(path: Path) -> tuple[Any, Any]:
    """The config and the regions file, or Usage with the one line naming file, key and problem."""
    from county.regions import RegionsError, load_regions
    from county.server.config import ConfigError, load_config

    try:
        config = load_config(path)
        regions = load_regions(config.county.regions)
    except (ConfigError, RegionsError) as exc:
        raise Usage(words.config_error(exc)) from None
    return config, regions


async def _open_db(config: Any, path: Path) -> Any:
    from county.store.db import Database, DatabaseUrlError, SchemaError

    try:
        return await Database.open(config.database.url)
    except DatabaseUrlError as exc:
        raise Usage(N_("{path}: database.url: {exc}", path=path, exc=exc)) from None
    except SchemaError as exc:
        raise Failure(_("database: {error}").format(error=exc)) from None
    except Exception as exc:  # a server that is down, a directory we may not write, ...
        raise Failure(_("database {url}: cannot open: {error}").format(url=_db_display(config.database.url),
                                                                       error=_one_line(exc))) from None


def _db_display(url: str) -> str:
    from agent.protocol.broker import redact_url

    return redact_url(url)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# ------------------------------------------------------------------------------------------- user
def cmd_user(args: argparse.Namespace) -> int:
    return _run(f"user {args.user_cmd}", _user_add if args.user_cmd == "add" else _user_list, args)


def _user_add(args: argparse.Namespace) -> int:
    from county.server import users

    config, regions = _config(args.config)
    try:
        name = users.check_name(args.name)
        scope = users.check_scope(args.scope, regions)
        display = users.check_text("--display-name", args.display_name, 100)
        phone = users.check_text("--phone", args.phone, 32)
        password = users.read_password_file(args.password_file)
    except users.UserError as exc:
        raise Usage(str(exc)) from None

    async def go() -> str:
        db = await _open_db(config, args.config)
        try:
            return await users.add_user(db, name, args.role, scope, password, actor="cli", display_name=display,
                                        phone=phone, update_existing=args.update)
        except users.UserExists:
            raise Failure(_("user {name!r} exists (--update changes its role, scope and password)").format(
                name=name)) from None
        except users.NoSuchUser:
            raise Failure(_("user {name!r} does not exist (leave out --update to create it)").format(
                name=name)) from None
        finally:
            await db.close()

    done = asyncio.run(go())
    where = _("scope {scope}").format(scope=scope) if scope else _("the whole county")
    said = {"added": _("added user {name}: {role}, {where}"), "updated": _("updated user {name}: {role}, {where}")}
    print(said.get(done, f"{done} user {{name}}: {{role}}, {{where}}").format(name=name, role=args.role, where=where))
    return EXIT_OK


def _user_list(args: argparse.Namespace) -> int:
    from county.server import users

    config, _regions = _config(args.config)

    async def go() -> list[Any]:
        db = await _open_db(config, args.config)
        try:
            async with db.connect() as conn:
                return await users.list_users(conn)
        finally:
            await db.close()

    for u in asyncio.run(go()):
        flags = _(" (disabled)") if u.disabled else ""
        print(f"{u.name}\t{u.role}\t{u.scope or '-'}{flags}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------- audit
def cmd_audit(args: argparse.Namespace) -> int:
    return _run("audit check", _audit_check, args)


def _audit_check(args: argparse.Namespace) -> int:
    from county.server import audit

    config, _regions = _config(args.config)
    head = None
    if args.head:
        seq, sep, digest = args.head.partition(":")
        if not sep or not seq.isdigit() or len(digest) != 64:
            raise Usage(_("--head {head!r} is not SEQ:HASH as printed by audit check").format(head=args.head[:80]))
        head = (int(seq), digest.lower())

    async def go() -> Any:
        db = await _open_db(config, args.config)
        try:
            return await audit.verify(db, head)
        finally:
            await db.close()

    report = asyncio.run(go())
    if report.broken is not None:
        where = _("row seq={seq}: {problem}").format(seq=report.broken.seq,
                                                       problem=words.problem(report.broken.problem))
        _say("audit check", _("broken at {where} ({n} row(s) before it intact)").format(where=where, n=report.rows))
        return EXIT_ERROR
    if report.head_seq is None:
        print(_("audit log intact: 0 rows"))
    else:
        print(_("audit log intact: {n} row(s), head {seq}:{hash}").format(n=report.rows, seq=report.head_seq,
                                                                           hash=report.head_hash))
    return EXIT_OK


# ------------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    return _run("serve", _serve_cmd, args)


def _serve_cmd(args: argparse.Namespace) -> int:
    config, regions = _config(args.config)
    signing_key = None
    if config.signing.key is not None:
        from agent.protocol.jws import KeysError, load_private_key

        try:
            signing_key = load_private_key(config.signing.key)
        except KeysError as exc:
            raise Usage(N_("{config}: signing.key: {exc}", config=args.config, exc=exc)) from None
    if config.server.tls_cert is not None:
        _check_tls(config, args.config)
    _setup_logging(config.log.level)
    try:
        return asyncio.run(serve(config, regions, args.config, signing_key=signing_key))
    except SystemExit as exc:  # uvicorn ends a failed startup with sys.exit; its log line says why
        raise Failure(N_("the HTTP server did not start (exit {code}; see the line above)", code=exc.code)) from None


def _check_tls(config: Any, path: Path) -> None:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(config.server.tls_cert), str(config.server.tls_key))
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise Usage(N_("{path}: server.tls_cert: cannot load the certificate with tls_key: {reason}",
                       path=path, reason=reason)) from None
    if config.server.box_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(config.server.box_client_ca))
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
            raise Usage(N_("{path}: server.box_client_ca: cannot load the CA certificate: {reason}",
                           path=path, reason=reason)) from None


def _setup_logging(level: str) -> None:
    from agent.logsetup import setup_logging

    setup_logging(level)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def _ingest(config: Any, db: Any, hub: Any, regions: Any) -> Any:
    """S3's county/ingest.py over the [mqtt] section: the shared subscription and the retained states."""
    from county.ingest import Ingest, IngestConfig

    m = config.mqtt
    password = None
    if m.password_file is not None:
        password = Path(m.password_file).read_text(encoding="utf-8").strip()
    cfg = IngestConfig(urls=list(m.urls), client_id=f"{m.client_id}-{socket.gethostname()}"[:64],
                       prefix=m.topic_prefix, group=m.share_group, ca=m.ca, cert=m.cert, key=m.key,
                       username=m.username, password=password, workers=m.ingest_workers)

    def describe(box: str) -> dict[str, Any]:
        place = regions.place(box)
        return {"name": place.name if place.registered else UNREGISTERED, "village": place.village,
                "township": place.township}

    return Ingest(cfg, db, hub, describe=describe)


def _listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is one clear line (uvicorn would sys.exit)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Failure(N_("cannot listen on {host}:{port}: {strerror}",
                         host=host, port=port, strerror=exc.strerror)) from None
    family, kind, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise Failure(N_("cannot listen on {host}:{port}: {strerror}",
                         host=host, port=port, strerror=exc.strerror)) from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(config: Any) -> Any:
    """uvicorn.Server without its own signal handling (serve() owns SIGTERM/SIGINT for every part)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


async def serve(config: Any, regions: Any, path: Path, *, signing_key: Any = None) -> int:
    """Open the database, start ingest and the HTTP server; on SIGTERM/SIGINT stop them all and return 0.

    Stopping: the HTTP server stops accepting and finishes its requests (up to 5 s), then ingest closes
    (what it received but did not commit stays unacknowledged: the broker sends it again), then the
    publisher, the event hub and the database."""
    import uvicorn

    from county.server.app import create_app
    from county.server.escalation import start_escalation
    from county.server.events import EventHub
    from county.server.publish import Publisher
    from county.store.retention import run as purge_loop

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(_remove_handlers, loop)
        db = await _open_db(config, path)
        stack.push_async_callback(db.close)
        sock = _listen_socket(config.server.host, config.server.port)
        stack.callback(sock.close)
        hub = EventHub()
        stack.callback(hub.close)
        publisher = Publisher.from_config(config.mqtt)
        stack.push_async_callback(publisher.close)
        app = create_app(config, db, hub, publisher, regions=regions)
        app.state.signing_key = signing_key
        ingest = _ingest(config, db, hub, regions)
        stack.push_async_callback(ingest.close)
        await ingest.start()
        escalation = start_escalation(  # alarms unacknowledged past escalate_after_s -> [alarms] webhook
            db, config, regions=regions, hub=hub)
        if escalation is not None:
            stack.push_async_callback(_cancel, escalation)
        keep = config.retention  # old telemetry, position history and quarantine: at start, then hourly
        retention = asyncio.create_task(purge_loop(
            db, stop, telemetry_days=keep.telemetry_days, quarantine_days=keep.quarantine_days,
            batch_rows=keep.batch_rows), name="retention")
        stack.push_async_callback(_cancel, retention)
        from county.server.routes_releases import run as run_rollouts  # waves and halts (county/rollout.py)

        rollouts = asyncio.create_task(run_rollouts(app, stop), name="rollouts")
        stack.push_async_callback(_cancel, rollouts)
        server = _uvicorn_server(uvicorn.Config(
            app, host=config.server.host, port=config.server.port, log_config=None, access_log=False,
            lifespan="off", ssl_certfile=str(config.server.tls_cert) if config.server.tls_cert else None,
            ssl_keyfile=str(config.server.tls_key) if config.server.tls_key else None,
            server_header=False, timeout_graceful_shutdown=5))
        http = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        scheme = "https" if config.server.tls else "http"
        log.info("county server on %s://%s, database %s, broker %s", scheme, config.server.listen, db.url,
                 ", ".join(_db_display(u) for u in config.mqtt.urls))
        stack.push_async_callback(_cancel, http)
        servers, tasks = [server], [http]
        if config.server.box_listen is not None:  # the boxes' port: release downloads, client cert required
            servers.append(_box_server(config, app, stack))
            tasks.append(asyncio.create_task(servers[-1].serve(sockets=[servers[-1].box_sock]), name="box-http"))
            stack.push_async_callback(_cancel, tasks[-1])
            log.info("boxes' downloads on https://%s (client certificates of %s)", config.server.box_listen,
                     config.server.box_client_ca)
        watch = asyncio.create_task(stop.wait(), name="signal")
        stack.push_async_callback(_cancel, watch)
        done, _pending = await asyncio.wait([watch, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for ended in tasks:
            if ended in done:  # it ended by itself: a failure, not a stop (the other one stops on exit)
                exc = ended.exception() if not ended.cancelled() else None
                if exc is not None:
                    raise Failure(N_("the HTTP server failed: {exc}", exc=_one_line(exc))) from exc
                raise Failure(N_("the HTTP server ended by itself"))
        log.info("stopping: signal received")
        hub.close()  # open event streams end now; uvicorn would otherwise wait for them
        for each in servers:
            each.should_exit = True
        # asyncio.wait, never wait_for (it can lose a cancellation: drivers/aio.py); http is cancelled on exit
        done, _ = await asyncio.wait(set(tasks), timeout=30)
        if len(done) < len(tasks):
            log.warning("the HTTP server did not stop within 30 s: cancelled")
    log.info("stopped")
    return EXIT_OK


def _box_server(config: Any, app: Any, stack: contextlib.AsyncExitStack) -> Any:
    """The boxes' listener: routes_releases.box_app() over TLS that requires a client certificate signed by
    `box_client_ca` (uvicorn's ASGI scope does not carry the peer certificate, so the handshake is the check).
    Its socket is `.box_sock`, bound here (a taken port is one line) and closed with the stack."""
    import ssl

    import uvicorn

    from county.server.routes_releases import box_app

    s = config.server
    sock = _listen_socket(s.box_host, s.box_port)
    stack.callback(sock.close)
    server = _uvicorn_server(uvicorn.Config(
        box_app(app), host=s.box_host, port=s.box_port, log_config=None, access_log=False, lifespan="off",
        ssl_certfile=str(s.tls_cert), ssl_keyfile=str(s.tls_key), ssl_ca_certs=str(s.box_client_ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED, server_header=False, timeout_graceful_shutdown=5))
    server.box_sock = sock
    return server


def _remove_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


COMMANDS = {"serve": cmd_serve, "user": cmd_user, "audit": cmd_audit}
