"""HTTPS downloads of release files: the box's client certificate, Range resume, a bandwidth cap.

Blocking code, run in a worker thread (asyncio.to_thread) with a stop Event the service sets on shutdown.
Written over http.client rather than urllib on purpose: no redirects are ever followed (the client
certificate goes to the configured release server and nowhere else), and the Range/206 handling is explicit.

Every file is verified before it is used: its size and sha256 against the signed manifest (the manifest
itself against the hash the signed command named). A file that does not match is deleted, never kept.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CHUNK = 16 * 1024
TIMEOUT_S = 30.0


class FetchError(Exception):
    """`reason` is the receipt word: hash_mismatch, disk_full, download_failed, stopped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class RateLimit:
    """A token bucket shared by every download of one update (bytes per second, a 1 s burst)."""

    def __init__(self, bytes_per_s: int) -> None:
        self.rate = float(bytes_per_s)
        self._tokens = self.rate
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int, stop: threading.Event) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= n or self._tokens >= self.rate:
                    self._tokens -= n
                    return
                wait = (n - self._tokens) / self.rate
            if stop.wait(min(wait, 0.5)):
                raise FetchError("stopped", "the agent is stopping")


@dataclass
class Stats:
    bytes: int = 0  # body bytes received over the network (what a 4G plan pays for)
    requests: int = 0


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _connect(url: str, ctx: ssl.SSLContext) -> tuple[http.client.HTTPSConnection, str]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise FetchError("download_failed", "only https:// URLs are fetched")
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=TIMEOUT_S)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return conn, path


def fetch_bytes(url: str, ctx: ssl.SSLContext, limit: int, stats: Stats) -> bytes:
    """A small file (the manifest) into memory, at most `limit` bytes."""
    conn, path = _connect(url, ctx)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        stats.requests += 1
        if resp.status != 200:
            raise FetchError("download_failed", f"GET {path}: HTTP {resp.status}")
        data = resp.read(limit + 1)
        stats.bytes += len(data)
        if len(data) > limit:
            raise FetchError("download_failed", f"{path} is larger than {limit} bytes")
        return data
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError("download_failed", f"GET {path}: {exc}") from None
    finally:
        conn.close()


def fetch_file(url: str, dest: Path, *, size: int, sha256: str, ctx: ssl.SSLContext, rate: RateLimit,
               stop: threading.Event, stats: Stats) -> None:
    """Download `url` to `dest` (via dest.part, resumed if present), verified; dest appears only when whole."""
    part = dest.with_name(dest.name + ".part")
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        have = 0
    if have > size:
        part.unlink()
        have = 0
    try:
        if have < size:
            try:
                _download(url, part, have, size, ctx, rate, stop, stats)
            except FetchError as exc:
                if exc.reason == "hash_mismatch":
                    part.unlink(missing_ok=True)
                raise
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise FetchError("hash_mismatch", f"{dest.name}: sha256 {digest.hexdigest()[:16]}... is not the "
                             f"manifest's {sha256[:16]}...")
        os.replace(part, dest)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            part.unlink(missing_ok=True)
            raise FetchError("disk_full", f"no space left for {dest.name} ({exc.strerror})") from None
        raise FetchError("download_failed", f"{dest.name}: {exc.strerror or exc}") from None


def _download(url: str, part: Path, have: int, size: int, ctx: ssl.SSLContext, rate: RateLimit,
              stop: threading.Event, stats: Stats) -> None:
    conn, path = _connect(url, ctx)
    try:
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError("download_failed", f"GET {path}: {exc}") from None
        stats.requests += 1
        if have and resp.status == 200:
            have = 0  # the server ignored the Range: start over
        elif resp.status not in (200, 206):
            raise FetchError("download_failed", f"GET {path}: HTTP {resp.status}")
        elif resp.status == 206 and not (resp.getheader("Content-Range") or "").startswith(f"bytes {have}-"):
            raise FetchError("download_failed", f"GET {path}: a 206 for another range")
        with open(part, "r+b" if have else "wb") as f:
            f.seek(have)
            f.truncate()
            got = have
            while got < size:
                if stop.is_set():
                    raise FetchError("stopped", "the agent is stopping")
                rate.take(min(CHUNK, size - got), stop)
                try:
                    chunk = resp.read(min(CHUNK, size - got))
                except (OSError, http.client.HTTPException) as exc:
                    raise FetchError("download_failed", f"GET {path}: {exc}") from None
                if not chunk:
                    break
                stats.bytes += len(chunk)
                f.write(chunk)
                got += len(chunk)
            if got < size:
                f.flush()
                raise FetchError("download_failed", f"GET {path}: connection closed at {got} of {size} bytes "
                                 "(resumed next time)")
            if resp.read(1):
                raise FetchError("hash_mismatch", f"{path} is longer than the manifest's {size} bytes")
            f.flush()
            os.fsync(f.fileno())
    finally:
        conn.close()
