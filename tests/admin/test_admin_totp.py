"""The admin UI's login with a second factor: the TOTP secret is sealed under the key ring
(fieldsync.auth.totp_secrets) and the admin login opens it; a sealed secret moved to another
user's row is a refused login (401 page), never a 500."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fieldsync.auth import totp
from fieldsync.auth.users import set_user
from fieldsync.store.directory import USERS
from tests.admin.conftest import ROLE_USERS, AdminClient

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _enrol(app, role):
    state = app.extensions["fieldsync"]
    return set_user(state.engine, state.audit, state.model, ROLE_USERS[role], totp=True, actor="test",
                    keyring=state.crypto.keyring)


def test_an_enrolled_admin_logs_in_to_the_admin_ui_with_a_code(admin_app):
    secret = _enrol(admin_app, "admin")
    client = AdminClient(admin_app)
    refused = client.login(ROLE_USERS["admin"])
    assert refused.status_code == 401 and "one-time code" in client.text(refused)
    done = client.login(ROLE_USERS["admin"], totp=totp.totp(secret, admin_app.clock()))
    assert done.status_code == 302
    assert client.get("/admin/users/").status_code == 200


def test_a_sealed_secret_moved_to_another_admin_is_refused_in_the_admin_ui(admin_app):
    secret = _enrol(admin_app, "admin")
    _enrol(admin_app, "analyst")
    engine = admin_app.extensions["fieldsync"].engine
    with engine.begin() as conn:
        sealed = conn.execute(sa.select(USERS.c.totp_secret).where(USERS.c.user_id == ROLE_USERS["admin"])).scalar()
        conn.execute(USERS.update().where(USERS.c.user_id == ROLE_USERS["analyst"]).values(totp_secret=sealed))
    client = AdminClient(admin_app)
    refused = client.login(ROLE_USERS["analyst"], totp=totp.totp(secret, admin_app.clock()))
    assert refused.status_code == 401 and "one-time code is wrong" in client.text(refused)
    assert secret not in client.text(refused)
