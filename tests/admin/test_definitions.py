"""The Definitions view (docs/admin.md, "Definitions"): readable pages of the live model, the YAML
editor with validation as you type, the add-field and new-entity forms, the plan page, apply
(additive for analysts, destructive for admins with the flag), history and rollback; an apply
goes live without a restart (REST serves the new field, the admin app is rebuilt)."""

from __future__ import annotations

import html
import re
import shutil

import pytest
import yaml

from fieldsync.auth.tokens import issue_token
from fieldsync.defs import DefinitionErrors, build_model, read_sources
from fieldsync.store.versions import latest_version_id, list_versions
from tests.admin.conftest import SECRET, AdminClient
from tests.conftest import DEFS_DIR

# the tests that migrate (apply) run on PostgreSQL too; the others read the same code on SQLite only
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

BASE = "/admin/definitions"


@pytest.fixture
def defs(admin_app, tmp_path):
    """DEFS_DIR (tmp_path/defs) holding a copy of the example definitions."""
    target = tmp_path / "defs"
    shutil.copytree(DEFS_DIR, target)
    return target


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden {name} in the page"
    return html.unescape(found.group(1))


def apply_form(client: AdminClient, page: str, **extra):
    data = {"draft": hidden(page, "draft"), "digest": hidden(page, "digest"), **extra}
    return client.post(f"{BASE}/apply", data)


def audit_details(admin_app, event: str) -> list[dict]:
    trail = admin_app.extensions["fieldsync"].audit
    return [e.detail for e in trail.entries() if (e.detail or {}).get("event") == event]


def versions(admin_app) -> list[dict]:
    with admin_app.extensions["fieldsync"].engine.connect() as conn:
        return list_versions(conn)


EMAIL = {"name": "email", "type": "string", "required": "no", "max_length": "120"}
VISIT_NOTE = {"name": "visit_note", "kind": "transaction", "owner_role": "field_rep", "label": "Visit note",
              "name_0": "note", "type_0": "text", "required_0": "yes", "max_length_0": "2000",
              "name_1": "retailer_id", "type_1": "ref", "to_1": "retailer", "required_1": "yes",
              "name_2": "mood", "type_2": "enum", "values_2": "good, bad"}


# -- who sees it ----------------------------------------------------------------------------------

@sqlite_only
@pytest.mark.parametrize("role", ["admin", "analyst"])
def test_admin_and_analyst_read_the_entities(browser_as, defs, role):
    client = browser_as(role)
    page = client.get(f"{BASE}/")
    assert page.status_code == 200, client.text(page)
    text = client.text(page)
    assert 'id="fs-entities"' in text
    for name in ("retailer", "territory", "visit", "order", "order_line", "prescription"):
        assert f'id="fs-entity-{name}"' in text
    assert "masters/retailer.yaml" in text and "app.yaml" in text


@sqlite_only
def test_compliance_is_refused_and_anonymous_redirected(browser_as, admin_app, defs):
    compliance = browser_as("compliance")
    for path in ("/", "/entity/retailer", "/yaml/app.yaml", "/history", "/new-entity"):
        assert compliance.get(BASE + path).status_code == 403, path
    assert compliance.post(f"{BASE}/entity/retailer/add-field", EMAIL).status_code == 403
    assert compliance.client.post(f"{BASE}/validate", json={"path": "app.yaml", "text": "x"},
                                  headers={"X-CSRF-Token": compliance.csrf()}).status_code == 403
    anonymous = AdminClient(admin_app)
    response = anonymous.get(f"{BASE}/entity/retailer")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


@sqlite_only
def test_entity_page_shows_fields_children_sync_encryption_permissions(browser_as, defs):
    client = browser_as("analyst")
    text = client.text(client.get(f"{BASE}/entity/prescription"))
    assert 'id="fs-field-patient_name"' in text and "blind_index" in text and "PHI" in text
    assert 'id="fs-encryption"' in text and "deterministic" in text
    assert "reject_stale" in text and "30 days on prescribed_at" in text and "rep_id == $user.id" in text
    assert 'id="fs-permission-supervisor"' in text
    order = client.text(client.get(f"{BASE}/entity/order"))
    assert 'id="fs-children"' in order and "order_line" in order
    retailer = client.text(client.get(f"{BASE}/entity/retailer"))
    assert "max length 20" in retailer and "one of pharmacy, clinic" in retailer
    assert "territory_id in $user.territory_ids" in retailer and "field_merge" in retailer
    assert client.get(f"{BASE}/entity/nothing").status_code == 404


# -- the YAML editor ------------------------------------------------------------------------------

