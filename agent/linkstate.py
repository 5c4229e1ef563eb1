"""`state_dir/link.json`: what the link is doing, for `village agent status` to read without IPC.

Written atomically (tmp + rename, no fsync: agent.fsutil.write_atomic durable=False) on every state edge,
and for the last-publish time at most once a minute, so a busy link costs the SD card almost nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agent.fsutil import write_atomic

log = logging.getLogger("agent.link")

PUBLISH_WRITE_EVERY_S = 60.0


class LinkStateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self._last_publish_write = float("-inf")

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self._write()

    def published(self, now: float) -> None:
        self.data["last_publish_ts"] = now
        # `now` is wall time (it is what gets written); a clock stepped back must not freeze the file
        if now - self._last_publish_write >= PUBLISH_WRITE_EVERY_S or now < self._last_publish_write:
            self._last_publish_write = now
            self._write()

    def _write(self) -> None:
        try:
            # durable=False: a status file for `village agent status`, rewritten on every link edge; fsyncs
            # would wear the SD card, and after a power cut the previous content (or none) is fine
            write_atomic(self.path, json.dumps(self.data, sort_keys=True).encode(), durable=False)
        except OSError as exc:  # a full disk must not take the link down
            log.warning("link: cannot write %s: %s", self.path, exc)

    @staticmethod
    def read(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
