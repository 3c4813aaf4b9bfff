"""Verifying the audit trail: find every edited, deleted, inserted, reordered or truncated entry
and say which (invariant 8; docs/audit.md "Verification").

The verifier reads one consistent snapshot and walks the entries in seq order, streaming (a
six-year log does not fit in memory), with one entry of look-ahead. For each entry it asks:

* is it *sealed* — does the HMAC of its stored hash under the audit key match? Only the log
  writes seals, so an unsealed entry was forged: **inserted** when the chain passes over it
  (the next entry links to the one before it, or it lies past the head), else **edited** with
  its hash recomputed;
* is it *intact* — does its content hash to its stored hash at its position? A sealed entry
  that is not intact was **edited**, unless it hashes at another position: then it was
  **moved** (a run of moved entries holding each other's positions is "out of order");
* does it link — is its prev_hash the previous entry's hash?

Missing positions are **deleted** entries; a log ending before its head or before a signed
checkpoint was **truncated**; an entry whose hash differs from a signed checkpoint's was
**rewritten** (the whole chain re-hashed and re-sealed by someone holding the sealing key,
but not the signing key). After an insert, later entries are expected one position further
on (an attacker renumbering the rest), so one insert is one problem, not a cascade.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field as dc_field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa

from fieldsync.audit.chain import GENESIS, Checkpoint, ENTRIES, entry_hash, verify_signature

__all__ = ["VerifyReport", "verify_log", "parse_checkpoints"]

MOVE_WINDOW = 8  # how far from its position a moved entry is looked for


@dataclass
class VerifyReport:
    """The outcome of a verification: `problems` names each one found (empty when intact)."""

    problems: list[str] = dc_field(default_factory=list)
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int = 0
    anchor_seq: int = 0
    checkpoints_verified: int = 0
    last_checkpoint: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.entries == 0 and self.ok:
            return "the audit log is empty" + (f" (purged through entry {self.anchor_seq})" if self.anchor_seq else "")
        span = f"entries {self.first_seq} to {self.last_seq}" if self.first_seq is not None else "no entries"
        text = (f"{span} ({self.entries} entries), {self.checkpoints_verified} signed checkpoint(s) match"
                + (f", the last at entry {self.last_checkpoint}" if self.last_checkpoint else ""))
        if self.anchor_seq:
            text += f"; purged through entry {self.anchor_seq}, anchored by a signed checkpoint"
        return ("the audit log is intact: " if self.ok else "the audit log is NOT intact: ") + text


def parse_checkpoints(lines: Iterable[str]) -> list[Checkpoint]:
    """Checkpoints kept outside the database, one JSON object a line (`Checkpoint.as_json`)."""
    out = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
            statement = json.loads(data["statement"])
            out.append(Checkpoint(int(statement["seq"]), str(statement["hash"]), data["statement"],
                                  data["signature"], str(data.get("key_id", ""))))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"line {number} is not a checkpoint (a JSON object with statement and signature)") from None
    return out


def _span(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first} to {last} are"


def _checked_checkpoints(log, stored: Sequence[Checkpoint], external: Sequence[Checkpoint],
                         public_keys: list, log_id: str | None, problems: list[str]) -> dict[int, str]:
    """The checkpoints whose signature verifies, as {seq: hash}; a problem for each that does not."""
    trusted = list(public_keys)
    local = log.local_public_key()
    if local is not None:
        trusted.append(local)
    if not trusted and (stored or external):
        problems.append("there is no public key to check the signed checkpoints with (no signing key in "
                        f"{log.signing_key_path}; pass the exported public key)")
        return {}
    valid: dict[int, str] = {}
    stored_seqs = set()
    for source, cp in [("", c) for c in stored] + [(" (kept outside the database)", c) for c in external]:
        try:
            statement = json.loads(cp.statement)
            seq, digest = int(statement["seq"]), str(statement["hash"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"checkpoint at {cp.seq}{source} is not a checkpoint statement")
            continue
        if not any(verify_signature(k, cp) for k in trusted):
            problems.append(f"checkpoint at {cp.seq}{source} has a bad signature")
            continue
        if log_id is not None and statement.get("log") != log_id:
            problems.append(f"checkpoint at {seq}{source} was signed for another audit log")
            continue
        if source:
            if seq not in stored_seqs:
                problems.append(f"the signed checkpoint at {seq} is missing from the database (deleted)")
        else:
            stored_seqs.add(seq)
        if seq in valid and valid[seq] != digest:
            problems.append(f"two signed checkpoints at {seq} disagree about its hash")
        valid.setdefault(seq, digest)
    return valid


def _lookahead(rows: Iterator[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    current = next(rows, None)
    while current is not None:
        following = next(rows, None)
        yield current, following
        current = following


def _moved_runs(moved: list[tuple[int, int]]) -> list[str]:
    """Problems for entries found at other positions than the one they were written at."""
    out = []
    runs: list[list[tuple[int, int]]] = []
    for pos, orig in moved:
        if runs and runs[-1][-1][0] == pos - 1:
            runs[-1].append((pos, orig))
        else:
            runs.append([(pos, orig)])
    for run in runs:
        positions = [p for p, _ in run]
        origins = {o for _, o in run}
        shifts = {o - p for p, o in run}
        if set(positions) == origins:
            a, b = positions[0], positions[-1]
            out.append(f"entries {a} and {b} are out of order" if len(run) == 2 else f"entries {a} to {b} are out of order")
        elif len(shifts) == 1 and next(iter(shifts)) > 0:
            d = next(iter(shifts))
            out.append(f"{_span(positions[0], positions[0] + d - 1)} missing (deleted; the entries after "
                       "them were renumbered)")
        else:
            out.extend(f"entry {p} was written as entry {o} (moved)" for p, o in run)
    return out


_NO_HEAD = {"seq": 0, "hash": GENESIS, "log_id": None, "anchor_seq": 0, "anchor_hash": GENESIS,
            "key_id": None, "seal": None}


def _against_anchors(found: list, unreadable: list[str], stores: Sequence, head: Mapping[str, Any] | None,
                     problems: list[str]) -> list[Checkpoint]:
    """Compare the trail's head with the anchors kept outside the database: a problem for a
    trail that is not the anchored log; the anchors of this log (past the empty statement) are
    then checked like any checkpoint kept outside (truncation, rewrite, deleted checkpoint)."""
    problems.extend(unreadable)
    external = []
    for store, anchor in found:
        if head is not None and head["log_id"] != anchor.log_id:
            problems.append(f"the audit trail was replaced: the anchor {store.location} records "
                            f"{anchor.describe()}, but the database holds log {head['log_id']}"
                            + (" (a new, empty trail)" if head["seq"] == 0 else f" at entry {head['seq']}"))
        elif anchor.seq > 0:
            external.append(Checkpoint(anchor.seq, anchor.entry_hash, anchor.statement, anchor.signature,
                                       anchor.key_id))
    if not found and not unreadable and head is not None and head["seq"] > 0:
        problems.append("no anchor of this trail was found outside the database (in "
                        + ", ".join(s.location for s in stores) + "): it was deleted, or no "
                        "server started since the trail was written (the server writes it at start, and "
                        "`fieldsync audit checkpoint` does)")
    return external


def verify_log(log, *, external: Sequence[Checkpoint] = (), public_keys: Sequence = (),
               anchors: tuple[list, list[str]] | None = None) -> VerifyReport:
    """Verify `log` (a `fieldsync.audit.trail.AuditLog`, whose `verify` calls this: so it is not
    imported here); see the module docstring for what is checked. `anchors` is what
    `AuditLog.read_anchors` found (None: not compared)."""
    report = VerifyReport()
    problems = report.problems
    with log.snapshot() as conn:
        stored_head = log.head_or_none(conn)
        if stored_head is None:
            problems.append("the head row of the audit trail is missing (deleted)")
        head = stored_head if stored_head is not None else _NO_HEAD
        if anchors is not None:
            external = list(external) + _against_anchors(*anchors, log.anchors, stored_head, problems)
        keys, unreadable = log.data_keys(conn)
        stored = log.checkpoints(conn)
        valid = _checked_checkpoints(log, stored, external, list(public_keys), head["log_id"], problems)
        head_seq, anchor_seq, anchor_hash = head["seq"], head["anchor_seq"], head["anchor_hash"]
        report.head_seq, report.anchor_seq = head_seq, anchor_seq
        head_key = keys.get(head["key_id"]) if head["key_id"] else None
        head_trusted = head["seal"] is not None and head_key is not None and hmac.compare_digest(
            head_key.seal_head(head["log_id"], head_seq, head["hash"], anchor_seq, anchor_hash), head["seal"])
        # a head as create_audit_tables leaves it, before the server's first start seals it:
        # clean while the log is empty (an entry beside it means the head was reset by hand)
        pristine = stored_head is not None and head["seal"] is None and head["key_id"] is None and head_seq == 0 \
            and anchor_seq == 0 and head["hash"] == GENESIS and anchor_hash == GENESIS
        if stored_head is None or pristine:
            pass
        elif not head_trusted:
            # an unsealed head proves nothing: the tail is then checked against checkpoints only
            if head["key_id"] and head_key is None:
                why = unreadable.get(head["key_id"], "is not in fs_audit_keys (deleted?)")
                problems.append(f"the head row cannot be checked: its key {head['key_id']} {why}")
            else:
                problems.append("the head row was edited (its seal does not match)")
        if anchor_seq and valid.get(anchor_seq) != anchor_hash:
            problems.append(f"the log starts after entry {anchor_seq}, but no signed checkpoint vouches for "
                            f"entry {anchor_seq} (entries were deleted from the start)")
        expected, prev, offset = anchor_seq + 1, anchor_hash, 0
        moved: list[tuple[int, int]] = []
        genuine_hash: dict[int, str] = {}     # original seq -> hash, for the checkpoints
        purge_recorded = anchor_seq == 0
        result = conn.execution_options(yield_per=1000).execute(sa.select(ENTRIES).order_by(ENTRIES.c.seq))
        try:
            for r, nxt in _lookahead(iter(result.mappings())):
                pos = r["seq"]
                report.entries += 1
                if report.first_seq is None:
                    report.first_seq = pos
                report.last_seq = pos
                if pos <= anchor_seq:
                    problems.append(f"entry {pos} was inserted (the log was purged through entry {anchor_seq})")
                    continue
                if pos - offset > expected:
                    problems.append(f"{_span(expected, pos - offset - 1)} missing (deleted)")
                    expected, prev = pos - offset, None
                key = keys.get(r["key_id"])
                if key is None:
                    why = unreadable.get(r["key_id"], "is not in fs_audit_keys (deleted?)")
                    problems.append(f"entry {pos} cannot be checked: its key {r['key_id']} {why}")
                    expected, prev = expected + 1, None
                    continue
                sealed = hmac.compare_digest(key.seal(r["entry_hash"]), r["seal"])
                if not sealed:
                    passed_over = nxt is not None and prev is not None and nxt["prev_hash"] == prev
                    beyond = head_trusted and pos - offset > head_seq
                    vouched = head_trusted and pos - offset == head_seq   # the sealed head counts this position
                    if passed_over or beyond or (nxt is None and not vouched):
                        problems.append(f"entry {pos} was inserted")
                        offset += 1
                    else:
                        problems.append(f"entry {pos} was edited (its hash was recomputed, and the seal does not match)")
                        expected, prev = expected + 1, None
                    continue
                orig = pos - offset
                intact = entry_hash(r, orig) == r["entry_hash"]
                if not intact:
                    at = next((s for s in range(max(1, pos - MOVE_WINDOW), pos + MOVE_WINDOW + 1)
                               if s != orig and entry_hash(r, s) == r["entry_hash"]), None)
                    if at is not None:
                        moved.append((pos, at))
                        expected, prev = expected + 1, None
                        continue
                    problems.append(f"entry {pos} was edited")
                elif prev is not None and r["prev_hash"] != prev:
                    problems.append(f"entry {pos} does not follow entry {pos - 1}: the chain is broken there")
                if intact and r["action"] == "admin" and anchor_seq:
                    detail = json.loads(r["detail"])
                    if detail.get("event") == "audit-purge" and detail.get("through") == anchor_seq:
                        purge_recorded = True
                if orig in valid:
                    genuine_hash[orig] = r["entry_hash"]
                expected, prev = expected + 1, r["entry_hash"]
        finally:
            result.close()
    problems.extend(_moved_runs(moved))
    if pristine and report.entries:
        problems.append("the head row was edited (its seal does not match)")
    last = expected - 1
    if not head_trusted:
        pass
    elif head_seq > last:
        problems.append(f"{_span(last + 1, head_seq)} missing from the end: the log ends at {last} but its head "
                        f"is at {head_seq} (truncated)")
    elif head_seq < last:
        problems.append(f"the log goes on past its head: it ends at {last} but the head says {head_seq} "
                        "(the head was rolled back)")
    elif prev is not None and head["hash"] != prev:
        problems.append(f"entry {last} does not match the hash its sealed head recorded (it was rewritten)")
    for seq, digest in sorted(valid.items()):
        if seq < anchor_seq:
            continue
        if seq == anchor_seq:
            report.checkpoints_verified += 1
            report.last_checkpoint = seq
        elif seq > last:
            problems.append(f"the log ends at {last} but checkpoint at {seq} was signed (truncated)")
        elif seq in genuine_hash:
            if genuine_hash[seq] != digest:
                problems.append(f"entry {seq} does not match the checkpoint signed at {seq} (the chain was rewritten)")
            else:
                report.checkpoints_verified += 1
                report.last_checkpoint = seq
    if not purge_recorded:
        problems.append(f"entries 1 to {anchor_seq} were deleted from the start of the log, and no purge entry "
                        "records it")
    return report
