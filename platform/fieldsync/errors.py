"""The one exception hierarchy of fieldsync.

    Error                      base of everything fieldsync raises on purpose
     +-- ConfigError           configuration is missing or invalid
     +-- AuthError             a token is missing, malformed, expired or forged
     +-- PermissionDenied      the user's role may not do this
     +-- NotFound              no such entity or record
     +-- ValidationFailed      a record's values were refused (.problems lists field and reason)
     +-- Conflict              a write met a newer version (stale If-Match / base version)
     +-- MigrationRefused      a schema change needs --allow-destructive

Definition errors (fieldsync.defs.DefinitionErrors) are raised while loading the YAML, and are
not Error subclasses: they describe the analyst's files, not a run-time condition.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of fieldsync's errors."""


class ConfigError(Error):
    pass


class AuthError(Error):
    pass


class PermissionDenied(Error):
    pass


class NotFound(Error):
    pass


class ValidationFailed(Error):
    def __init__(self, problems, message: str = "the record has invalid fields"):
        super().__init__(message)
        self.problems = list(problems)


class Conflict(Error):
    pass


class MigrationRefused(Error):
    def __init__(self, steps, message: str):
        super().__init__(message)
        self.steps = list(steps)