@sqlite_only
def test_editor_shows_the_file_and_checks_without_js(browser_as, defs):
    client = browser_as("analyst")
    page = client.get(f"{BASE}/yaml/masters/retailer.yaml")
    text = client.text(page)
    assert page.status_code == 200 and 'id="fs-yaml"' in text and "entity: retailer" in text
    assert "definitions.js" in text and 'id="fs-check"' in text
    nonce = page.headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert all(f'nonce="{nonce}"' in tag.split(">")[0] for tag in text.split("<script")[1:])
    broken = (defs / "masters" / "retailer.yaml").read_text().replace("max_length: 200", "max_length: lots")
    response = client.post(f"{BASE}/yaml/masters/retailer.yaml", {"text": broken, "action": "check"})
    assert response.status_code == 400
    sources = read_sources(defs)
    sources["masters/retailer.yaml"] = broken
    with pytest.raises(DefinitionErrors) as expected:
        build_model(sources, label="entity_defs")
    first = str(expected.value.errors[0])
    assert first.startswith("entity_defs/masters/retailer.yaml:")
    assert first in html.unescape(client.text(response))
    ok = client.post(f"{BASE}/yaml/masters/retailer.yaml", {"text": sources["masters/retailer.yaml"].replace(
        "lots", "200"), "action": "check"})
    assert ok.status_code == 200 and "valid" in client.text(ok)


@sqlite_only
def test_validate_endpoint_returns_the_cli_messages(browser_as, defs):
    client = browser_as("analyst")
    text = (defs / "transactions" / "visit.yaml").read_text().replace("to: retailer", "to: shop")
    response = client.client.post(f"{BASE}/validate", json={"path": "transactions/visit.yaml", "text": text},
                                  headers={"X-CSRF-Token": client.csrf()})
    assert response.status_code == 200
    result = response.get_json()
    assert result["valid"] is False
    assert any(re.match(r"entity_defs/transactions/visit\.yaml:\d+:\d+: fields\.retailer_id\.to: unknown entity 'shop'",
                        line) for line in result["errors"]), result
    good = client.client.post(f"{BASE}/validate", json={"path": "transactions/visit.yaml",
                                                        "text": (defs / "transactions" / "visit.yaml").read_text()},
                              headers={"X-CSRF-Token": client.csrf()}).get_json()
    assert good["valid"] is True and good["errors"] == []
    assert client.client.post(f"{BASE}/validate", json={"path": "../etc/passwd.yaml", "text": ""},
                              headers={"X-CSRF-Token": client.csrf()}).status_code == 400
    refused = client.client.post(f"{BASE}/validate", json={"path": "app.yaml", "text": "app: x"})
    assert refused.status_code == 400   # no CSRF header


@sqlite_only
def test_odd_text_is_a_4xx_or_a_message(browser_as, admin_app, defs):
    client = browser_as("analyst")
    headers = {"X-CSRF-Token": client.csrf()}
    for text in ("&a [*a]\n", "entity: x\x00\n", "a: [" * 3000, "\ufeffentity: shop\n"):
        response = client.client.post(f"{BASE}/validate", json={"path": "masters/shop.yaml", "text": text},
                                      headers=headers)
        assert response.status_code == 200 and response.get_json()["valid"] is False, text[:20]
    surrogate = client.client.post(f"{BASE}/validate", data='{"path": "app.yaml", "text": "\\ud800"}',
                                   content_type="application/json", headers=headers)
    assert surrogate.status_code == 400
    assert client.post(f"{BASE}/yaml/app.yaml", {"text": "&a [*a]", "action": "plan"}).status_code == 400
    bad_draft = '{"base": null, "files": {"app.yaml": "\\ud800"}}'
    assert client.post(f"{BASE}/apply", {"draft": bad_draft}).status_code == 400
    assert client.post(f"{BASE}/apply", {"draft": '{"base": true, "files": {}}'}).status_code == 400
    assert len(versions(admin_app)) == 1


@sqlite_only
def test_without_readable_definitions_the_pages_say_so(browser_as):
    client = browser_as("admin")       # DEFS_DIR does not exist and the start recorded no texts
    index = client.get(f"{BASE}/")
    assert index.status_code == 200 and "definitions directory not found" in client.text(index)
    assert 'id="fs-entity-retailer"' in client.text(index)          # the live model is still shown
    editor = client.get(f"{BASE}/yaml/app.yaml")
    assert editor.status_code == 409 and "definitions directory not found" in client.text(editor)


