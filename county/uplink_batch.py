"""The county's ingest reads uplink batches (issue 14, agent/protocol/batch.py) as the envelopes they carry.

Each envelope inside becomes its own (Incoming, Parsed) pair, read by the very `parse` a single message goes
through, on the topic it would have had alone (`.../up/{class}/{kind}`): the same checks (box and class of
the topic, seq and ts ranges), the same `raw` bytes stored, the same dedupe by id. So a batch delivered twice
is stored once, and a batch and the single envelopes of the same rows are stored once between them. A batch
that cannot be read is quarantined whole; a bad envelope inside is quarantined alone, on its own topic.

The copies are never acknowledged themselves: the ingest acknowledges the MQTT message (the batch) it
received, after the commit of everything in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.protocol.batch import BatchError, kind_of, parse_batch_topic, unpack

if TYPE_CHECKING:
    from county.ingest import Incoming, Parsed


def parse_all(batch: Sequence[Incoming], parse_one: Callable[[Incoming], Parsed]) -> list[tuple[Incoming, Parsed]]:
    """`(item, parse_one(item))` for every message, a batch as one pair per envelope inside."""
    from county.ingest import Bad  # here: county.ingest imports this module

    out: list[tuple[Incoming, Parsed]] = []
    for it in batch:
        where = parse_batch_topic(it.topic)
        if where is None:
            out.append((it, parse_one(it)))
            continue
        head, _box, cls = where
        try:
            bodies = unpack(it.payload)
        except BatchError as exc:
            out.append((it, Bad(f"uplink batch: {exc}")))
            continue
        for body in bodies:
            one = dataclasses.replace(it, topic=f"{head}/{cls.wire}/{kind_of(body) or '-'}", payload=body,
                                      held=False)
            out.append((one, parse_one(one)))
    return out
