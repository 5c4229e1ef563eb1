"""Strip credentials from URLs and from child-process output before anything is logged or sent.

Cameras' URLs are configured without credentials, but ffmpeg is handed `rtsp://user:pass@...` and
echoes it in its errors, and an operator may paste a URL with userinfo anywhere. Everything that
leaves the camera drivers as text goes through `redact_text` with the secrets in play.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

MASK = "***"

# scheme://userinfo@  (userinfo up to the first '@' that precedes the host; no '/' inside)
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")
_AUTH_HEADER_RE = re.compile(r"(?i)((?:proxy-)?authorization:\s*)(basic|digest)\s+[^\r\n]*")
# a Basic token without its header name (e.g. quoted in an error): base64 of "user:password"
# (not a challenge's `Basic realm="..."`, not one already masked)
_BASIC_TOKEN_RE = re.compile(r"(?i)\b(basic)\s+(?!(?:realm|charset)\s*=)(?!\*\*\*)[A-Za-z0-9+/]{4,}={0,2}")


def redact_url(url: str) -> str:
    """`rtsp://admin:pw@host/p` -> `rtsp://***@host/p`. Strings without userinfo come back unchanged."""
    return _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{MASK}@", url)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Redact URL userinfo, (Proxy-)Authorization values, bare Basic tokens and every given secret (raw and
    percent-encoded)."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _AUTH_HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)} {MASK}", text)
    text = _BASIC_TOKEN_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    return text


def with_userinfo(url: str, user: str, password: str) -> str:
    """The URL with percent-encoded credentials, for a child process that has no other way to get them."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL")
    rest = rest.split("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"
