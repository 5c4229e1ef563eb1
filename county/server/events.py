"""The live event stream of one server instance: `alarm`, `receipt` and `box` events fanned out in process.

    hub = EventHub()
    hub.publish("alarm", {"id": ..., "box": ..., ...})           # ingest after its commit; the API routes
    async with hub.subscribe() as sub:                            # the SSE route, one per browser
        async for event in sub:                                   # event.kind, event.data, event.id
            ...

`data` is a JSON object shaped like the rows of the API routes (contract section 6): an alarm as in
`GET /api/v1/alarms`, a receipt `{"cmd","box","state","reason","ts"}`, a box as in `GET /api/v1/boxes`.

Memory is bounded: each subscriber has a queue of at most `maxsize` events. A subscriber that does not
keep up loses the events that do not fit and then reads one `lost` event (`data` = `{"count": n}`)
where they would have been, so a browser knows to reload the lists rather than trust its view; nobody
else is slowed down. `publish` never blocks and never raises.

Several instances: an alarm is ingested (stored) by one instance only (the shared subscription), so each
instance also listens to the alarm and receipt topics on its own non-shared subscription
(`county.ingest.LiveFeed`) and announces from the wire what its own ingest did not receive. The same
alarm can so reach a hub twice (the wire copy, the committed copy): `publish(..., key=...)` drops an
event whose key was published recently (a bounded memory of `dedupe` keys), the first copy wins.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

KINDS = ("alarm", "receipt", "box")
LOST = "lost"
DEFAULT_QUEUE = 1000
DEFAULT_DEDUPE = 10_000


@dataclass(frozen=True, slots=True)
class Event:
    id: int  # rises per hub (an SSE `id:`)
    kind: str  # alarm | receipt | box | lost
    data: dict[str, Any]


class Subscription:
    """One subscriber's bounded queue; an async iterator of `Event` (use it through `EventHub.subscribe`)."""

    def __init__(self, hub: EventHub, kinds: frozenset[str] | None, maxsize: int) -> None:
        self._hub = hub
        self.kinds = kinds
        self.maxsize = maxsize
        self._queue: deque[Event] = deque()
        self._lost = 0  # events dropped since the last `lost` marker was queued
        self.lost_total = 0
        self._wake = asyncio.Event()
        self.closed = False

    def _offer(self, event: Event) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        if len(self._queue) >= self.maxsize:
            self._lost += 1
            self.lost_total += 1
            return
        if self._lost:
            self._queue.append(Event(event.id - 1, LOST, {"count": self._lost}))  # where the gap was
            self._lost = 0
        self._queue.append(event)
        self._wake.set()

    def get_nowait(self) -> Event | None:
        if self._queue:
            return self._queue.popleft()
        if self._lost:
            n, self._lost = self._lost, 0
            return Event(self._hub.last_id, LOST, {"count": n})
        return None

    async def get(self) -> Event:
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        self._hub._subs.discard(self)


class EventHub:
    """In-process fan-out to subscribers with bounded queues. Use from the event loop's thread only."""

    def __init__(self, *, maxsize: int = DEFAULT_QUEUE, dedupe: int = DEFAULT_DEDUPE) -> None:
        self.maxsize = maxsize
        self._subs: set[Subscription] = set()
        self._ids = itertools.count(1)
        self.last_id = 0
        self._recent: OrderedDict[Hashable, None] = OrderedDict()
        self._dedupe = dedupe
        self.published = 0
        self.duplicates = 0

    def publish(self, kind: str, data: dict[str, Any], *, key: Hashable | None = None) -> bool:
        """Hand `data` to every subscriber of `kind`; False when `key` was published recently (dropped)."""
        if key is not None:
            if key in self._recent:
                self._recent.move_to_end(key)
                self.duplicates += 1
                return False
            self._recent[key] = None
            if len(self._recent) > self._dedupe:
                self._recent.popitem(last=False)
        self.last_id = next(self._ids)
        event = Event(self.last_id, kind, data)
        self.published += 1
        for sub in list(self._subs):
            sub._offer(event)
        return True

    def open(self, kinds: Iterable[str] | None = None, *, maxsize: int | None = None) -> Subscription:
        """A subscription that receives every event published from now on (close it when done)."""
        sub = Subscription(self, frozenset(kinds) if kinds is not None else None, maxsize or self.maxsize)
        self._subs.add(sub)
        return sub

    @asynccontextmanager
    async def subscribe(self, kinds: Iterable[str] | None = None, *,
                        maxsize: int | None = None) -> AsyncIterator[Subscription]:
        """`async with hub.subscribe() as sub: async for event in sub: ...`; unsubscribed on exit."""
        sub = self.open(kinds, maxsize=maxsize)
        try:
            yield sub
        finally:
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        """End every subscription (their iterators stop after the events already queued)."""
        for sub in list(self._subs):
            sub.close()
