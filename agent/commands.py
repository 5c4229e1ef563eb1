"""The command router: every signed command from the county passes here before anything on the box acts.

The box acts only when all hold (contract section 5): the MQTT message is not retained; the JWS verifies
with the key its `kid` names in `[trust.keys]`; the payload is a well-typed v1 command; it arrived on this
box's or one of its groups' cmd topic and `to` names this box or one of its groups; it is fresh (`iat` <=
now + 120 s, now < `exp`, or the clock policy below); its `kind` has a handler; its `id` was never seen.
Otherwise nothing happens but one `rejected` receipt with the reason and one warning line (never the token).

Accepted: the id is committed to the replay store, a `received` receipt goes out, then the handler is awaited.
Handlers should return once the command is taken (scheduled, applied): the link acknowledges the MQTT message
only after `on_command` returns. A handler that raises gets a `failed` receipt; it never takes the agent down.

Clock policy (`check_freshness`, docs/commands-and-keys.md): a box without a working RTC or NTP may boot in
1970. A clock is *trusted* when it is plausible (after 2024-01-01) and the kernel says NTP disciplines it (or,
where the kernel cannot say, it is not behind the *time floor*, the newest signed county time the box accepted
by more than the skew): then the contract holds for every command, emergencies included (`iat` <= now + 120 s,
now < `exp`). A plausible clock the kernel calls unsynchronised may be behind: an emergency signed ahead of it
is accepted with a `clock_behind` note, anything else signed ahead is `not_yet_valid`. A clock before 2024, or
behind the floor, is unsynchronised: `exp` is checked against the floor; emergency `broadcast.play` and any
`broadcast.cancel` are accepted with a `clock_unsynchronised` note (silence in an emergency is worse); the rest
is refused `clock_unsynchronised` and the county sends it again once the box reports a good clock. Signed
time moves the floor a bounded step only (`next_floor`: never past a plausible clock, at most a day at a
time in 1970), an NTP-synchronised clock lowers a floor that got ahead of it, and no accepted token is valid
for more than 31 days on the box's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import clocksanity
from agent.clock import Clock
from agent.clocksanity import KernelSync
from agent.config import Config, ConfigError
from agent.context import CommandHandler
from agent.keys import KeyFileError, load_public_key
from agent.outbox import OutboxError
from agent.protocol import jws
from agent.protocol.commands import COMMAND_VERSION, Command
from agent.protocol.envelope import MsgClass
from agent.protocol.text import escape
from agent.protocol.topics import BOX_ID_RE, Topics
from agent.receipts import Receipts
from agent.replay import ReplayStore, ReplayStoreError
from agent.service import InboundCommand, Uplink

log = logging.getLogger("agent.commands")

MAX_SKEW_S = 120  # contract: iat <= now + 120 s
UNSYNCHRONISED_BEFORE = 1_704_067_200  # 2024-01-01T00:00:00Z: a wall clock before this was never set
MAX_LIFETIME_S = 31 * 86400  # exp - iat, and exp - now: bounds how long an id must be remembered
MAX_FLOOR_STEP_S = 86400  # how far one command may raise the time floor while the clock reads 1970
PENDING_RESET_FLOOR = 0.0  # replay store reset while the clock was implausible: the floor is set later
MAX_EPOCH_S = 4_102_444_800  # 2100-01-01: iat/exp beyond are a county bug (and would overflow SQLite, or
#                              raise the time floor for good and make every later command look early)
MAX_ID_CHARS = 128
MAX_TARGETS = 1000
# Always .fullmatch: "$" (and .match with "$") also accepts a trailing newline ("cmd-1\n").
KIND_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")
ID_RE = re.compile(r"[\x21-\x7e]{1,128}\Z")  # printable ASCII, no spaces: safe in logs and receipts
URGENT = "emergency"
PRUNE_INTERVAL_S = 600.0
PRUNE_GRACE_S = 3600.0  # ids stay this long past exp, for clocks that wobble
REJECT_BURST = 60  # rejected receipts sent back-to-back before the limiter holds them back
REJECT_PER_S = 1.0  # ...and the sustained rate: junk on a cmd topic must not flood the outbox with receipts
SLOW_HANDLER_S = 2.0
STATE_FILE = "commands.db"


class CommandRejected(Exception):
    """A command the box refuses; `reason` goes into the receipt, `detail` into the log line."""

    def __init__(self, reason: str, detail: str, cmd_id: str | None = None) -> None:
        detail = escape(detail)  # may quote wire text: printable and bounded before any log line or receipt
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.cmd_id = reason, detail, cmd_id


class CommandFailed(Exception):
    """Raised by a handler for an expected failure: a `failed` receipt with `reason`, logged without traceback."""

    def __init__(self, reason: str, detail: str = "") -> None:
        reason, detail = escape(reason, 64), escape(detail)
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------------------------------- pure checks
def _int(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandRejected("malformed", f"{name} must be an integer (epoch s)")
    return value


def parse_command(payload: Mapping[str, Any], kid: str) -> Command:
    """A verified JWS payload -> Command, or CommandRejected('malformed')."""
    v = payload.get("v")
    if isinstance(v, bool) or v != COMMAND_VERSION:
        raise CommandRejected("malformed", f"v must be {COMMAND_VERSION}, got {v!r}"[:120])
    cmd_id = payload.get("id")
    if not isinstance(cmd_id, str) or not ID_RE.fullmatch(cmd_id):
        raise CommandRejected("malformed", "id must be 1-128 printable ASCII characters")
    kind = payload.get("kind")
    if not isinstance(kind, str) or len(kind) > 64 or not KIND_RE.fullmatch(kind):
        raise CommandRejected("malformed", "kind must be dotted lower-case words", cmd_id)
    try:
        iat, exp = _int(payload, "iat"), _int(payload, "exp")
    except CommandRejected as exc:
        exc.cmd_id = cmd_id
        raise
    if not 0 <= iat < MAX_EPOCH_S or not 0 < exp <= MAX_EPOCH_S:
        raise CommandRejected("malformed", "iat and exp must be epoch seconds before 2100", cmd_id)
    if exp <= iat:
        raise CommandRejected("malformed", "exp must be after iat", cmd_id)
    if exp - iat > MAX_LIFETIME_S:
        raise CommandRejected("malformed", f"lifetime exp - iat over {MAX_LIFETIME_S} s", cmd_id)
    to = payload.get("to")
    if not isinstance(to, list) or not to or len(to) > MAX_TARGETS:
        raise CommandRejected("malformed", "to must be a non-empty list of box:ID / group:NAME", cmd_id)
    for target in to:
        if not isinstance(target, str) or not _valid_target(target):
            raise CommandRejected("malformed", "to must be a non-empty list of box:ID / group:NAME", cmd_id)
    data = payload.get("data")
    if not isinstance(data, dict):
        raise CommandRejected("malformed", "data must be an object", cmd_id)
    return Command(id=cmd_id, kind=kind, iat=iat, exp=exp, to=tuple(to), data=data, kid=kid)


def _valid_target(target: str) -> bool:
    scope, _, name = target.partition(":")
    return scope in ("box", "group") and bool(BOX_ID_RE.fullmatch(name))


def check_addressing(cmd: Command, topic: str, my_topics: Mapping[str, str], box: str,
                     groups: tuple[str, ...]) -> None:
    """The topic must be one of this box's cmd topics, and `to` must name this box or one of its groups."""
    if topic not in my_topics:
        raise CommandRejected("not_addressed", "arrived on a topic that is not this box's", cmd.id)
    mine = {f"box:{box}", *(f"group:{g}" for g in groups)}
    if not mine.intersection(cmd.to):
        raise CommandRejected("not_addressed", "to names neither this box nor its groups", cmd.id)