@sqlite_only
def test_paths_outside_the_definitions_are_not_files(browser_as, defs):
    client = browser_as("admin")
    assert client.get(f"{BASE}/yaml/../secret.yaml").status_code == 404
    assert client.get(f"{BASE}/yaml/masters/x.txt").status_code == 404


# -- forms, plan, apply ---------------------------------------------------------------------------

def test_analyst_adds_a_field_sees_the_plan_applies_and_rest_serves_it(browser_as, admin_app, defs, tmp_path):
    client = browser_as("analyst")
    form = client.get(f"{BASE}/entity/retailer/add-field")
    assert form.status_code == 200 and 'id="fs-field-name"' in client.text(form)
    plan = client.post(f"{BASE}/entity/retailer/add-field", EMAIL)
    text = client.text(plan)
    assert plan.status_code == 200, text
    assert "add column retailer.email" in text
    assert 'id="fs-raised"' in text                      # schema_version 1 -> 2, devices migrate
    diff_yaml = re.search(r'id="fs-diff-yaml"(.*?)</pre>', text, re.S).group(1)
    assert "+  email:" in diff_yaml and "+schema_version: 2" in diff_yaml
    assert "email" in re.search(r'id="fs-diff-openapi"(.*?)</pre>', text, re.S).group(1)
    assert "email" in re.search(r'id="fs-diff-device"(.*?)</pre>', text, re.S).group(1)
    assert 'id="fs-allow-destructive"' not in text
    before = latest_version_id_of(admin_app)
    mount = admin_app.extensions["fieldsync_admin"]
    admin_before, _ = mount.admin_app()

    applied = apply_form(client, text)
    assert applied.status_code == 302, client.text(applied)
    version = latest_version_id_of(admin_app)
    assert version != before and applied.headers["Location"].endswith(f"/history/{version}")
    assert "email:" in (defs / "masters" / "retailer.yaml").read_text()
    assert "schema_version: 2" in (defs / "app.yaml").read_text()
    assert "email" in (tmp_path / "generated" / "device" / "schema.sql").read_text()
    (detail,) = audit_details(admin_app, "definitions_applied")
    assert detail["version"] == version and "masters/retailer.yaml" in detail["files"]
    assert versions(admin_app)[-1]["applied_by"] == "ann-analyst"

    # REST, without a restart
    token = issue_token(SECRET, "ada-admin", "admin", {}, now=admin_app.clock())
    api = admin_app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    territory = api.post("/api/v1/territory", json={"code": "T-1", "name": "One", "region": "west"}, headers=headers)
    assert territory.status_code == 201, territory.get_data(as_text=True)
    created = api.post("/api/v1/retailer", json={"name": "Shop", "territory_id": territory.get_json()["id"],
                                                 "email": "shop@example.org"}, headers=headers)
    assert created.status_code == 201, created.get_data(as_text=True)
    got = api.get(f"/api/v1/retailer/{created.get_json()['id']}", headers=headers)
    assert got.status_code == 200 and got.get_json()["email"] == "shop@example.org"

    # the next admin request is served by an admin app built for the new version
    page = client.get(f"{BASE}/entity/retailer")
    assert 'id="fs-field-email"' in client.text(page)
    admin_after, snapshot = mount.admin_app()
    assert admin_after is not admin_before and snapshot.model.entity("retailer").has_field("email")


def latest_version_id_of(admin_app):
    with admin_app.extensions["fieldsync"].engine.connect() as conn:
        return latest_version_id(conn)


