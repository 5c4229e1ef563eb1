"""Uplink batches (issue 14, docs/contract-extensions.md "Uplink batches"): many envelopes in one message.

Topic `P/box/{box}/up/batch/{class}` (class `telemetry` or `event`: alarms and receipts are never batched).
The county's `P/box/+/up/#` subscription and the broker's `pattern write P/box/%u/up/#` ACL already cover it;
`batch` is not a class, so no single-envelope topic can be mistaken for it.

Payload, format version 1:

    byte 0      format version (1)
    byte 1      dictionary id (DICTS: 0 = none, 1 = DICT_V1)
    bytes 2..   raw DEFLATE (RFC 1951, zlib wbits=-15) with that preset dictionary, of
                varint(len) + envelope bytes, repeated

Every envelope inside is the exact UTF-8 JSON the box would have sent alone (the outbox row's body):
same `id`, `seq`, `ts`, same bytes, so the county stores the same `raw` either way and dedupe, order and
loss accounting do not know the difference. A dictionary id, once shipped, is never changed or reused
(tests/test_uplink_batch.py freezes DICT_V1's hash): a county can decode a batch from any older box.

Why zlib with a preset dictionary (agent/protocol/batchdict.py: 20 KiB of real envelopes), not zstd with a
trained one: measured on a simulated village day (docs/data-budget.md), zstd 19 with a trained dictionary
gives 12 % fewer payload bytes (about 7 % of the day's wire bytes); zlib is in every Python, so neither the
box nor the county needs a compiled binding for it. The dictionary id leaves room for another codec later.

Hand-written because it is small: the framing is a varint and a length, and zlib is the standard library.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator

from agent.protocol.batchdict import DICT_V1
from agent.protocol.envelope import MsgClass

FORMAT_VERSION = 1
BATCH_CLASSES = (MsgClass.TELEMETRY, MsgClass.EVENT)
MAX_ENVELOPES = 10_000  # a batch holding more is refused whole (the box sends at most a few hundred)
MAX_UNPACKED = 8 << 20  # decompressed bytes: a small payload that inflates past this is refused (a bomb)
MAX_ENVELOPE = 1 << 20  # one envelope inside; the county's own single-message limit

DICTS: dict[int, bytes] = {0: b"", 1: DICT_V1}  # id -> preset dictionary; never edit or reuse an id
DEFAULT_DICT = 1

_TOPIC = re.compile(r"^(?P<head>.*/box/(?P<box>[^/]+)/up)/batch/(?P<cls>[^/]+)\Z")


class BatchError(ValueError):
    """A batch payload that cannot be read (the whole batch is refused: nothing inside is trusted)."""


def batch_topic(prefix: str, box: str, cls: MsgClass) -> str:
    if cls not in BATCH_CLASSES:
        raise ValueError(f"{cls.wire} is never batched")
    return f"{prefix}/box/{box}/up/batch/{cls.wire}"


def parse_batch_topic(topic: str) -> tuple[str, str, MsgClass] | None:
    """`.../box/{box}/up/batch/{class}` -> (the topic head `.../box/{box}/up`, box, class); None otherwise."""
    m = _TOPIC.match(topic)
    if m is None:
        return None
    try:
        cls = MsgClass.parse(m["cls"])
    except ValueError:
        return None
    if cls not in BATCH_CLASSES:
        return None
    return m["head"], m["box"], cls


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def frame(bodies: Iterable[bytes]) -> bytes:
    return b"".join(_varint(len(b)) + b for b in bodies)


def pack(bodies: Iterable[bytes], dict_id: int = DEFAULT_DICT, level: int = 9) -> bytes:
    """The batch payload for these envelope bodies (each the exact bytes of one envelope)."""
    zdict = DICTS[dict_id]
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict) if zdict else \
        zlib.compressobj(level, zlib.DEFLATED, -15, 9)
    return bytes((FORMAT_VERSION, dict_id)) + comp.compress(frame(bodies)) + comp.flush()


def unpack(payload: bytes) -> list[bytes]:
    """The envelope bodies of a batch payload, in order; BatchError for anything that is not a whole batch."""
    if len(payload) < 2:
        raise BatchError("batch too short")
    version, dict_id = payload[0], payload[1]
    if version != FORMAT_VERSION:
        raise BatchError(f"unsupported batch format version {version}")
    zdict = DICTS.get(dict_id)
    if zdict is None:
        raise BatchError(f"unknown batch dictionary {dict_id}")
    dec = zlib.decompressobj(-15, zdict) if zdict else zlib.decompressobj(-15)
    try:
        raw = dec.decompress(payload[2:], MAX_UNPACKED)
    except zlib.error as exc:
        raise BatchError(f"not DEFLATE: {exc}") from None
    if not dec.eof:
        if dec.unconsumed_tail or len(raw) >= MAX_UNPACKED:  # stopped at the limit, not at the end
            raise BatchError(f"batch inflates past {MAX_UNPACKED} bytes")
        raise BatchError("batch truncated")
    if dec.unused_data:
        raise BatchError("bytes after the end of the batch")
    return list(_unframe(raw))


def _unframe(raw: bytes) -> Iterator[bytes]:
    i, n, count = 0, len(raw), 0
    while i < n:
        length = shift = 0
        while True:
            if i >= n or shift > 28:
                raise BatchError("bad length in batch")
            b = raw[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if length == 0 or length > MAX_ENVELOPE or i + length > n:
            raise BatchError("bad length in batch")
        count += 1
        if count > MAX_ENVELOPES:
            raise BatchError(f"more than {MAX_ENVELOPES} envelopes in a batch")
        yield raw[i:i + length]
        i += length
    if count == 0:
        raise BatchError("empty batch")


def expand(topic: str, payload: bytes) -> list[tuple[str, bytes]]:
    """A message as the single-envelope messages it carries: a batch becomes (`.../up/{class}/{kind}`, envelope
    bytes) per envelope, kind read from the envelope; anything else (or a batch that cannot be read, or an
    envelope inside whose kind cannot be read) is returned as it is, for the reader to judge.

    The county console (`watch`, `status`, receipts) reads both forms through this."""
    where = parse_batch_topic(topic)
    if where is None:
        return [(topic, payload)]
    head, _box, cls = where
    try:
        bodies = unpack(payload)
    except BatchError:
        return [(topic, payload)]
    out = []
    for body in bodies:
        kind = kind_of(body)
        out.append((f"{head}/{cls.wire}/{kind}" if kind else topic, body))
    return out


_KIND = re.compile(rb',"kind":"([A-Za-z0-9_.-]{1,64})","data":')


def kind_of(body: bytes) -> str | None:
    """The `kind` of an envelope body as Envelope.encode writes it (a cheap read, no JSON parse); None if absent.

    Only for naming the single topic: the reader still decodes and checks the envelope against that topic."""
    m = _KIND.search(body)
    return m[1].decode() if m else None
