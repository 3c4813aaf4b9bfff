"""A FHIR R5 Bundle export of the audit trail that verifies on its own, away from the server
(docs/audit.md, "Verifiable bundles"; the admin UI's audit page).

A bundle (`export_bundle`) is a FHIR `Bundle` of type `collection` holding one `AuditEvent`
per matching entry (`fieldsync.audit.export.fhir_audit_event`, the NDJSON export's mapping).
What makes it verifiable without the database:

* each AuditEvent's `audit-chain` extension carries, besides `seq` and `entryHash`, the entry's
  `prevHash` and `storedRow`: the stored columns its hash is computed over (the break-glass
  reason only as its ciphertext), so anyone recomputes the entry hash (`chain.entry_hash`) and
  re-derives the AuditEvent from it: an edited resource or row does not match;
* `Bundle.signature` is a checkpoint the server signs (Ed25519, the audit signing key) at the
  trail's head when the bundle is made, and its extension `audit-chain-proof` holds the signed
  statement and `chain`: `[seq, prev_hash, entry_hash]` of every entry from the first exported
  one to the signed one, hashes only (the entries the filters left out are not revealed). The
  chain links each exported entry to the signed hash: an entry edited, added, dropped from the
  chain or moved is found, and a whole bundle forged needs the signing key.

`verify_bundle(bundle, public_keys)` checks all of it and names each problem with the entry
it concerns, as `fieldsync audit verify` does for the trail. The public key comes from
`fieldsync audit public-key` (or the admin UI): a key carried inside the file would prove
nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field as dc_field
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fieldsync.audit.chain import ENTRIES, Checkpoint, entry_hash, iso, verify_signature
from fieldsync.audit.search import filter_clauses
from fieldsync.audit.export import BASE, fhir_audit_event
from fieldsync.audit.trail import AuditEvent, AuditLog, _entry

__all__ = ["BundleReport", "PROOF_URL", "export_bundle", "verify_bundle"]

PROOF_URL = f"{BASE}/StructureDefinition/audit-chain-proof"
CHAIN_URL = f"{BASE}/StructureDefinition/audit-chain"
# the stored columns an entry's hash covers (chain.entry_hash), as the bundle carries them
STORED_COLUMNS = ("seq", "prev_hash", "recorded_at", "action", "outcome", "actor", "role", "device", "channel",
                  "entity", "record_ids", "fields", "subjects", "purpose", "reason", "key_id", "detail")


def _stored(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {c: row[c] for c in STORED_COLUMNS}
    out["recorded_at"] = iso(row["recorded_at"])
    return out


def _from_stored(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row back from its bundle form (what entry_hash and _entry read)."""
    row = dict(stored)
    row["recorded_at"] = dt.datetime.strptime(stored["recorded_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.timezone.utc)
    row["entry_hash"] = ""
    return row


def _audit_event(row: Mapping[str, Any], server: str) -> dict[str, Any]:
    """The AuditEvent of a stored row, with prevHash and storedRow in its audit-chain extension."""
    resource = fhir_audit_event(_entry(row), server=server)
    chain = next(e for e in resource["extension"] if e["url"] == CHAIN_URL)
    chain["extension"] += [{"url": "prevHash", "valueString": row["prev_hash"]},
                           {"url": "storedRow", "valueString": json.dumps(_stored(row), sort_keys=True,
                                                                            separators=(",", ":"))}]
    return resource


def export_bundle(audit: AuditLog, *, start: dt.datetime, end: dt.datetime, actor: str | None = None,
                  entity: str | None = None, subject: str | None = None, exported_by: str | None,
                  channel: str = "admin", server: str = "fieldsync",
                  exported_role: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A verifiable FHIR Bundle of the entries recorded in [start, end) matching the filters
    (see the module docstring), and what was exported. Like `export_audit`, the export is
    recorded first (action `export`; AuditUnavailable: no bundle), and holds the entries up to
    the last one counted; then a checkpoint is signed at the head, which the chain reaches.
    `exported_role`: the exporting user's role, recorded with the export (the admin UI's user)."""
    if end <= start:
        raise ValueError("the export period is empty: 'to' must be after 'from'")
    where = filter_clauses(start=start, end=end, actor=actor, entity=entity, subject=subject)
    with audit.snapshot() as conn:
        seqs = [s for s, subjects in conn.execute(sa.select(ENTRIES.c.seq, ENTRIES.c.subjects).where(*where)
                                                  .order_by(ENTRIES.c.seq))
                if subject is None or subject in json.loads(subjects)]
    through = seqs[-1] if seqs else 0
    detail = {"event": "audit-export", "format": "fhir-bundle", "from": iso(start), "to": iso(end),
              "entries": len(seqs), "through_seq": through, "include_reasons": False, "output": "download"}
    if actor is not None:
        detail["user_filter"] = actor
    export_seq = audit.record(AuditEvent(action="export", actor=exported_by, role=exported_role, channel=channel,
                                         entity=entity,
                                         subjects=(subject,) if subject else (), purpose="compliance",
                                         detail=detail))
    cp = audit.checkpoint()   # at the head: the export's own entry or later
    assert cp is not None     # the trail holds at least the export entry
    chosen = set(seqs)
    first = seqs[0] if seqs else cp.seq
    resources, chain = [], []
    with audit.snapshot() as conn:
        result = conn.execution_options(yield_per=1000).execute(
            sa.select(ENTRIES).where(ENTRIES.c.seq >= first, ENTRIES.c.seq <= cp.seq).order_by(ENTRIES.c.seq))
        try:
            for row in result.mappings():
                chain.append([row["seq"], row["prev_hash"], row["entry_hash"]])
                if row["seq"] in chosen:
                    resources.append(_audit_event(row, server))
        finally:
            result.close()
    statement = json.loads(cp.statement)
    bundle = {
        "resourceType": "Bundle",
        "id": f"fieldsync-audit-export-{export_seq}",
        "identifier": {"system": f"{BASE}/audit-exports", "value": f"{statement['log']}/{export_seq}"},
        "type": "collection",
        "timestamp": statement["signed_at"],
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
        "signature": {
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.5",
                      "display": "Verification Signature"}],
            "when": statement["signed_at"],
            "who": {"identifier": {"system": "https://fieldsync.dev/servers", "value": server}},
            "targetFormat": "application/json",
            "sigFormat": "application/octet-stream",
            "data": cp.signature,
            "extension": [{"url": PROOF_URL, "extension": [
                {"url": "statement", "valueString": cp.statement},
                {"url": "keyId", "valueString": cp.key_id},
                {"url": "chain", "valueString": json.dumps(chain, separators=(",", ":"))}]}],
        },
    }
    if not resources:
        del bundle["entry"]
    return bundle, {"entries": len(resources), "through_seq": through, "export_entry": export_seq,
                    "checkpoint": cp.seq}


@dataclass
class BundleReport:
    """The outcome of `verify_bundle`: `problems` names each one (empty when the bundle verifies)."""

    problems: list[str] = dc_field(default_factory=list)
    entries: int = 0
    signed_seq: int | None = None
    log_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.ok:
            return f"the export does NOT verify: {len(self.problems)} problem(s)"
        return (f"the export verifies: {self.entries} AuditEvent(s), chained to entry {self.signed_seq} of audit "
                f"log {self.log_id}, signed by the audit key")


def _sub(extensions: Iterable[Mapping[str, Any]], url: str) -> Any:
    for e in extensions or ():
        if e.get("url") == url:
            return e.get("valueString", e.get("extension"))
    return None


def verify_bundle(bundle: Any, public_keys: Sequence[Ed25519PublicKey], *, server: str | None = None) -> BundleReport:
    """Verify an exported audit bundle (a parsed JSON object) with the trusted `public_keys` (see
    the module docstring); never raises for a malformed file, it is reported. `server` is the
    name the AuditEvents name as their source (by default, the one the signature names)."""
    report = BundleReport()
    problems = report.problems
    try:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or bundle.get("type") != "collection":
            problems.append("the file is not a FHIR Bundle of type collection")
            return report
        signature = bundle.get("signature") or {}
        proof = _sub(signature.get("extension"), PROOF_URL)
        statement_text = _sub(proof, "statement")
        chain_text = _sub(proof, "chain")
        if not statement_text or not chain_text or not signature.get("data"):
            problems.append("the bundle has no signed audit checkpoint (Bundle.signature with its audit-chain-proof)")
            return report
        statement = json.loads(statement_text)
        signed_seq, signed_hash = int(statement["seq"]), str(statement["hash"])
        report.signed_seq, report.log_id = signed_seq, statement.get("log")
        checkpoint = Checkpoint(signed_seq, signed_hash, statement_text, signature["data"], _sub(proof, "keyId") or "")
        if not any(verify_signature(k, checkpoint) for k in public_keys):
            problems.append(f"the signature of the checkpoint at entry {signed_seq} does not verify with the audit "
                            "public key (the bundle was altered, or signed by another server)")
        chain = [(int(s), str(p), str(h)) for s, p, h in json.loads(chain_text)]
        links: dict[int, tuple[str, str]] = {}
        previous: tuple[int, str] | None = None
        for seq, prev, digest in chain:
            if previous is not None:
                if seq != previous[0] + 1:
                    problems.append(f"the chain skips from entry {previous[0]} to entry {seq} (entries were removed)")
                elif prev != previous[1]:
                    problems.append(f"entry {seq} does not follow entry {previous[0]}: the chain is broken there")
            links[seq] = (prev, digest)
            previous = (seq, digest)
        if previous is None or previous[0] != signed_seq or previous[1] != signed_hash:
            problems.append(f"the chain does not end at the signed entry {signed_seq} with its signed hash")
        who = ((signature.get("who") or {}).get("identifier") or {}).get("value") or "fieldsync"
        seen: set[int] = set()
        for item in bundle.get("entry") or []:
            report.entries += 1
            problems.extend(_check_event((item or {}).get("resource"), links, seen, server or who))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        problems.append(f"the bundle is malformed ({type(exc).__name__}: {str(exc)[:120]})")
    return report


def _check_event(resource: Any, links: Mapping[int, tuple[str, str]], seen: set[int], server: str) -> list[str]:
    """Problems of one AuditEvent of a bundle, named by its entry."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "AuditEvent":
        return ["a bundle entry is not an AuditEvent"]
    ext = next((e for e in resource.get("extension") or [] if e.get("url") == CHAIN_URL), None)
    stored_text = _sub(ext.get("extension") if ext else None, "storedRow")
    if not stored_text:
        return [f"AuditEvent {resource.get('id')} carries no stored entry (storedRow): it cannot be verified"]
    row = _from_stored(json.loads(stored_text))
    seq = int(row["seq"])
    if seq in seen:
        return [f"entry {seq} appears twice"]
    seen.add(seq)
    if seq not in links:
        return [f"entry {seq} is not in the signed chain (inserted)"]
    prev, digest = links[seq]
    if entry_hash(row) != digest or row["prev_hash"] != prev:
        return [f"entry {seq} was edited (its stored row does not hash to the signed chain's hash)"]
    row["entry_hash"] = digest
    if _audit_event(row, server) != resource:
        return [f"entry {seq} was edited (its AuditEvent does not match the stored entry)"]
    return []
