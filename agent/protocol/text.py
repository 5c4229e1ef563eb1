"""Untrusted text, made safe for a log line, a receipt, an envelope or a store.

Text from the wire (a JWS header's field names, a command id, a broadcast title, a topic) may hold a
newline (a forged log line: "... INFO agent.broadcast: amplifier relay on"), other control characters,
bidi overrides, or lone surrogates (`"\\ud800"` in JSON decodes to a str that cannot be encoded as UTF-8,
so it crashes whatever writes it: a log handler, SQLite, `Envelope.encode`). Three helpers, one job each:

- `escape(text, limit)`: one printable line, for a log line or a receipt `detail`. Every character that
  is not printable (`str.isprintable`: control characters, line and paragraph separators, format
  characters such as bidi overrides, surrogates, unassigned code points) becomes its Python escape
  (`\\n`, `\\x1b`, `\\u202e`, `\\ud800`); text longer than `limit` is cut and says how much was cut.
  Idempotent: escaping escaped text changes nothing (a backslash is left as it is, so a detail built from
  `quoted()` parts stays readable).
- `quoted(text, limit)`: a value inside a sentence, repr-style: quotes, and the backslash and the quote
  escaped too, so a value can never end the quotes or fake an escape.
- `scrub(text)`: text that is kept or spoken (a title, a TTS text): lone surrogates become U+FFFD, the rest
  is untouched. The result always encodes as UTF-8.
"""

from __future__ import annotations

import re

DEFAULT_LIMIT = 200
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _cut(text: str, limit: int) -> tuple[str, str]:
    if len(text) <= limit:
        return text, ""
    return text[:limit], f"...[{len(text) - limit} more chars]"


def escape(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """`text` (anything; not a str: its str()) as one bounded printable line. Never raises."""
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception as exc:  # a hostile __str__ must not break a log line
            text = f"<unprintable {type(text).__name__}: {type(exc).__name__}>"
    body, more = _cut(text, limit)
    if body.isprintable():
        return body + more
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in body) + more


def quoted(text: object, limit: int = 64) -> str:
    """`text` as a quoted, escaped, bounded value: `'abc\\n'`. Never raises."""
    if not isinstance(text, str):
        text = escape(text, limit)
    body, more = _cut(text, limit)
    out = []
    for ch in body:
        if ch == "\\" or ch == "'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(_escape_char(ch))
    return "'" + "".join(out) + "'" + more


def scrub(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD: safe to store, send or speak."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def scrub_json(value: object, depth: int = 0) -> object:
    """A JSON-able copy of `value` that always encodes: strings (keys too) scrubbed, keys made strings,
    anything JSON cannot hold (and anything nested deeper than 64) shown as an escaped description."""
    if depth > 64:
        return "<nested too deeply>"
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else escape(k, 64): scrub_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_json(v, depth + 1) for v in value]
    return f"<{type(value).__name__}: {escape(value, 64)}>"
