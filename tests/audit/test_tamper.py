"""Tampering with the audit trail through raw SQL, each kind detected and named (invariant 8).

The attacker here has the database (raw SQL, SHA-256 at hand) but not the key provider's master
key nor the Ed25519 signing key — except in the whole-chain rewrite, where they hold the sealing
key too and only the signed checkpoints catch them.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_support import raw, sample_event
from fieldsync.audit.chain import CHECKPOINTS, ENTRIES, HEAD, Checkpoint, entry_hash
from fieldsync.audit.trail import AuditLog
from fieldsync.audit.verify import parse_checkpoints
from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.store.engine import make_engine, write_transaction


def build(log: AuditLog, n: int) -> None:
    with write_transaction(log.engine) as conn:
        log.append_all(conn, [sample_event(i) for i in range(n)])


def row(log: AuditLog, seq: int) -> dict:
    with log.engine.connect() as conn:
        return dict(conn.execute(sa.select(ENTRIES).where(ENTRIES.c.seq == seq)).mappings().one())


def shift(log: AuditLog, from_seq: int, by: int) -> None:
    """Renumber entries from `from_seq` on by `by` (in two steps: the seq is a primary key)."""
    raw(log, "UPDATE fs_audit_entries SET seq = seq + 1000000 WHERE seq >= :s", s=from_seq)
    raw(log, "UPDATE fs_audit_entries SET seq = seq - 1000000 + :by WHERE seq >= 1000000", by=by)


def swap(log: AuditLog, a: int, b: int) -> None:
    raw(log, "UPDATE fs_audit_entries SET seq = -1 WHERE seq = :a", a=a)
    raw(log, "UPDATE fs_audit_entries SET seq = :a WHERE seq = :b", a=a, b=b)
    raw(log, "UPDATE fs_audit_entries SET seq = :b WHERE seq = -1", b=b)


def forge(log: AuditLog, seq: int, prev_hash: str, *, update_head: bool = False, template: dict | None = None) -> None:
    """Insert an entry blaming someone, hashed correctly (SHA-256 is public) but not sealed."""
    fake = dict(template or row(log, 1))
    fake.update(seq=seq, prev_hash=prev_hash, actor="someone-else", detail=json.dumps({"forged": True}))
    fake["entry_hash"] = entry_hash(fake)
    fake["seal"] = secrets.token_hex(32)
    with log.engine.begin() as conn:
        conn.execute(ENTRIES.insert().values(fake))
        if update_head:
            conn.execute(HEAD.update().values(seq=seq, hash=fake["entry_hash"]))


def problems(log: AuditLog, **kw) -> list[str]:
    return log.verify(**kw).problems


# -- each kind, named ----------------------------------------------------------------------------

def test_an_edited_entry_is_named(audit_log):
    build(audit_log, 50)
    raw(audit_log, "UPDATE fs_audit_entries SET actor = 'mallory' WHERE seq = 42")
    assert problems(audit_log) == ["entry 42 was edited"]


def test_an_edit_with_its_hash_recomputed_is_named(audit_log):
    build(audit_log, 50)
    edited = row(audit_log, 42)
    edited["record_ids"] = json.dumps(["another-record"])
    raw(audit_log, "UPDATE fs_audit_entries SET record_ids = :r, entry_hash = :h WHERE seq = 42",
        r=edited["record_ids"], h=entry_hash(edited))
    assert problems(audit_log) == ["entry 42 was edited (its hash was recomputed, and the seal does not match)"]


def test_a_deleted_entry_is_named(audit_log):
    build(audit_log, 50)
    raw(audit_log, "DELETE FROM fs_audit_entries WHERE seq = 43")
    assert problems(audit_log) == ["entry 43 is missing (deleted)"]
    raw(audit_log, "DELETE FROM fs_audit_entries WHERE seq IN (20, 21, 22)")
    assert problems(audit_log) == ["entries 20 to 22 are missing (deleted)", "entry 43 is missing (deleted)"]


def test_an_entry_inserted_in_the_middle_is_named(audit_log):
    build(audit_log, 50)
    template = row(audit_log, 44)
    shift(audit_log, 44, 1)
    forge(audit_log, 44, row(audit_log, 43)["entry_hash"], template=template)
    assert problems(audit_log) == ["entry 44 was inserted"]


def test_an_entry_appended_at_the_end_is_named(audit_log):
    build(audit_log, 50)
    forge(audit_log, 51, row(audit_log, 50)["entry_hash"])
    assert problems(audit_log) == ["entry 51 was inserted"]


def test_an_entry_appended_with_the_head_moved_onto_it_is_named(audit_log):
    build(audit_log, 50)
    forge(audit_log, 51, row(audit_log, 50)["entry_hash"], update_head=True)
    assert problems(audit_log) == ["the head row was edited (its seal does not match)", "entry 51 was inserted"]


def test_reordered_entries_are_named(audit_log):
    build(audit_log, 50)
    swap(audit_log, 45, 46)
    assert problems(audit_log) == ["entries 45 and 46 are out of order"]


def test_a_truncated_tail_is_named_by_the_head_and_the_checkpoint(make_log):
    log = make_log(checkpoint_every=0)
    build(log, 57)
    log.checkpoint()
    raw(log, "DELETE FROM fs_audit_entries WHERE seq > 50")
    assert problems(log) == ["entries 51 to 57 are missing from the end: the log ends at 50 but its head is at 57 "
                             "(truncated)",
                             "the log ends at 50 but checkpoint at 57 was signed (truncated)"]
    # rolling the head back as well breaks its seal, and still leaves the signed checkpoint
    last = row(log, 50)["entry_hash"]
    raw(log, "UPDATE fs_audit_head SET seq = 50, hash = :h", h=last)
    assert problems(log) == ["the head row was edited (its seal does not match)",
                             "the log ends at 50 but checkpoint at 57 was signed (truncated)"]


def test_a_checkpoint_kept_outside_catches_truncation_when_database_checkpoints_are_deleted(make_log, tmp_path):
    log = make_log(checkpoint_every=0)
    build(log, 57)
    kept = tmp_path / "checkpoints.jsonl"
    kept.write_text(log.checkpoint().as_json() + "\n")
    raw(log, "DELETE FROM fs_audit_entries WHERE seq > 50")
    raw(log, "DELETE FROM fs_audit_checkpoints")
    raw(log, "UPDATE fs_audit_head SET seq = 50, hash = :h", h=row(log, 50)["entry_hash"])
    assert problems(log) == ["the head row was edited (its seal does not match)"]
    external = parse_checkpoints(kept.read_text().splitlines())
    assert problems(log, checkpoints=external) == [
        "the signed checkpoint at 57 is missing from the database (deleted)",
        "the head row was edited (its seal does not match)",
        "the log ends at 50 but checkpoint at 57 was signed (truncated)"]


def test_a_whole_chain_rewritten_with_the_sealing_key_is_caught_by_a_checkpoint(make_log):
    log = make_log(checkpoint_every=25)
    build(log, 25)
    build(log, 25)       # checkpoints at 25 and 50
    # someone holding the master key (so the sealing key) rewrites every entry's actor,
    # re-hashes and re-seals the chain and moves the head: only the signatures stand in the way
    with log.engine.connect() as conn:
        keys, _ = log.data_keys(conn)
        rows = [dict(r) for r in conn.execute(sa.select(ENTRIES).order_by(ENTRIES.c.seq)).mappings()]
    prev = rows[0]["prev_hash"]
    with log.engine.begin() as conn:
        for r in rows:
            r.update(actor="mallory", prev_hash=prev)
            r["entry_hash"] = prev = entry_hash(r)
            r["seal"] = keys[r["key_id"]].seal(prev)
            conn.execute(ENTRIES.update().where(ENTRIES.c.seq == r["seq"]).values(
                actor=r["actor"], prev_hash=r["prev_hash"], entry_hash=r["entry_hash"], seal=r["seal"]))
        head = conn.execute(sa.select(HEAD)).mappings().one()
        key = keys[head["key_id"]]
        conn.execute(HEAD.update().values(hash=prev, seal=key.seal_head(head["log_id"], head["seq"], prev,
                                                                         head["anchor_seq"], head["anchor_hash"])))
    assert problems(log) == ["entry 25 does not match the checkpoint signed at 25 (the chain was rewritten)",
                             "entry 50 does not match the checkpoint signed at 50 (the chain was rewritten)"]


def test_a_checkpoint_with_a_bad_signature_is_named(make_log):
    log = make_log(checkpoint_every=10)
    build(log, 10)
    build(log, 10)
    with log.engine.connect() as conn:
        statement = conn.execute(sa.select(CHECKPOINTS.c.statement).where(CHECKPOINTS.c.seq == 10)).scalar_one()
    forged = json.loads(statement)
    forged["hash"] = "f" * 64
    raw(log, "UPDATE fs_audit_checkpoints SET statement = :s WHERE seq = 10", s=json.dumps(forged))
    assert problems(log) == ["checkpoint at 10 has a bad signature"]


def test_a_checkpoint_signed_by_another_key_is_refused(make_log):
    log = make_log(checkpoint_every=0)
    build(log, 5)
    mallory = Ed25519PrivateKey.generate()
    statement = json.dumps({"v": 1, "log": "x", "seq": 9, "hash": "0" * 64})
    import base64
    raw(log, "INSERT INTO fs_audit_checkpoints (seq, entry_hash, signed_at, key_id, statement, signature) "
             "VALUES (9, :h, :t, 'k', :s, :sig)", h="0" * 64, t=log.clock(), s=statement,
        sig=base64.b64encode(mallory.sign(statement.encode())).decode())
    assert problems(log) == ["checkpoint at 9 has a bad signature"]


def test_the_public_key_exported_verifies_without_the_private_key(make_log, tmp_path):
    from fieldsync.audit.chain import load_public_key
    log = make_log(checkpoint_every=5)
    build(log, 10)
    public = load_public_key(log.public_key_pem().encode())
    # a verifier elsewhere: the same database, no signing key file, the exported public key
    elsewhere = AuditLog(log.engine, log.keys, tmp_path / "nowhere" / "audit-signing.key")
    assert elsewhere.local_public_key() is None
    assert elsewhere.verify().problems == ["there is no public key to check the signed checkpoints with (no signing "
                                           f"key in {tmp_path / 'nowhere' / 'audit-signing.key'}; pass the exported "
                                           "public key)"]
    report = elsewhere.verify(public_keys=[public])
    assert report.ok and report.checkpoints_verified == 2
    assert not (tmp_path / "nowhere").exists()     # verifying never creates a key


def test_a_deleted_audit_key_is_named(audit_log):
    build(audit_log, 3)
    raw(audit_log, "DELETE FROM fs_audit_keys")
    found = problems(audit_log)
    assert len(found) == 4 and all("cannot be checked" in p and "is not in fs_audit_keys" in p for p in found)


# -- any single tampering is detected (hypothesis) -------------------------------------------------

TAMPERINGS = ("edit", "rehash", "reseal", "delete", "insert", "append", "swap", "truncate", "head")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=3, max_value=24), every=st.sampled_from([0, 4]),
       kind=st.sampled_from(TAMPERINGS), data=st.data())
def test_any_single_tampering_of_a_random_log_is_detected(n, every, kind, data):
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'audit.db'}")
        try:
            keys = Path(tmp) / "keys"
            log = AuditLog(engine, LocalKeyProvider(keys), keys / "audit-signing.key", checkpoint_every=every)
            log.prepare()
            build(log, n)
            if every == 0:
                log.checkpoint()
            assert log.verify().ok
            k = data.draw(st.integers(min_value=1, max_value=n), label="entry")
            expected = _tamper(log, kind, k, n, data)
            found = log.verify().problems
            assert found, f"{kind} of entry {k} went unnoticed"
            assert any(expected in p for p in found), (kind, k, found)
        finally:
            engine.dispose()


def _tamper(log: AuditLog, kind: str, k: int, n: int, data) -> str:
    """Tamper with entry `k` of an `n`-entry log; returns a word the problem must contain."""
    if kind == "edit":
        column = data.draw(st.sampled_from(["actor", "action", "entity", "record_ids", "fields", "subjects",
                                            "purpose", "detail", "prev_hash", "recorded_at", "device"]), label="column")
        value = {"action": "'delete'" if row(log, k)["action"] != "delete" else "'read'",
                 "recorded_at": "recorded_at" if False else None}.get(column)
        if column == "recorded_at":
            with log.engine.begin() as conn:
                conn.execute(ENTRIES.update().where(ENTRIES.c.seq == k).values(
                    recorded_at=row(log, k)["recorded_at"].replace(year=2001)))
        else:
            raw(log, f"UPDATE fs_audit_entries SET {column} = {value or repr('x-tampered')} WHERE seq = :k", k=k)
        return "edited"
    if kind == "rehash":
        edited = row(log, k)
        edited["actor"] = "mallory"
        raw(log, "UPDATE fs_audit_entries SET actor = 'mallory', entry_hash = :h WHERE seq = :k", h=entry_hash(edited), k=k)
        return "edited"
    if kind == "reseal":
        raw(log, "UPDATE fs_audit_entries SET seal = :s WHERE seq = :k", s=secrets.token_hex(32), k=k)
        return "edited"
    if kind == "delete":
        raw(log, "DELETE FROM fs_audit_entries WHERE seq = :k", k=k)
        return "missing"
    if kind == "insert":
        prev = row(log, k - 1)["entry_hash"] if k > 1 else "0" * 64
        template = row(log, k)
        shift(log, k, 1)
        forge(log, k, prev, template=template)
        return "inserted"
    if kind == "append":
        forge(log, n + 1, row(log, n)["entry_hash"], update_head=data.draw(st.booleans(), label="move head"))
        return "inserted"
    if kind == "swap":
        a = min(k, n - 1)
        swap(log, a, a + 1)
        return "out of order"
    if kind == "truncate":
        raw(log, "DELETE FROM fs_audit_entries WHERE seq >= :k", k=max(k, 2))
        return "truncated"
    # "head": the head row edited to name another hash
    raw(log, "UPDATE fs_audit_head SET hash = :h", h="e" * 64)
    return "head"
