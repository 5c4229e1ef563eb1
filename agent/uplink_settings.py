"""`[uplink]`: how the box spends its 4G data (issue 14, docs/data-budget.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.i18n import N_
from agent.schema import SchemaError, non_negative, positive


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    # telemetry and events packed into compressed batches (P/box/{box}/up/batch/{class}); false sends exactly
    # the single envelopes of before, for a county platform that reads only those. Alarms and receipts are
    # never batched either way.
    batching: bool = True
    batch_window_s: float = field(default=60.0, metadata={"check": positive})  # oldest row waits at most this
    batch_max_bytes: int = field(default=64 * 1024, metadata={"check": positive})  # envelope bytes per batch
    batch_max_count: int = field(default=1000, metadata={"check": positive})  # envelopes per batch
    topic_aliases: bool = True  # MQTT 5 topic aliases (up to what the broker's CONNACK allows)
    tls_resumption: bool = True  # resume the TLS session on reconnect (a shorter handshake)
    # a publish of an alarm or receipt with no PUBACK this long means the connection is dead (a 4G link can
    # go silent without a reset, and the 4G keepalive is long): reconnect and send it again, same id
    urgent_ack_timeout_s: float = field(default=20.0, metadata={"check": positive})
    monthly_budget_mb: float = field(default=0.0, metadata={"check": non_negative})  # 0: no budget
    thin_at: float = field(default=0.8, metadata={"check": positive})  # share of the budget that starts thinning
    thin_interval_s: float = field(default=1800.0, metadata={"check": positive})  # one per subject per this

    def __post_init__(self) -> None:
        if self.thin_at > 1:
            raise SchemaError("thin_at", N_("must be at most 1 (a share of the monthly budget)"))
