"""Bearer tokens: signed, expiring, carrying a user's id, role and attributes."""

from fieldsync.auth.tokens import Principal, issue_token, verify_token

__all__ = ["Principal", "issue_token", "verify_token"]
