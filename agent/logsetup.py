"""Logging: one line per event on stderr, with a level; journald-friendly.

Under systemd (JOURNAL_STREAM set) each line gets a `<N>` syslog priority prefix so journald records
the level, and no timestamp (journald adds its own). Secrets never reach a log call: URLs go through
agent.config.redact_url, tokens and keys are never formatted.

Untrusted text (anything from the wire: ids, topics, header fields, titles) is escaped where it is logged,
with agent.protocol.text.escape. The formatter escapes every message once more as the last line of defence:
one event is one line, so no text can forge a line ("... INFO agent.broadcast: amplifier relay on"); only a
traceback (exc_info, stack_info) keeps its newlines, indented under journald.
"""

from __future__ import annotations

import logging
import os
import sys

from agent.protocol.text import escape

MAX_MESSAGE_CHARS = 4000
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class SafeFormatter(logging.Formatter):
    """A formatter whose message is always one printable, bounded line (tracebacks are appended as usual)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message, MAX_MESSAGE_CHARS)
        return super().formatMessage(record)


class _JournalFormatter(SafeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n    ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiosqlite", "asyncio", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
