"""The county server's configuration: one TOML file (`county.toml`, contract section 6), validated once.

Defaults live here and only here; call sites read attributes. Unknown keys are errors. A file that cannot
be used raises `ConfigError`, whose `str()` is the one line `village county serve` prints before exit 2:
`county.toml: server.listen: ... problem`.

Paths (certificates, keys, the regions file, the MQTT password file) are taken relative to the directory
of the config file when they are not absolute, so a unit file's working directory does not matter.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.config import readable_file
from agent.i18n import N_
from agent.protocol.broker import parse_broker_url, redact_url
from agent.protocol.topics import BOX_ID_RE, DEFAULT_PREFIX
from agent.schema import SchemaError, at_least_one, build, dump, positive, read_toml

DEFAULT_DB_URL = "sqlite:////var/lib/village-county/county.db"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_TZ = "Asia/Shanghai"


class ConfigError(Exception):
    """A config file that cannot be used. `str()` is the one line an operator sees."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(N_("{file}: {key}: {problem}", file=self.file, key=key, problem=problem) if key
                         else N_("{file}: {problem}", file=self.file, problem=problem))


# ------------------------------------------------------------------------------------------- checks
def split_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError with the reason otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(N_("{value!r} is not host:port (e.g. {default_listen})",
                            value=value, default_listen=DEFAULT_LISTEN))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(N_("{value!r}: an IPv6 address goes in brackets, [::1]:8080", value=value))
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(N_("{value!r}: port must be 1..65535", value=value))
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(N_("{value!r}: not a host name or address", value=value))
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _listen(value: str) -> str:
    split_listen(value)
    return value


def _db_url(value: str) -> str:
    scheme = value.partition("://")[0].lower()
    backend = scheme.partition("+")[0]
    if backend == "sqlite":
        path = value.partition("://")[2]
        if not path.startswith("/") or path in ("/", "/:memory:") or scheme not in ("sqlite", "sqlite+aiosqlite"):
            raise ValueError(N_("sqlite:///PATH (three slashes, then the path; an absolute path starts with a fourth: "
                                "{default_db_url})",
                                default_db_url=DEFAULT_DB_URL))
        return value
    if backend not in ("postgresql", "postgres"):
        raise ValueError(N_("{value!r} is not sqlite:///PATH or postgresql://...", value=redact_url(value)))
    from county.store.db import DatabaseUrlError, async_url  # what Database.open will make of it

    try:
        async_url(value)
    except DatabaseUrlError as exc:
        raise ValueError(str(exc).replace(value, redact_url(value))) from None
    return value


def _broker_urls(value: str | tuple[str, ...]) -> tuple[str, ...]:
    urls = (value,) if isinstance(value, str) else value
    if not urls:
        raise ValueError(N_("needs at least one broker URL"))
    for u in urls:
        parse_broker_url(u)
    return tuple(urls)


def _prefix(value: str) -> str:
    if not value or any(c in value for c in "+#\x00") or value.startswith("/") or value.endswith("/"):
        raise ValueError(N_("{value!r} is not a topic prefix (no + # or leading/trailing /)", value=value))
    return value


def _client_id(value: str) -> str:
    if not BOX_ID_RE.match(value):
        raise ValueError(N_("{value!r} is not [A-Za-z0-9_-]{{1,64}}", value=value))
    return value


def _workers(value: int) -> int:
    if not 1 <= value <= 64:
        raise ValueError(N_("must be 1..64 processes, got {value}", value=value))
    return value


def _kid(value: str) -> str:
    if not BOX_ID_RE.match(value):
        raise ValueError(N_("{value!r} is not [A-Za-z0-9_-]{{1,64}} (the id the boxes know the key under)",
                            value=value))
    return value


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(N_("{value!r} is not an IANA time zone (e.g. {default_tz})",
                            value=value, default_tz=DEFAULT_TZ)) from None
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(N_("{value!r} is not an http:// or https:// URL", value=redact_url(value)))
    return value


