"""What the SDK hands back to the app: a sync's report, the store's status, quarantined writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncReport:
    """One `Client.sync()`: mutations pushed, changes pulled, results settled, pages applied."""

    pushed: int = 0        # outbox entries the server accepted (received or answered at once)
    pulled: int = 0        # changes in the pages applied
    applied: int = 0       # outbox entries settled as applied (and deleted)
    rejected: int = 0      # outbox entries quarantined (by the server or locally)
    pages: int = 0         # pull pages applied, each in one local transaction
    cursor: int = 0        # the store's cursor afterwards
    duration: float = 0.0  # seconds
    complete: bool = False  # the last page said has_more: false (not cut short by max_pages)


@dataclass(frozen=True)
class Status:
    """Where the device stands, from the store alone (no network)."""

    pending: int                 # outbox entries not yet sent
    sent: int                    # sent, no answer yet (resent with the same seq next time)
    received: int                # received by the server, result not yet delivered
    quarantined: int
    last_sync_at: str | None     # when the last complete sync finished (ISO 8601 UTC)
    cursor: int
    write_checkpoint: int
    lag: int | None              # server head minus cursor, as of the last pull
    device_id: str | None

    @property
    def unsettled(self) -> int:
        return self.sent + self.received


@dataclass(frozen=True)
class QuarantinedMutation:
    """A write that will never take effect as it was made: the server rejected it permanently,
    or it could not be sent (`payload-too-large`, `seq-reused`). Fix it with
    `Client.resubmit(seq, fields)` or drop it with `Client.discard(seq)`."""

    seq: int
    entity: str
    op: str
    record_id: str
    fields: dict[str, Any]
    reason: str
    code: str | None                                   # the problem type URI
    errors: list[dict[str, str]] = field(default_factory=list)   # [{field, reason}]
    quarantined_at: str | None = None

    @property
    def name(self) -> str:
        """The problem type's short name (`stale`, `validation`, ...)."""
        return (self.code or "").rsplit("/", 1)[-1]
