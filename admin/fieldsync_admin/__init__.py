"""The admin UI: Flask-Admin at `/admin`, its own package mounted by the server (docs/admin.md).

`mount(app)` wraps the fieldsync app's WSGI callable so that `/admin/...` goes to an admin app
built from the live model: when another model version is applied the next admin request is
served by an admin app built for it (the data views are generated per entity), while requests
in flight finish on the one they started with.
"""

from fieldsync_admin.mount import AdminMount, mount

__all__ = ["AdminMount", "mount"]
