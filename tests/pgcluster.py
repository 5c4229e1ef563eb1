"""A private PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir, no system service.

    cluster = PgCluster.create()          # initdb; raises PgMissing when no PostgreSQL binaries are found
    cluster.start()                       # a free 127.0.0.1 port + a unix socket in the temp dir
    url = cluster.create_database("t1")   # postgresql://county@127.0.0.1:PORT/t1
    cluster.stop()                        # stops the server and removes the temp dir

Binaries: $VILLAGE_PG_BINDIR, else the directory `pg_ctl` on PATH resolves to, else the newest
/usr/lib/postgresql/NN/bin (Debian's `postgresql` package puts them there, off PATH; ./scripts/test
installs it). Speed over durability: fsync, synchronous_commit and full_page_writes are off (the
cluster is thrown away), authentication is `trust` for the superuser `county`, on loopback and the
socket only.

As root: PostgreSQL refuses to run as root, so initdb/pg_ctl/postgres run as the unprivileged user
`postgres` (which Debian's package creates) or, failing that, `nobody`, via subprocess's user=/group=
(no sudo, no su needed); the temp dir is made under /tmp and handed to that user. As a normal user they
simply run as you. The test process connects as database user `county` either way.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPERUSER = "county"


class PgMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    env = os.environ.get("VILLAGE_PG_BINDIR")
    if env:
        d = Path(env)
        if not (d / "pg_ctl").is_file():
            raise PgMissing(f"VILLAGE_PG_BINDIR={env} has no pg_ctl")
        return d
    on_path = shutil.which("pg_ctl")
    if on_path:
        d = Path(on_path).resolve().parent
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    if found:
        return Path(found[-1]).parent
    raise PgMissing("PostgreSQL server binaries not found (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin; "
                    "apt-get install postgresql, or set VILLAGE_PG_BINDIR)")


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise PgMissing("running as root and neither user 'postgres' nor 'nobody' exists to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    bindir: Path
    base: Path
    owner: tuple[int, int] | None
    port: int = 0

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    @classmethod
    def create(cls) -> PgCluster:
        bindir = find_bindir()
        owner = _run_as()
        # as root: under /tmp (world-traversable) whatever TMPDIR says, so the server's user can reach it
        base = Path(tempfile.mkdtemp(prefix="village-pg-", dir="/tmp" if owner else None))
        c = cls(bindir, base, owner)
        try:
            c.sockdir.mkdir()
            if owner:
                for p in (base, c.sockdir):
                    os.chown(p, *owner)
            c._pg("initdb", "-D", str(c.data), "-U", SUPERUSER, "--auth=trust", "--no-locale", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        return c

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.owner:
            kw = {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        p = subprocess.run([str(self.bindir / tool), *args], cwd=self.base, env=env, capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL, **kw)
        if check and p.returncode != 0:
            raise RuntimeError(f"{tool} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}"
                               f"{self._log_tail()}")
        return p

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return ""
        return "\n--- postgres.log ---\n" + "\n".join(lines) if lines else ""

    def start(self, attempts: int = 5) -> PgCluster:
        """Start on a free port (a new one if another process took it meanwhile); waits until it accepts."""
        for _ in range(attempts):
            self.port = _free_port()
            conf = (f"port = {self.port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.sockdir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 200\nshared_buffers = 32MB\n")
            (self.data / "postgresql.auto.conf").write_text(conf)
            p = self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start",
                         check=False)
            if p.returncode == 0:
                return self
            if "could not bind" not in self.logfile.read_text(errors="replace"):
                raise RuntimeError(f"pg_ctl start failed: {p.stderr.strip()}{self._log_tail()}")
        raise RuntimeError(f"pg_ctl start: no free port after {attempts} attempts{self._log_tail()}")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """The TCP form: postgresql://county@127.0.0.1:PORT/DBNAME."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def socket_url(self, dbname: str = "postgres") -> str:
        """The unix-socket form: postgresql:///DBNAME?host=SOCKDIR&port=PORT&user=county."""
        return f"postgresql:///{dbname}?host={self.sockdir}&port={self.port}&user={SUPERUSER}"

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(host=str(self.sockdir), port=self.port, user=SUPERUSER, dbname="postgres",
                               autocommit=True)

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lower case letters, digits, _")
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
