"""Broker URLs (`mqtt://[user:pass@]host[:port]`, `mqtts://...`): parsed and redacted in one place, so the
agent's config, its link and the county console read a URL the same way (percent-decoded credentials)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


def redact_url(url: str) -> str:
    """`scheme://user:secret@host` -> `scheme://user:***@host`; anything else unchanged."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    user = parts.username or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{parts.hostname or ''}" if parts.password is not None else f"{user}@{parts.hostname}"
    if port:
        netloc += f":{port}"
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    display: str  # redacted: safe to log
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = field(repr=False)


def parse_broker_url(url: str) -> BrokerUrl:
    """Raise ValueError with a message that never contains the password."""
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{shown!r}: scheme must be mqtt:// or mqtts://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown!r}: bad port") from None
    if not parts.hostname:
        raise ValueError(f"{shown!r}: no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{shown!r}: bad port")
    if parts.path not in ("", "/"):
        raise ValueError(f"{shown!r}: a broker URL has no path")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(
        display=shown, host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
