"""The sync rules preview (docs/admin.md "Sync rules preview"): who sees it, what a user's or a
role's device would receive by pull's own rules, the side-by-side counts under proposed
definitions (a changed scope, a new field, a new entity, definitions that do not build), PHI
masking by the viewer's live rights, the audit entry, read-only-ness and CSRF refusal."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import sqlalchemy as sa

from fieldsync.auth.tokens import Principal
from fieldsync.auth.users import add_user, get_user
from fieldsync.defs import read_sources
from fieldsync.store.changelog import head_position
from fieldsync.sync.pull import PullRequest, pull_page
from fieldsync.sync.scope import device_scope
from fieldsync.ids import utc_now
from tests.admin.conftest import PASSWORD, AdminClient
from tests.conftest import DEFS_DIR

PATIENT = "Ravi Deshpande"


_sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)   # the SQL is exercised on PostgreSQL by the tests left on both

@pytest.fixture
def world(admin_app):
    """Two territories; two retailers in the first, one in the second; a product; rep-one works
    in the first territory and wrote a prescription (PHI)."""
    state = admin_app.extensions["fieldsync"]
    store = state.store
    t1 = store.create("territory", {"code": "PUNE-1", "name": "Pune", "region": "west"})
    t2 = store.create("territory", {"code": "NASIK-1", "name": "Nasik", "region": "west"})
    r1 = store.create("retailer", {"name": "Sai Medical", "territory_id": t1["id"], "phone": "+91 20 2553 1100",
                                   "category": "pharmacy"})
    store.create("retailer", {"name": "Shree Clinic", "territory_id": t1["id"], "category": "clinic"})
    store.create("retailer", {"name": "Patil Kendra", "territory_id": t2["id"], "category": "distributor"})
    product = store.create("product", {"sku": "AMX-500", "name": "Amoxicillin", "category": "pharma",
                                       "unit_price": "12.50"})
    store.create("prescription", {"rep_id": "rep-one", "retailer_id": r1["id"], "territory_id": t1["id"],
                                  "patient_id": "0b9a3f64-3c55-4c2b-9d0e-6a1f2f7a1b11", "patient_name": PATIENT,
                                  "patient_dob": "1961-04-02", "diagnosis": "otitis media", "product_id": product["id"],
                                  "prescribed_at": "2026-12-01T10:00:00Z"})
    add_user(state.engine, state.audit, state.model, "rep-one", role="field_rep", password=PASSWORD,
             attributes={"territory_ids": [t1["id"]]}, actor="test", now=admin_app.clock())
    return {"state": state, "t1": t1, "t2": t2}


def _preview(client, **form):
    return client.post("/admin/preview/", form)


def _count(html: str, entity: str) -> str:
    return html.split(f'id="fs-count-{entity}"')[1].split('class="text-right fs-count">')[1].split("<")[0]


def _compare(html: str, entity: str) -> tuple[str, str]:
    row = html.split(f'id="fs-compare-{entity}"')[1].split("</tr>")[0]
    return (row.split('fs-current">')[1].split("<")[0], row.split('fs-proposed">')[1].split("<")[0])


def _definitions(**changes) -> str:
    sources = read_sources(DEFS_DIR)
    sources.update(changes)
    return json.dumps(sources)


def _entries(state, event="sync_preview"):
    return [e for e in state.audit.entries() if (e.detail or {}).get("event") == event]


# -- who sees it ----------------------------------------------------------------------------------

@_sqlite_only
def test_anonymous_is_sent_to_login(admin_app):
    response = AdminClient(admin_app).get("/admin/preview/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


@_sqlite_only
def test_compliance_is_refused(browser_as):
    client = browser_as("compliance")
    assert client.get("/admin/preview/").status_code == 403
    assert _preview(client, mode="user", user="ann-analyst").status_code == 403
    assert 'href="/admin/preview/"' not in client.text(client.get("/admin/"))


@pytest.mark.parametrize("role", ["admin", "analyst"])
@_sqlite_only
def test_admin_and_analyst_see_the_form(browser_as, world, role):
    client = browser_as(role)
    assert 'href="/admin/preview/"' in client.text(client.get("/admin/"))
    page = client.get("/admin/preview/")
    html = client.text(page)
    assert page.status_code == 200 and 'id="fs-preview-form"' in html
    assert '<option value="rep-one"' in html                     # the directory's users
    assert 'name="attr.territory_ids"' in html and 'name="attr.region"' in html   # roles.yaml's attributes


# -- what it shows -------------------------------------------------------------------------------

def test_a_users_device_as_pull_would_fill_it(browser_as, world):
    client = browser_as("admin")
    response = _preview(client, mode="user", user="rep-one")
    html = client.text(response)
    assert response.status_code == 200, html
    assert (_count(html, "territory"), _count(html, "retailer"), _count(html, "product")) == ("1", "2", "1")
    assert 'id="fs-count-prescription"' not in html               # push-only: never pulled
    assert "Sai Medical" in html and "Shree Clinic" in html and "Patil Kendra" not in html
    assert "+91 20 2553 1100" in html                              # admin may read a retailer's phone
    # the same counts a real first pull sends
    state = world["state"]
    user = get_user(state.engine, "rep-one")
    principal = Principal(user.user_id, user.role, dict(user.attributes))
    scope = device_scope(state.model, principal, utc_now(), state.store.codec)
    with state.engine.connect() as conn:
        page = pull_page(conn, state.store, scope, PullRequest(device_id="x", cursor=0, limit=1000),
                         secret=b"s" * 32, now=None)
    upserts = [c["entity"] for c in page["changes"] if c["kind"] == "upsert"]
    assert (upserts.count("territory"), upserts.count("retailer"), upserts.count("product")) == (1, 2, 1)


@_sqlite_only
def test_analyst_sees_fields_outside_their_rights_masked(browser_as, world):
    client = browser_as("analyst")
    html = client.text(_preview(client, mode="user", user="rep-one"))
    sample = html.split('id="fs-sample-retailer"')[1].split("</table>")[0]
    assert "Sai Medical" in sample
    assert "+91 20 2553 1100" not in html and "fs-masked" in sample   # analysts may not read phone


@_sqlite_only
def test_a_role_with_attributes(browser_as, world):
    client = browser_as("analyst")
    html = client.text(_preview(client, mode="role", role="field_rep", **{"attr.territory_ids": world["t2"]["id"]}))
    assert (_count(html, "territory"), _count(html, "retailer")) == ("1", "1")
    assert "Patil Kendra" in html and "Sai Medical" not in html
    both = f'{world["t1"]["id"]}, {world["t2"]["id"]}'
    html = client.text(_preview(client, mode="role", role="field_rep", **{"attr.territory_ids": both}))
    assert _count(html, "retailer") == "3"
    # an admin's device pulls every retailer (no row filter, scope on attributes it lacks)
    html = client.text(_preview(client, mode="role", role="supervisor", **{"attr.region": "west"}))
    assert 'id="fs-preview-result"' in html


@pytest.mark.parametrize("form, message", [
    ({"mode": "user", "user": ""}, "pick a user"),
    ({"mode": "user", "user": "nobody"}, "no user"),
    ({"mode": "user", "user": "a\x00b"}, "NUL"),
    ({"mode": "role", "role": "pilot"}, "unknown role"),
    ({"mode": "role", "role": "field_rep", "attr.territory_ids": "not-a-uuid"}, "territory_ids"),
    ({"mode": "user", "user": "rep-one", "definitions": "{not json"}, "not JSON"),
    ({"mode": "user", "user": "rep-one", "definitions": "[1, 2]"}, "an object"),
    ({"mode": "user", "user": "rep-one", "definitions": '{"a.yaml": 3}'}, "an object"),
])
@_sqlite_only
def test_bad_input_is_a_400_with_a_message(browser_as, world, form, message):
    client = browser_as("admin")
    response = _preview(client, **form)
    assert response.status_code == 400
    assert message in client.text(response)


# -- before a rule change is applied ------------------------------------------------------------

def test_proposed_scope_change_side_by_side(browser_as, world):
    client = browser_as("analyst")
    retailer = read_sources(DEFS_DIR)["masters/retailer.yaml"]
    widened = retailer.replace('  scope: "territory_id in $user.territory_ids"\n', "")
    assert widened != retailer
    html = client.text(_preview(client, mode="user", user="rep-one", definitions=_definitions(**{
        "masters/retailer.yaml": widened})))
    assert 'id="fs-preview-comparison"' in html
    # the rep's row filter still holds on top of the scope: the same 2
    assert _compare(html, "retailer") == ("2", "2")
    no_filter = widened.replace('    row_filter: "territory_id in $user.territory_ids"\n', "")
    html = client.text(_preview(client, mode="user", user="rep-one", definitions=_definitions(**{
        "masters/retailer.yaml": no_filter})))
    assert _compare(html, "retailer") == ("2", "3") and _compare(html, "territory") == ("1", "1")
    assert "Patil Kendra" in html                         # the sample is the proposed rules'
    pull_only = read_sources(DEFS_DIR)["masters/product.yaml"].replace("direction: pull", "direction: push")
    html = client.text(_preview(client, mode="user", user="rep-one", definitions=_definitions(**{
        "masters/product.yaml": pull_only})))
    assert _compare(html, "product") == ("1", "not pulled")


@_sqlite_only
def test_proposed_field_and_entity_not_in_the_database_yet(browser_as, world):
    state = world["state"]
    client = browser_as("admin")
    retailer = read_sources(DEFS_DIR)["masters/retailer.yaml"].replace(
        "  category:\n", "  owner_name:\n    type: string\n    max_length: 100\n  category:\n")
    depot = ("entity: depot\nkind: master\nfields:\n  name:\n    type: string\n    required: true\n"
             "permissions:\n  field_rep:\n    actions: [read]\n  admin:\n    actions: [read]\n"
             "sync:\n  direction: pull\n")
    with state.engine.connect() as conn:
        head = head_position(conn)
        columns = {c["name"] for c in sa.inspect(conn).get_columns("retailer")}
    html = client.text(_preview(client, mode="user", user="rep-one", definitions=_definitions(**{
        "masters/retailer.yaml": retailer, "masters/depot.yaml": depot})))
    assert _compare(html, "retailer") == ("2", "2")
    assert _compare(html, "depot") == ("not pulled", "0")
    sample = html.split('id="fs-sample-retailer"')[1].split("</table>")[0]
    assert "<th>owner_name</th>" in sample and "fs-masked" in sample   # not a live field: masked
    # read-only: nothing was migrated or written
    with state.engine.connect() as conn:
        assert head_position(conn) == head
        assert {c["name"] for c in sa.inspect(conn).get_columns("retailer")} == columns
        assert not sa.inspect(conn).has_table("depot")


@_sqlite_only
def test_partial_definitions_lay_over_defs_dir(admin_app, browser_as, world):
    shutil.copytree(DEFS_DIR, admin_app.extensions["fieldsync"].config["DEFS_DIR"])
    client = browser_as("admin")
    no_scope = read_sources(DEFS_DIR)["masters/retailer.yaml"].replace(
        '  scope: "territory_id in $user.territory_ids"\n', "").replace(
        '    row_filter: "territory_id in $user.territory_ids"\n', "")
    html = client.text(_preview(client, mode="user", user="rep-one",
                                definitions=json.dumps({"masters/retailer.yaml": no_scope})))
    assert _compare(html, "retailer") == ("2", "3")
    html = client.text(_preview(client, mode="user", user="rep-one",
                                definitions=json.dumps({"masters/product.yaml": None})))
    assert 'id="fs-preview-errors"' in html               # the model without products does not build


@_sqlite_only
def test_definitions_that_do_not_build_show_their_errors(browser_as, world):
    client = browser_as("admin")
    broken = read_sources(DEFS_DIR)["masters/retailer.yaml"].replace("type: decimal", "type: money")
    response = _preview(client, mode="user", user="rep-one", definitions=_definitions(**{
        "masters/retailer.yaml": broken}))
    html = client.text(response)
    assert response.status_code == 200
    errors = html.split('id="fs-preview-errors"')[1].split("</div>")[0]
    assert re.search(r"retailer\.yaml:\d+:\d+", errors), errors     # file:line:column, as `fieldsync validate`
    assert _count(html, "retailer") == "2"                # the current rules are still shown


@_sqlite_only
def test_phi_is_masked_by_the_viewers_live_rights(browser_as, world):
    """A proposed rule that makes prescriptions pull and gives admins their patient fields
    shows the admin no PHI: the sample follows the viewer's live rights."""
    client = browser_as("admin")
    prescription = read_sources(DEFS_DIR)["transactions/prescription.yaml"]
    proposed = prescription.replace("direction: push", "direction: both").replace(
        "    visible: [rep_id, retailer_id, territory_id, product_id, prescribed_at]\n", "")
    assert proposed.count("direction: both") == 1
    html = client.text(_preview(client, mode="user", user="rep-one", definitions=_definitions(**{
        "transactions/prescription.yaml": proposed})))
    assert _compare(html, "prescription") == ("not pulled", "1")
    sample = html.split('id="fs-sample-prescription"')[1].split("</table>")[0]
    assert PATIENT not in html and "otitis" not in html and "1961-04-02" not in html
    # the four PHI fields and dosage: outside the admin's live visible list
    assert sample.count("fs-masked") == 5
    # no PHI was shown, so none was audited as read by the admin
    assert not [e for e in world["state"].audit.entries(actor="ada-admin") if e.action == "read" and e.fields]


