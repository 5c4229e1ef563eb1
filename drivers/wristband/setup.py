"""Writing a wired gateway's setup commands at every connect, and checking its replies.

A `SetupScript` is what a box model's gateway needs after power-up (the hardware profile's
`[gateway_firmware]`: AT lines, or raw bytes), already turned into bytes by the caller. `GatewayReader`
runs one `SetupSession` per successful open, as a task beside its read loop, so frames keep flowing while
the gateway answers (an SOS during setup is read and acked as usual):

- each command is written in order; with `expect` set, the session waits up to `reply_timeout_s` for a
  reply line: one starting with `expect` accepts it, one starting with `ERROR` (also `+CME ERROR`,
  `+CMS ERROR`) or `FAIL` refuses it, anything else (an echo, a band frame, noise) is not a reply;
- a refused or unanswered command is recorded and the next one is still written (they are independent
  settings), so one result lists every command that did not take;
- a link that drops during setup ends the session without a result; the next open writes it all again.

Reply lines are the gateway's bytes split at CR / LF, as AT devices frame result codes (`\\r\\nOK\\r\\n`).
The bytes also reach the codec unchanged, which skips them as it skips any noise between frames. A reply
goes into the result escaped (`\\xNN` for anything not printable ASCII) and cut to REPLY_CHARS: it is the
device's text, and it ends up in log lines and an uplink event.

No agent import (drivers/ never imports agent/); asyncio only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from drivers.aio import wait_within

REPLY_CHARS = 80
LINE_BUFFER = 1024  # a longer run without CR/LF is no reply line (e.g. watch frames, which have none)
ERROR_REPLIES = (b"ERROR", b"+CME ERROR", b"+CMS ERROR", b"FAIL")
_LINE_END = re.compile(rb"[\r\n]")

Outcome = Literal["ok", "sent", "error", "timeout"]


@dataclass(frozen=True, slots=True)
class SetupScript:
    """`commands`: (label, bytes to write) in order; the label (the profile entry) names it in reports."""

    commands: tuple[tuple[str, bytes], ...]
    expect: str = "OK"  # "" = write everything without waiting for replies
    reply_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.reply_timeout_s < 0:
            raise ValueError("reply_timeout_s must be >= 0")


@dataclass(frozen=True, slots=True)
class CommandResult:
    index: int
    command: str  # the label from the script
    outcome: Outcome  # ok: accepted; sent: written, no reply expected; error: refused; timeout: no reply
    reply: str | None = None  # the reply line, escaped and bounded (None: none came)

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "sent")


@dataclass(frozen=True, slots=True)
class SetupResult:
    results: tuple[CommandResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> tuple[CommandResult, ...]:
        return tuple(r for r in self.results if not r.ok)


def printable_reply(line: bytes, limit: int = REPLY_CHARS) -> str:
    """The device's reply as one bounded printable ASCII string (never raises)."""
    text = "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x5C else f"\\x{b:02x}" for b in line[:limit])
    return text + (f"...[{len(line) - limit} more bytes]" if len(line) > limit else "")


class SetupSession:
    """One pass of a script over an open link: `run()` writes and waits; the reader `feed()`s what it reads."""

    def __init__(self, script: SetupScript, write: Callable[[bytes], Awaitable[None]]) -> None:
        self.script = script
        self._write = write
        self._buffer = bytearray()
        self._waiting: asyncio.Future[tuple[Outcome, bytes]] | None = None
        self.written: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """Bytes the reader got from the gateway (any chunking)."""
        self._buffer += data
        *lines, rest = _LINE_END.split(bytes(self._buffer))
        self._buffer = bytearray(rest[-LINE_BUFFER:] if len(rest) > LINE_BUFFER else rest)
        for line in lines:
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
        waiting = self._waiting
        if not line or waiting is None or waiting.done():
            return
        expect = self.script.expect.encode("ascii", "replace")
        if line.startswith(expect):
            waiting.set_result(("ok", line))
        elif line.upper().startswith(ERROR_REPLIES):
            waiting.set_result(("error", line))

    async def run(self) -> SetupResult:
        """Write every command in order, checking replies. Raises what the write raises (link gone)."""
        results = []
        loop = asyncio.get_running_loop()
        for index, (label, data) in enumerate(self.script.commands):
            self._buffer.clear()  # a line that began before this command is not its reply
            self._waiting = loop.create_future() if self.script.expect else None
            await self._write(data)
            self.written.append(data)
            if self._waiting is None:
                results.append(CommandResult(index, label, "sent"))
                continue
            try:
                outcome, line = await wait_within(self._waiting, self.script.reply_timeout_s)
            except TimeoutError:
                results.append(CommandResult(index, label, "timeout"))
            else:
                results.append(CommandResult(index, label, outcome, printable_reply(line)))
            finally:
                self._waiting = None
        return SetupResult(tuple(results))


def script_from_frames(labels: Sequence[str], frames: Sequence[bytes], *, expect: str,
                       reply_timeout_s: float) -> SetupScript:
    if len(labels) != len(frames):
        raise ValueError("one label per frame")
    return SetupScript(tuple(zip(labels, frames, strict=True)), expect, reply_timeout_s)