# ------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = field(default=DEFAULT_LISTEN, metadata={"check": _listen})
    tls_cert: Path | None = field(default=None, metadata={"check": readable_file})
    tls_key: Path | None = field(default=None, metadata={"check": readable_file})
    # plain HTTP on an address other than loopback: only when said so (passwords and tokens cross in clear)
    allow_plain_http: bool = False
    session_hours: float = field(default=12.0, metadata={"check": positive})
    login_max_failures: int = field(default=5, metadata={"check": at_least_one})
    login_window_s: float = field(default=300.0, metadata={"check": positive})
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={"check": at_least_one})
    # the boxes' listener (release downloads, docs/updates.md): TLS that requires a certificate signed by
    # box_client_ca; unset = no second port
    box_listen: str | None = field(default=None, metadata={"check": _listen})
    box_client_ca: Path | None = field(default=None, metadata={"check": readable_file})

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SchemaError("tls_cert" if self.tls_cert is None else "tls_key",
                              N_("tls_cert and tls_key go together"))
        if self.box_listen is None and self.box_client_ca is not None:
            raise SchemaError("box_listen", N_("box_client_ca is set but box_listen is not: give the boxes' "
                                            "host:port (or leave both out)"))
        if self.box_listen is not None:
            if self.box_client_ca is None:
                raise SchemaError("box_client_ca", N_("box_listen needs box_client_ca: the CA that signs the "
                                                   "boxes' certificates"))
            if self.tls_cert is None:
                raise SchemaError("box_listen", N_("box_listen needs tls_cert and tls_key: the boxes' port is "
                                                "always TLS"))
            if split_listen(self.box_listen) == split_listen(self.listen):
                raise SchemaError("box_listen", N_("{box_listen!r} is the browser's listen address: the boxes need a "
                                                   "port of their own",
                                                   box_listen=self.box_listen))
        if not self.tls and not self.allow_plain_http and not is_loopback(self.host):
            raise SchemaError("listen", N_("{listen!r} is not a loopback address: give tls_cert and tls_key (or "
                                           "allow_plain_http = true behind a TLS proxy)",
                                           listen=self.listen))

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def box_host(self) -> str | None:
        return None if self.box_listen is None else split_listen(self.box_listen)[0]

    @property
    def box_port(self) -> int | None:
        return None if self.box_listen is None else split_listen(self.box_listen)[1]


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = field(default=DEFAULT_DB_URL, metadata={"check": _db_url, "redact": redact_url})


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str | tuple[str, ...] = field(
        default=("mqtt://127.0.0.1:1883",),
        metadata={"check": _broker_urls, "redact": lambda urls: tuple(redact_url(u) for u in urls)},
    )
    ca: Path | None = field(default=None, metadata={"check": readable_file})
    cert: Path | None = field(default=None, metadata={"check": readable_file})
    key: Path | None = field(default=None, metadata={"check": readable_file})
    username: str | None = None
    password_file: Path | None = field(default=None, metadata={"check": readable_file})
    topic_prefix: str = field(default=DEFAULT_PREFIX, metadata={"check": _prefix})
    client_id: str = field(default="village-county", metadata={"check": _client_id})
    # the shared subscription's group: every instance of one county uses the same name
    share_group: str = field(default="village-county", metadata={"check": _client_id})
    # ingest processes of the shared subscription on this host, the server's own included (county/ingest.py
    # Workers): more than 1 only where a core is free for each
    ingest_workers: int = field(default=1, metadata={"check": _workers})

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise SchemaError("cert" if self.cert is None else "key", N_("cert and key go together (mutual TLS)"))
        if (self.ca or self.cert) and not any(u.startswith("mqtts://") for u in self.urls):
            raise SchemaError("ca" if self.ca else "cert", N_("ca/cert/key need an mqtts:// broker URL"))

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,) if isinstance(self.url, str) else self.url


@dataclass(frozen=True, slots=True)
class SigningConfig:
    key: Path | None = field(default=None, metadata={"check": readable_file})
    kid: str | None = field(default=None, metadata={"check": _kid})

    def __post_init__(self) -> None:
        if (self.key is None) != (self.kid is None):
            raise SchemaError("kid" if self.kid is None else "key", N_("key and kid go together"))


@dataclass(frozen=True, slots=True)
class CountySection:
    timezone: str = field(default=DEFAULT_TZ, metadata={"check": _timezone})
    regions: Path | None = field(default=None, metadata={"check": readable_file})


@dataclass(frozen=True, slots=True)
class AlarmsConfig:
    escalate_after_s: float = field(default=300.0, metadata={"check": positive})
    webhook: str | None = field(default=None, metadata={"check": _http_url, "redact": redact_url})
    webhook_timeout_s: float = field(default=10.0, metadata={"check": positive})
    webhook_retries: int = field(default=5, metadata={"check": at_least_one})


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    telemetry_days: float = field(default=90.0, metadata={"check": positive})
    quarantine_days: float = field(default=90.0, metadata={"check": positive})
    batch_rows: int = field(default=5000, metadata={"check": at_least_one})


@dataclass(frozen=True, slots=True)
class ReviewConfig:
    daily: bool = False   # a daily broadcast waits for a reviewer's approval before it is signed
    drill: bool = False   # the same for drills; emergencies are never held