# -- audit, CSRF ------------------------------------------------------------------------------------

@_sqlite_only
def test_every_preview_is_audited(browser_as, world):
    client = browser_as("analyst")
    _preview(client, mode="user", user="rep-one")
    _preview(client, mode="role", role="field_rep", user_id="rep-x", **{"attr.territory_ids": world["t1"]["id"]})
    entries = _entries(world["state"])
    assert [(e.action, e.actor, e.role, e.channel) for e in entries] == [("read", "ann-analyst", "analyst", "admin")] * 2
    assert [(e.detail["previewed_user"], e.detail["directory_user"]) for e in entries] == [
        ("rep-one", True), ("rep-x", False)]
    _preview(client, mode="user", user="nobody")          # refused input: nothing previewed, nothing audited
    assert len(_entries(world["state"])) == 2


@_sqlite_only
def test_post_without_csrf_is_refused(browser_as, world):
    client = browser_as("admin")
    response = client.post("/admin/preview/", {"mode": "user", "user": "rep-one"}, csrf=False)
    assert response.status_code == 400
    assert _entries(world["state"]) == []


@_sqlite_only
def test_get_with_query_previews_too(browser_as, world):
    client = browser_as("admin")
    response = client.get("/admin/preview/?mode=user&user=rep-one")
    assert response.status_code == 200 and _count(client.text(response), "retailer") == "2"