@dataclass(frozen=True, slots=True)
class Freshness:
    synchronised: bool
    note: str | None  # goes into the `received` receipt when the clock policy let the command through
    floor: float = 0.0  # the time floor once this command is accepted (next_floor)


def clock_synchronised(now: float, floor: float, skew: float = MAX_SKEW_S) -> bool:
    """Plausible and not behind signed county time: good enough to prune by, and to judge a command by when
    the kernel does not say (see clock_trusted)."""
    return now >= UNSYNCHRONISED_BEFORE and now >= floor - skew


def clock_trusted(now: float, floor: float, kernel_synced: bool | None, skew: float = MAX_SKEW_S) -> bool:
    """May the contract's `iat <= now + skew` be enforced for every command, emergencies included?

    Yes when the clock is plausible and the kernel says NTP disciplines it; when the kernel does not say
    (None: no adjtimex), when it is plausible and not behind the floor. A clock the kernel calls
    unsynchronised (restored from a file, NTP unreachable) may be behind: an emergency signed ahead of it
    may still play (`clock_behind`)."""
    if now < UNSYNCHRONISED_BEFORE:
        return False
    if kernel_synced is None:
        return now >= floor - skew
    return kernel_synced


def next_floor(floor: float, iat: float, now: float, skew: float = MAX_SKEW_S, *,
               known: float = clocksanity.EPOCH_FLOOR) -> float:
    """The time floor after accepting a command signed at `iat`: signed time moves it a bounded step only.

    A plausible clock caps it at now + skew: a token signed ahead (a console with a wrong clock, one
    stockpiled for later) can then never make a later command that is valid by this clock look early or
    expired. A clock still in 1970 cannot cap anything: there the floor rises at most MAX_FLOOR_STEP_S past
    what the box already knew (the old floor, or `known`: clocksanity.known_floor, the last NTP sync that
    systemd-timesyncd recorded), so one bad token holds back at most a day of commands, until the clock
    is set."""
    if now >= UNSYNCHRONISED_BEFORE:
        cap = now + skew
    else:
        cap = max(floor, known) + MAX_FLOOR_STEP_S
    return max(floor, min(float(iat), cap))


