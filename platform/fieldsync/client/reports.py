"""What the SDK hands back to the app: a sync's report, the store's status, quarantined writes
and conflict losses."""

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
    conflicts: int = 0     # applied writes whose fields were overridden or that were discarded (Client.conflicts())
    pages: int = 0         # pull pages applied, each in one local transaction
    cursor: int = 0        # the store's cursor afterwards
    duration: float = 0.0  # seconds
    complete: bool = False  # the last page said has_more: false (not cut short by max_pages)
    bundles: int = 0       # snapshot bundles loaded (protocol §11)
    bundle_bytes: int = 0  # bytes of bundle chunks fetched (a resumed bundle: only what was missing)
    media_uploaded: int = 0  # files of the media queue now in the media store (after the records)
    media_failed: int = 0    # files refused for good in this sync (Client.media() has the reason)


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
    head: int | None = None      # the server's head position, as of the last pull
    conflicts: int = 0           # conflict losses the app has not cleared (Client.conflicts())
    fully_synced: bool = False   # nothing pending or unsettled, no pull phase or refetch open, cursor at head
    media_pending: int = 0       # files waiting to be uploaded (Client.attach_media); not part of fully_synced
    media_failed: int = 0        # files the media store refused for good (too large, wrong type)

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


@dataclass(frozen=True)
class Conflict:
    """A write the server applied but whose values did not all take effect: the entity's
    conflict policy kept another writer's values (invariant 5). `fields` lost (none for a
    discarded delete); `origins` says, per lost field, where the value that beat it came from
    (`server`: a write on the server, by REST, an admin or an import; `device`: another device;
    `unknown`: history no longer kept); `sent` holds the values this device wrote for them and
    `kept` the values the record has (those this device may read). Listed by
    `Client.conflicts()` until `Client.clear_conflicts()`."""

    seq: int
    entity: str
    record_id: str
    op: str
    effect: str                                          # partial | discarded
    fields: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    sent: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)
    detected_at: str | None = None
