"""The tamper-evident audit trail of PHI access (invariant 8): the trail, its events, verification,
the anchor kept outside the database, and exports (docs/audit.md)."""