def is_urgent(cmd: Command) -> bool:
    """What a box with a wrong clock still obeys: emergency broadcasts, and cancels (they only stop sound)."""
    if cmd.kind == "broadcast.cancel":
        return True
    return cmd.kind in ("broadcast.play", "broadcast.live") and cmd.data.get("class") == URGENT


def check_freshness(cmd: Command, now: float, floor: float, skew: float = MAX_SKEW_S, *,
                    kernel_synced: bool | None = None, known: float = clocksanity.EPOCH_FLOOR) -> Freshness:
    """The clock policy (module docstring, docs/commands-and-keys.md): raise CommandRejected or say how the
    command passed and what the floor becomes. `kernel_synced`: the kernel's NTP verdict (clocksanity)."""
    plausible = now >= UNSYNCHRONISED_BEFORE
    trusted = clock_trusted(now, floor, kernel_synced, skew)
    floor_after = next_floor(floor, cmd.iat, now, skew, known=known)
    if plausible and cmd.exp - now > MAX_LIFETIME_S + skew:
        # however the clock is judged: an accepted token is never valid for more than 31 days by this clock
        # (give or take the contract's skew: a 31-day token from a console a few seconds ahead is fine)
        raise CommandRejected("not_yet_valid", f"valid for {(cmd.exp - now) / 86400:.1f} days on this box's clock "
                              f"(at most {MAX_LIFETIME_S // 86400})", cmd.id)
    if trusted or clock_synchronised(now, floor, skew):
        if cmd.iat > now + skew:
            if trusted or not is_urgent(cmd):
                why = "NTP-synchronised" if kernel_synced else "or the box clock is behind"
                raise CommandRejected("not_yet_valid", f"iat is {cmd.iat - now:.0f} s ahead of this box's clock "
                                      f"({why})", cmd.id)
            # Signed county time ahead of a clock the kernel does not vouch for: it may be behind (restored
            # from a file, no NTP). An emergency is obeyed rather than left silent; the floor does not follow
            # the signed time past this clock (next_floor), so nothing later is refused because of it.
            return Freshness(False, "clock_behind", floor_after)
        if now >= cmd.exp:
            raise CommandRejected("expired", f"expired {now - cmd.exp:.0f} s ago", cmd.id)
        return Freshness(True, None, floor_after)
    if cmd.exp <= floor:
        raise CommandRejected("expired", "expired before a command this box already accepted", cmd.id)
    if not is_urgent(cmd):
        raise CommandRejected("clock_unsynchronised", "box clock is not set; only emergencies are obeyed", cmd.id)
    return Freshness(False, "clock_unsynchronised", floor_after)


