"""Uplink envelopes (contract section 4) and the message classes that order the outbox."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from agent.protocol.text import scrub_json

ENVELOPE_VERSION = 1
_SEPARATORS = (",", ":")


class MsgClass(IntEnum):
    """Uplink classes; the integer is the drain priority (lower drains first)."""

    ALARM = 0
    RECEIPT = 1
    EVENT = 2
    TELEMETRY = 3

    @property
    def wire(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> MsgClass:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown message class {name!r}") from None


class EnvelopeError(ValueError):
    """An uplink message that does not follow the contract."""


@dataclass(frozen=True, slots=True)
class Envelope:
    box: str
    seq: int
    ts: int  # epoch ms, UTC: when the thing happened
    cls: MsgClass
    kind: str
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.box}:{self.seq}"

    def to_json(self) -> dict[str, Any]:
        return {
            "v": ENVELOPE_VERSION,
            "id": self.id,
            "box": self.box,
            "seq": self.seq,
            "ts": self.ts,
            "class": self.cls.wire,
            "kind": self.kind,
            "data": self.data,
        }

    def encode(self) -> bytes:
        """The wire form (UTF-8 JSON). Total: never raises, whatever `data` holds.

        `data` often carries text from the wire (a refusal's detail, a title): a lone surrogate (valid in a
        JSON string escape, not in UTF-8) is replaced by U+FFFD, a key that is not a string is made one, and
        a value JSON cannot hold is sent as a short description. The fast path is the plain dump."""
        obj = self.to_json()
        try:
            return json.dumps(obj, ensure_ascii=False, separators=_SEPARATORS).encode()
        except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
            return json.dumps(scrub_json(obj), ensure_ascii=False, separators=_SEPARATORS).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Envelope:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"not JSON: {exc}") from exc
        except RecursionError:
            raise EnvelopeError("JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise EnvelopeError("envelope is not a JSON object")
        try:
            if obj["v"] != ENVELOPE_VERSION:
                raise EnvelopeError(f"unsupported envelope version {obj['v']!r}")
            env = cls(
                box=str(obj["box"]),
                seq=int(obj["seq"]),
                ts=int(obj["ts"]),
                cls=MsgClass.parse(str(obj["class"])),
                kind=str(obj["kind"]),
                data=obj["data"] if isinstance(obj["data"], dict) else {},
            )
        except KeyError as exc:
            raise EnvelopeError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(1e999)
            raise EnvelopeError(str(exc)) from exc
        if obj.get("id") != env.id:
            raise EnvelopeError(f"id {obj.get('id')!r} is not box:seq")
        return env