MAP_TILES = ("none", "tianditu", "amap", "custom")
_TILE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _tile_key(value: str) -> str:
    if not _TILE_KEY_RE.fullmatch(value):
        raise ValueError(N_("a tile key is 1-128 characters of A-Z a-z 0-9 _ - (the 天地图 console's 浏览器端 key)"))
    return value


def _tile_url(value: str) -> str:
    parts = urlsplit(value.replace("{s}", "a"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(N_("{value!r} is not an http:// or https:// URL template", value=redact_url(value)))
    missing = [p for p in ("{z}", "{x}", "{y}") if p not in value]
    if missing:
        raise ValueError(N_("the URL template lacks {missing} (e.g. https://tiles.example/{{z}}/{{x}}/{{y}}.png)",
                            missing=", ".join(missing)))
    if parts.username or parts.password:
        raise ValueError(N_("no user:password in the tile URL: the browser is given it"))
    return value


def _zoom(value: int) -> int:
    if not 1 <= value <= 22:
        raise ValueError(N_("a zoom level is 1..22"))
    return value


@dataclass(frozen=True, slots=True)
class MapConfig:
    """The web console's map (docs/county-server.md [map]). Everything here is sent to the browser, which
    fetches the tiles itself: the 天地图 key included (it is a browser-side key, bound to the server's
    domain in the 天地图 console); nothing else secret belongs here."""

    # none: no tiles, a plain background with the county's outline and points (an intranet without internet)
    tiles: Literal["none", "tianditu", "amap", "custom"] = "none"
    key: str | None = field(default=None, metadata={"check": _tile_key, "secret": True})  # 天地图 tk (masked in dumps)
    url: str | None = field(default=None, metadata={"check": _tile_url})  # custom: a {z}/{x}/{y} template
    crs: Literal["WGS84", "GCJ02"] = "WGS84"  # custom: the datum the tiles are drawn in
    subdomains: str = ""  # custom: the letters a {s} in the URL takes, e.g. "abc"
    attribution: str = ""
    max_zoom: int = field(default=18, metadata={"check": _zoom})
    # the county's boundary: a GeoJSON file (Polygon/MultiPolygon Features, WGS-84), drawn on every map
    outline: Path | None = field(default=None, metadata={"check": readable_file})

    def __post_init__(self) -> None:
        if self.tiles == "tianditu" and self.key is None:
            raise SchemaError("key", N_("tiles = \"tianditu\" needs key (the 天地图 browser key)"))
        if self.tiles == "custom" and self.url is None:
            raise SchemaError("url", N_("tiles = \"custom\" needs url (e.g. https://tiles.example/{z}/{x}/{y}.png)"))
        if self.url is not None and self.tiles != "custom":
            raise SchemaError("url", N_("url is for tiles = \"custom\""))
        if "{s}" in (self.url or "") and not self.subdomains:
            raise SchemaError("subdomains", N_("the URL has {s}: give the letters it takes (subdomains = \"abc\")"))
        if self.crs != "WGS84" and self.tiles != "custom":
            raise SchemaError("crs", N_("crs is for tiles = \"custom\" (天地图 is WGS-84, 高德 GCJ-02)"))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class CountyConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
    county: CountySection = field(default_factory=CountySection)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    log: LogConfig = field(default_factory=LogConfig)
    map: MapConfig = field(default_factory=MapConfig)


# keys holding a path, resolved against the config file's directory when relative
_PATH_KEYS = {"server": ("tls_cert", "tls_key", "box_client_ca"), "mqtt": ("ca", "cert", "key", "password_file"),
              "signing": ("key",), "county": ("regions",),
              "map": ("outline",)}


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(raw)
    for section, keys in _PATH_KEYS.items():
        table = out.get(section)
        if not isinstance(table, dict):
            continue
        table = dict(table)
        for key in keys:
            value = table.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                table[key] = str(base / value)
        out[section] = table
    return out


def parse_config(raw: dict[str, Any], source: Path | str = "<config>", base: Path | None = None) -> CountyConfig:
    if base is not None:
        raw = _resolve_paths(raw, base)
    try:
        return build(CountyConfig, raw)
    except SchemaError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None


def load_config(path: Path | str) -> CountyConfig:
    path = Path(path)
    try:
        raw = read_toml(path)
    except SchemaError as exc:
        raise ConfigError(path, exc.key, exc.problem) from None
    return parse_config(raw, path, base=path.parent.absolute())


def masked(config: CountyConfig) -> dict[str, Any]:
    """The resolved config as plain data with secrets masked (URL passwords)."""
    data: dict[str, Any] = dump(config, mask=True)
    return data