class RejectionLimiter:
    """A token bucket over the monotonic clock for rejected receipts (junk can't flood the outbox)."""

    def __init__(self, clock: Clock, burst: int = REJECT_BURST, per_s: float = REJECT_PER_S) -> None:
        self._clock, self._burst, self._per_s = clock, burst, per_s
        self._tokens = float(burst)
        self._at = clock.monotonic()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False


def load_trust_keys(config: Config) -> dict[str, Ed25519PublicKey]:
    """`[trust.keys]` -> kid -> public key. A bad file is a ConfigError naming the key."""
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, path in config.trust.keys.items():
        try:
            keys[kid] = load_public_key(path)
        except KeyFileError as exc:
            raise ConfigError(path, f"trust.keys.{kid}", exc.problem) from None
    return keys


# ---------------------------------------------------------------------------------------- the router
class CommandRouter:
    """CommandSink for the link, CommandRegistry for the features, and a Service owning the replay store.

    Trust keys are loaded in the constructor so a bad key file fails at startup as a config error (exit 2),
    not on the first command.
    """

    name = "commands"

    def __init__(self, config: Config, receipts: Receipts, clock: Clock, state_dir: Path | None = None, *,
                 keys: Mapping[str, Ed25519PublicKey] | None = None, uplink: Uplink | None = None,
                 clock_sync: Callable[[], KernelSync | None] | None = None,
                 known_floor: float | None = None) -> None:
        self._box = config.box.id
        self._groups = config.box.groups
        topics = Topics(config.mqtt.topic_prefix)
        self._my_topics = {topics.box_cmd(self._box): f"box:{self._box}",
                           **{topics.group_cmd(g): f"group:{g}" for g in self._groups}}
        self._keys = dict(keys) if keys is not None else load_trust_keys(config)
        self._receipts = receipts
        # for the `replay_reset` event; the receipts' own uplink unless given (the same outbox in the agent)
        self._uplink: Uplink = uplink if uplink is not None else receipts.uplink
        self._clock = clock
        # what the kernel says about NTP discipline of `clock` (tests inject a synchronised or not one)
        self._clock_sync = clock_sync if clock_sync is not None else clocksanity.kernel_reader(clock)
        # a time the clock has certainly reached (last NTP sync on record): where a 1970 floor steps from
        self._known_floor = known_floor if known_floor is not None else clocksanity.known_floor()
        self._reset_reported = False
        self._handlers: dict[str, CommandHandler] = {}
        self._store = ReplayStore(Path(state_dir or config.box.state_dir) / STATE_FILE)
        self._opened = asyncio.Event()
        self._limiter = RejectionLimiter(clock)
        self.counters: Counter[str] = Counter()

    # CommandRegistry -------------------------------------------------------------------
    def register(self, kind: str, handler: CommandHandler) -> None:
        if not KIND_RE.fullmatch(kind):
            raise ValueError(f"not a command kind: {kind!r}")
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind!r} is already registered")
        self._handlers[kind] = handler

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._handlers)

    # Service ---------------------------------------------------------------------------
    async def run(self, ready: Callable[[], None]) -> None:
        await self._store.open()
        try:
            await self._after_reset()
            self._opened.set()
            if not self._keys:
                log.warning("commands: no [trust.keys] configured: every command will be rejected (unknown_kid)")
            log.info("commands: ready; kinds %s; trusted keys %s", ", ".join(sorted(self._handlers)) or "none",
                     ", ".join(sorted(self._keys)) or "none")
            ready()
            await self._report_reset()
            while True:
                await self.prune()
                await asyncio.sleep(PRUNE_INTERVAL_S)
        finally:
            self._opened.clear()
            await self._store.close()

    async def _after_reset(self) -> None:
        """A replaced replay store forgets which ids were obeyed: refuse what was issued before now.

        The floor is `now` only once the wall clock is plausible (agent.clocksanity); until then a pending
        floor (PENDING_RESET_FLOOR, kept across restarts) is recorded and the real one is set on the first
        command that finds the clock plausible. The reset is reported once as an `event` `replay_reset`.
        """
        store = self._store
        if (store.reset_reason is not None and store.reset_floor is None) or store.reset_floor == PENDING_RESET_FLOOR:
            now = self._clock.time()
            plausible = clocksanity.assess(now).plausible
            try:
                await store.set_reset_floor(now if plausible else PENDING_RESET_FLOOR)
            except ReplayStoreError as exc:
                log.error("commands: %s", exc)
            else:
                if plausible:
                    log.warning("commands: replay store was reset; commands issued before %.0f are refused "
                                "(replay_unknown) until %.0f, except broadcast.cancel", now, now + MAX_LIFETIME_S)

    async def _report_reset(self) -> None:
        store = self._store
        if store.reset_reason is not None and not self._reset_reported:
            self._reset_reported = True
            floor = None if store.reset_floor in (None, PENDING_RESET_FLOOR) else store.reset_floor
            data = {"reason": store.reset_reason, "floor": floor,
                    "until": None if floor is None else floor + MAX_LIFETIME_S}
            try:
                await self._uplink.send(MsgClass.EVENT, "replay_reset", data, int(self._clock.time() * 1000))
            except OutboxError as exc:
                log.error("commands: cannot queue the replay_reset event: %s", exc)

    def _check_reset_floor(self, cmd: Command) -> None:
        floor = self._store.reset_floor
        if floor is None or cmd.kind == "broadcast.cancel":  # cancelling is always safe
            return
        if cmd.iat < floor and self._clock.time() < floor + MAX_LIFETIME_S:
            raise CommandRejected("replay_unknown", "issued before the replay store was reset; it may have been "
                                  "obeyed already", cmd.id)

    async def _lower_floor(self, now: float) -> None:
        """The NTP-synchronised clock is behind the time floor: the floor was raised by a token signed ahead
        while the clock could not be trusted. The clock wins; the floor comes down to it."""
        old = self._store.floor
        try:
            await self._store.lower_floor(now)
        except ReplayStoreError as exc:
            log.warning("commands: %s", exc)
            return
        log.warning("commands: the time floor %.0f was %.0f s ahead of the NTP-synchronised clock; lowered to %.0f",
                    old, old - now, now)

    async def prune(self) -> int:
        now = self._clock.time()
        kernel = self._clock_sync()
        if kernel is not None and kernel.synchronised and now >= UNSYNCHRONISED_BEFORE \
                and self._store.floor > now + MAX_SKEW_S:
            await self._lower_floor(now)  # heal without waiting for the next command
        if not clock_synchronised(now, self._store.floor):
            return 0  # with a wrong clock everything would look expired, or nothing would
        floor = self._store.reset_floor
        # every command issued before the reset has expired: the floor has done its work
        if floor is not None and floor != PENDING_RESET_FLOOR and now >= floor + MAX_LIFETIME_S:
            try:
                await self._store.set_reset_floor(None)
            except ReplayStoreError as exc:
                log.warning("commands: %s", exc)
        try:
            return await self._store.prune(now - PRUNE_GRACE_S)
        except ReplayStoreError as exc:
            log.warning("commands: %s", exc)
            return 0

    # CommandSink -----------------------------------------------------------------------
    async def on_command(self, msg: InboundCommand) -> None:
        await self._opened.wait()
        try:
            cmd, fresh, handler = await self._admit(msg)
        except CommandRejected as rej:
            await self._reject(rej, msg.topic)
            return
        self.counters["accepted"] += 1
        log.info("commands: %s %s accepted (kid %s, from %s)%s", cmd.kind, cmd.id, escape(cmd.kid), escape(msg.topic),
                 f" [{fresh.note}]" if fresh.note else "")
        extra = {"kind": cmd.kind}
        if fresh.note:
            extra["note"] = fresh.note
        await self._receipt(cmd.id, "received", **extra)
        await self._dispatch(cmd, handler)

    async def _admit(self, msg: InboundCommand) -> tuple[Command, Freshness, CommandHandler]:
        claimed = jws.unverified_payload(msg.payload)
        cmd_id = claimed.get("id") if claimed else None
        if not isinstance(cmd_id, str) or not ID_RE.fullmatch(cmd_id):
            cmd_id = None  # unverified and unusable: the receipt says null rather than echo junk
        if msg.retained:
            raise CommandRejected("retained", "a retained message is never obeyed", cmd_id)
        try:
            header, payload = jws.verify(msg.payload, self._keys)
        except jws.JwsError as exc:
            raise CommandRejected(exc.reason, exc.detail, cmd_id) from None
        try:
            cmd = parse_command(payload, header["kid"])
        except CommandRejected as exc:
            exc.cmd_id = exc.cmd_id or cmd_id
            raise
        check_addressing(cmd, msg.topic, self._my_topics, self._box, self._groups)
        now = self._clock.time()
        kernel = self._clock_sync()
        synced = None if kernel is None else kernel.synchronised
        if synced and now >= UNSYNCHRONISED_BEFORE and self._store.floor > now + MAX_SKEW_S:
            await self._lower_floor(now)
        fresh = check_freshness(cmd, now, self._store.floor, kernel_synced=synced, known=self._known_floor)
        if self._store.reset_floor == PENDING_RESET_FLOOR:
            await self._after_reset()  # the clock may have become plausible since the reset
        self._check_reset_floor(cmd)
        handler = self._handlers.get(cmd.kind)
        if handler is None:
            raise CommandRejected("unknown_kind", f"no handler for {cmd.kind!r} on this box", cmd.id)
        try:
            first = await self._store.remember(cmd.id, cmd.exp, cmd.kid, self._clock.time(), fresh.floor)
        except ReplayStoreError as exc:
            # cannot promise at-most-once: refuse rather than risk playing a command twice
            raise CommandRejected("internal_error", str(exc), cmd.id) from None
        if not first:
            raise CommandRejected("replay", "this command id was already received", cmd.id)
        return cmd, fresh, handler

    async def _dispatch(self, cmd: Command, handler: CommandHandler) -> None:
        started = self._clock.monotonic()
        try:
            await handler(cmd)
        except CommandFailed as exc:
            log.warning("commands: %s %s failed: %s", cmd.kind, cmd.id, exc)
            self.counters["failed"] += 1
            await self._receipt(cmd.id, "failed", reason=exc.reason, **({"detail": exc.detail} if exc.detail else {}))
            return
        except Exception as exc:
            # The feature boundary: a bug in one handler must not stop the command path or the agent.
            log.exception("commands: handler for %s %s raised", cmd.kind, cmd.id)
            self.counters["failed"] += 1
            await self._receipt(cmd.id, "failed", reason="handler_error", detail=type(exc).__name__)
            return
        took = self._clock.monotonic() - started
        if took > SLOW_HANDLER_S:
            log.warning("commands: handler for %s took %.1f s; handlers should schedule work and return",
                        cmd.kind, took)

    async def _reject(self, rej: CommandRejected, topic: str) -> None:
        self.counters[f"rejected.{rej.reason}"] += 1
        if not self._limiter.allow():
            if self._limiter.suppressed == 1:
                log.warning("commands: too many rejected commands; holding back receipts and log lines")
            return
        extra: dict[str, Any] = {"detail": rej.detail}
        if self._limiter.suppressed:
            log.warning("commands: %d rejected commands were not reported (rate limit)", self._limiter.suppressed)
            extra["suppressed"] = self._limiter.suppressed
            self._limiter.suppressed = 0
        # id: ID_RE or None; reason: our word; detail: escaped by CommandRejected; the topic came off the wire
        log.warning("commands: rejected %s from %s: %s (%s)", rej.cmd_id or "<unparsed>", escape(topic), rej.reason,
                    rej.detail)
        await self._receipt(rej.cmd_id, "rejected", reason=rej.reason, **extra)

    async def _receipt(self, cmd_id: str | None, state: str, **extra: Any) -> None:
        try:
            await self._receipts.send(cmd_id, state, **extra)
        except OutboxError as exc:
            log.error("commands: cannot queue the %s receipt for %s: %s", state, cmd_id, exc)
