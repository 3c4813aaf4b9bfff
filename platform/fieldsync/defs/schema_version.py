"""`schema_version` must rise whenever the storage shape does.

Devices compare schema versions to learn that they must migrate (docs/protocol.md §7.2); a
change of the storage shape (entities, fields and what `Model.fingerprint` covers: types,
required, unique, precision, scale, enum values, references, encryption) under an unchanged
version would reach the server and never the devices. `generate` compares the definitions with
the last generated device schema, `migrate`, `serve` and `run` with the model last applied to
the database (`fs_schema`), and refuse such a change, or a lowered version, with this message.
"""

from __future__ import annotations

from fieldsync.defs.model import Model

__all__ = ["unraised_version"]


def unraised_version(model: Model, recorded_version: int | None, recorded_fingerprint: str | None,
                     where: str) -> str | None:
    """Why `model` may not follow the recorded (version, fingerprint) found in `where`, or None."""
    if recorded_version is None or not recorded_fingerprint:
        return None
    version = model.schema_version
    if version < recorded_version:
        return (f"schema_version was lowered: {where} has version {recorded_version}, the definitions say {version}; "
                f"a version is never lowered (devices on {recorded_version} would never migrate back)")
    if version == recorded_version and model.fingerprint() != recorded_fingerprint:
        return (f"the storage shape changed since {where} (fingerprint {recorded_fingerprint} -> "
                f"{model.fingerprint()}) but schema_version is still {version}: raise schema_version in "
                f"app.yaml to {version + 1}, or devices never learn of the change")
    return None