@pytest.mark.parametrize("old, new", [
    ("  phone:\n    type: string", "  phone:\n    type: date"),
    ("  credit_limit:\n    type: decimal", "  credit_limit:\n    type: integer"),
    ("  location:\n    type: geopoint", "  location:\n    type: boolean"),
    ('  scope: "territory_id in $user.territory_ids"', '  scope: "name == $user.region"'),
])
@_sqlite_only
def test_a_changed_field_type_is_never_a_500(browser_as, world, old, new):
    client = browser_as("admin")
    retailer = read_sources(DEFS_DIR)["masters/retailer.yaml"]
    assert old in retailer
    response = _preview(client, mode="user", user="rep-one", definitions=_definitions(**{
        "masters/retailer.yaml": retailer.replace(old, new, 1)}))
    html = client.text(response)
    assert response.status_code == 200, html
    assert _count(html, "retailer") == "2" if 'id="fs-preview-errors"' in html else _compare(html, "retailer")[0] == "2"


@_sqlite_only
def test_phi_the_viewer_may_read_is_shown_and_audited(browser_as, world):
    """Under live rules that let admins read prescriptions' patient fields and make them pull,
    the admin sees the PHI in the sample, and the trail has the read (invariant 8)."""
    from fieldsync.defs import build_model
    state = world["state"]
    sources = read_sources(DEFS_DIR)
    sources["transactions/prescription.yaml"] = sources["transactions/prescription.yaml"].replace(
        "direction: push", "direction: both").replace(
        "    visible: [rep_id, retailer_id, territory_id, product_id, prescribed_at]\n", "")
    state.swap_model(build_model(sources))
    client = browser_as("admin")
    html = client.text(_preview(client, mode="user", user="rep-one"))
    assert _count(html, "prescription") == "1"
    assert PATIENT in html
    reads = [e for e in state.audit.entries(actor="ada-admin") if e.action == "read" and e.fields]
    assert len(reads) == 1
    assert reads[0].channel == "admin" and reads[0].entity == "prescription"
    assert {"patient_name", "diagnosis"} <= set(reads[0].fields) and reads[0].subjects
    # an analyst, whose live rights exclude them, still sees no PHI
    analyst = browser_as("analyst")
    assert PATIENT not in analyst.text(_preview(analyst, mode="user", user="rep-one"))