@sqlite_only
def test_analyst_creates_a_transaction_entity(browser_as, admin_app, defs):
    client = browser_as("analyst")
    assert 'id="fs-entity-name"' in client.text(client.get(f"{BASE}/new-entity"))
    plan = client.post(f"{BASE}/new-entity", VISIT_NOTE)
    text = client.text(plan)
    assert plan.status_code == 200, text
    assert "create table visit_note" in text and "transactions/visit_note.yaml" in text
    applied = apply_form(client, text)
    assert applied.status_code == 302, client.text(applied)
    written = yaml.safe_load((defs / "transactions" / "visit_note.yaml").read_text())
    assert written["owner"] == "rep_id" and written["sync"]["scope"] == "rep_id == $user.id"
    assert written["permissions"]["field_rep"]["actions"] == ["read", "create", "update"]
    _, snapshot = admin_app.extensions["fieldsync_admin"].admin_app()
    entity = snapshot.model.entity("visit_note")
    assert entity.kind == "transaction" and entity.field("mood").values == ("good", "bad")
    assert client.get(f"{BASE}/entity/visit_note").status_code == 200
    token = issue_token(SECRET, "ada-admin", "admin", {}, now=admin_app.clock())
    answer = admin_app.test_client().get("/api/v1/visit_note", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200


@sqlite_only
def test_bad_form_values_are_a_message_not_a_change(browser_as, admin_app, defs):
    client = browser_as("analyst")
    before = len(versions(admin_app))
    for data in ({**EMAIL, "name": "Bad Name"}, {**EMAIL, "name": "phone"}, {**EMAIL, "max_length": "many"},
                 {**EMAIL, "type": "blob"}, {**EMAIL, "name": "id"}, {**EMAIL, "type": "ref"},
                 {**EMAIL, "name": "x\x00"}):
        response = client.post(f"{BASE}/entity/retailer/add-field", data)
        assert response.status_code == 400, data
        assert "alert-danger" in client.text(response)
    assert client.post(f"{BASE}/new-entity", {**VISIT_NOTE, "name": "retailer", "kind": "master"}).status_code == 400
    assert client.post(f"{BASE}/new-entity", {"name": "empty", "kind": "transaction"}).status_code == 400
    assert client.post(f"{BASE}/new-entity", {**VISIT_NOTE, "kind": "other"}).status_code == 400
    invalid = client.post(f"{BASE}/entity/retailer/add-field", {**EMAIL, "pattern": "(unclosed"})
    assert invalid.status_code == 400 and 'id="fs-validation"' in client.text(invalid)
    assert 'id="fs-apply-form"' not in client.text(invalid)
    assert client.post(f"{BASE}/apply", {"draft": "{not json"}).status_code == 400
    assert client.post(f"{BASE}/apply", {"draft": '{"files": {"app.yaml": 3}}'}).status_code == 400
    assert len(versions(admin_app)) == before


@sqlite_only
def test_posts_without_csrf_are_refused(browser_as, admin_app, defs):
    client = browser_as("admin")
    plan = client.text(client.post(f"{BASE}/entity/retailer/add-field", EMAIL))
    before = len(versions(admin_app))
    data = {"draft": hidden(plan, "draft"), "digest": hidden(plan, "digest")}
    assert client.post(f"{BASE}/apply", data, csrf=False).status_code == 400
    assert client.post(f"{BASE}/entity/retailer/add-field", EMAIL, csrf=False).status_code == 400
    assert client.post(f"{BASE}/new-entity", VISIT_NOTE, csrf=False).status_code == 400
    assert client.post(f"{BASE}/history/1/rollback", {}, csrf=False).status_code == 400
    assert len(versions(admin_app)) == before


def _drop_category(defs) -> str:
    text = (defs / "masters" / "retailer.yaml").read_text()
    text = text.replace("  category:\n    type: enum\n    values: [pharmacy, clinic, general_store, distributor]\n", "")
    return text.replace("visible: [name, territory_id, category, credit_limit]",
                        "visible: [name, territory_id, credit_limit]")


def test_destructive_apply_needs_an_admin_with_the_flag(browser_as, admin_app, defs):
    edited = _drop_category(defs)
    analyst = browser_as("analyst")
    plan = analyst.post(f"{BASE}/yaml/masters/retailer.yaml", {"text": edited, "action": "plan"})
    text = analyst.text(plan)
    assert plan.status_code == 200, text
    assert "drop column retailer.category" in text and 'id="fs-destructive"' in text
    assert "Only an admin may apply this plan" in text and 'id="fs-apply"' not in text
    before = len(versions(admin_app))
    refused = apply_form(analyst, text)          # as if the button were there
    assert refused.status_code == 403
    assert "only an admin" in analyst.text(refused)
    assert len(versions(admin_app)) == before and "category:" in (defs / "masters" / "retailer.yaml").read_text()
    assert audit_details(admin_app, "definitions_apply_refused")

    admin = browser_as("admin")
    plan = admin.text(admin.post(f"{BASE}/yaml/masters/retailer.yaml", {"text": edited, "action": "plan"}))
    assert 'id="fs-allow-destructive"' in plan
    without = apply_form(admin, plan)
    assert without.status_code == 400 and "allow" in admin.text(without)
    assert len(versions(admin_app)) == before
    done = apply_form(admin, plan, allow_destructive="yes")
    assert done.status_code == 302, admin.text(done)
    assert "category:" not in (defs / "masters" / "retailer.yaml").read_text()
    (detail,) = audit_details(admin_app, "definitions_applied")
    assert detail["destructive_steps"] == 1


@sqlite_only
def test_a_plan_made_on_an_older_version_is_planned_again(browser_as, admin_app, defs):
    client = browser_as("analyst")
    first = client.text(client.post(f"{BASE}/entity/retailer/add-field", EMAIL))
    second = client.text(client.post(f"{BASE}/entity/territory/add-field", {**EMAIL, "name": "website"}))
    same_file = client.text(client.post(f"{BASE}/entity/retailer/add-field", {**EMAIL, "name": "fax"}))
    assert apply_form(client, first).status_code == 302
    stale = apply_form(client, second)
    assert stale.status_code == 409
    assert "was applied after you planned" in client.text(stale)
    again = apply_form(client, client.text(stale))
    assert again.status_code == 302, client.text(again)
    assert "email:" in (defs / "masters" / "retailer.yaml").read_text()
    assert "website:" in (defs / "masters" / "territory.yaml").read_text()
    # the same file, changed on the old version: merged (two fields added to one entity)
    merged = apply_form(client, same_file)
    assert merged.status_code == 409 and "your change is merged" in client.text(merged)
    assert "add column retailer.fax" in client.text(merged) and "retailer.email" not in client.text(merged)
    assert apply_form(client, client.text(merged)).status_code == 302
    text = (defs / "masters" / "retailer.yaml").read_text()
    assert "email:" in text and "fax:" in text


@sqlite_only
def test_a_clash_with_a_newer_version_is_shown_not_applied(browser_as, admin_app, defs):
    client = browser_as("analyst")
    original = (defs / "masters" / "retailer.yaml").read_text()
    line = "description: A shop, pharmacy or clinic a rep visits."
    ours = client.text(client.post(f"{BASE}/yaml/masters/retailer.yaml",
                                   {"text": original.replace(line, "description: Ours."), "action": "plan"}))
    theirs = client.text(client.post(f"{BASE}/yaml/masters/retailer.yaml",
                                     {"text": original.replace(line, "description: Theirs."), "action": "plan"}))
    assert apply_form(client, theirs).status_code == 302
    clash = apply_form(client, ours)
    assert clash.status_code == 409
    page = html.unescape(client.text(clash))
    assert "changed masters/retailer.yaml where you did" in page
    assert "-description: Theirs." in page and "+description: Ours." in page
    assert "description: Theirs." in (defs / "masters" / "retailer.yaml").read_text()


@sqlite_only
def test_history_version_page_and_rollback(browser_as, admin_app, defs):
    analyst = browser_as("analyst")
    plan = analyst.text(analyst.post(f"{BASE}/entity/retailer/add-field", EMAIL))
    assert apply_form(analyst, plan).status_code == 302
    first = latest_version_id_of(admin_app)
    plan = analyst.text(analyst.post(f"{BASE}/entity/retailer/add-field", {**EMAIL, "name": "website"}))
    assert apply_form(analyst, plan).status_code == 302
    second = latest_version_id_of(admin_app)

    page = analyst.text(analyst.get(f"{BASE}/history"))
    assert f'id="fs-version-{second}"' in page and "ann-analyst" in page and "add column retailer.website" in page
    assert "(server start)" in page
    version = analyst.text(analyst.get(f"{BASE}/history/{second}"))
    assert "+  website:" in version and 'id="fs-rollback"' in version
    assert analyst.get(f"{BASE}/history/999").status_code == 404

    rollback = analyst.post(f"{BASE}/history/{first}/rollback", {})
    text = analyst.text(rollback)
    assert rollback.status_code == 200, text
    assert "drop column retailer.website" in text and "Only an admin" in text
    assert apply_form(analyst, text).status_code == 403

    admin = browser_as("admin")
    text = admin.text(admin.post(f"{BASE}/history/{first}/rollback", {}))
    assert 'id="fs-raised"' in text       # the rollback's shape differs: schema_version goes up, not down
    done = apply_form(admin, text, allow_destructive="yes")
    assert done.status_code == 302, admin.text(done)
    assert "website:" not in (defs / "masters" / "retailer.yaml").read_text()
    details = audit_details(admin_app, "definitions_applied")
    assert details[-1]["rollback_of"] == first
    _, snapshot = admin_app.extensions["fieldsync_admin"].admin_app()
    assert not snapshot.model.entity("retailer").has_field("website")


@sqlite_only
def test_a_version_without_texts_cannot_be_rolled_back(browser_as, admin_app, defs):
    admin = browser_as("admin")
    (start,) = versions(admin_app)            # recorded by the server's start, without texts
    page = admin.text(admin.get(f"{BASE}/history/{start['id']}"))
    assert "not recorded" in page and 'id="fs-rollback"' not in page
    assert admin.post(f"{BASE}/history/{start['id']}/rollback", {}).status_code == 404
