"""The HTTP API: `create_app(config)` builds the Flask app (entity REST, OpenAPI, health)."""

from fieldsync.api.app import FieldsyncState, create_app

__all__ = ["FieldsyncState", "create_app"]
