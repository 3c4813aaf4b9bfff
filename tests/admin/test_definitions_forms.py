"""The rule forms of the Definitions view (docs/admin.md, "Editing with forms"): an entity's sync
rule, permissions per role and encryption policies, edited as forms that rewrite just the
entries they change, validated as `fieldsync validate` does, planned and applied on the same
plan page as every edit (REST and the applied model follow)."""

from __future__ import annotations

import difflib
import re

import pytest
import yaml

from fieldsync.auth.tokens import issue_token
from tests.admin.conftest import SECRET, AdminClient
from tests.admin.test_definitions import (BASE, apply_form, audit_details, defs, hidden,  # noqa: F401 (defs: a fixture)
                                         sqlite_only, versions)

ROLES = ("field_rep", "supervisor", "admin", "analyst", "compliance")


def snapshot_model(admin_app):
    _, snapshot = admin_app.extensions["fieldsync_admin"].admin_app()
    return snapshot.model


def yaml_diff(text: str) -> str:
    return re.search(r'id="fs-diff-yaml"(.*?)</pre>', text, re.S).group(1)


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines only in `before`, and only in `after` (the rest of the file is kept)."""
    diff = list(difflib.unified_diff(before.split("\n"), after.split("\n"), lineterm="", n=0))[2:]
    return [x[1:] for x in diff if x.startswith("-")], [x[1:] for x in diff if x.startswith("+")]


def permissions_form(entity_yaml: dict, fields: tuple[str, ...], **override) -> dict:
    """The permissions form as the page posts it for `entity_yaml`'s permissions, with
    `override` ({role: spec or None}) in place of some roles'."""
    current = {**entity_yaml.get("permissions", {}), **override}
    data: dict[str, list[str]] = {}
    for role in ROLES:
        spec = current.get(role)
        if not spec:
            continue
        data[f"actions_{role}"] = list(spec["actions"])
        for key in ("visible", "editable"):
            if spec.get(key) is None:
                data[f"{key}_{role}_all"] = ["yes"]
            data[f"{key}_{role}"] = list(spec.get(key) or ())
        if spec.get("row_filter"):
            data[f"row_filter_{role}"] = [spec["row_filter"]]
        if spec.get("break_glass"):
            data[f"break_glass_{role}"] = ["yes"]
    return data


def encryption_form(model, entity: str, **override) -> dict:
    data = {}
    for f in model.entity(entity).fields:
        mode, phi = override.get(f.name, (f.encryption, f.phi))
        data[f"mode_{f.name}"] = mode
        if phi:
            data[f"phi_{f.name}"] = "yes"
    return data


PRESCRIPTION_SYNC = {"direction": "push", "scope": "rep_id == $user.id", "window": "30d",
                     "window_field": "prescribed_at", "conflict": "reject_stale", "priority": "60"}


# -- who sees the forms ---------------------------------------------------------------------------

@sqlite_only
@pytest.mark.parametrize("role", ["admin", "analyst"])
def test_entity_page_links_the_forms_prefilled_from_the_file(browser_as, defs, role):
    client = browser_as(role)
    page = client.text(client.get(f"{BASE}/entity/prescription"))
    for button in ("fs-edit-sync", "fs-edit-permissions", "fs-edit-encryption"):
        assert f'id="{button}"' in page
    assert f'{BASE}/entity/prescription/encryption#fs-enc-patient_name' in page
    sync = client.get(f"{BASE}/entity/prescription/sync")
    text = client.text(sync)
    assert sync.status_code == 200 and 'id="fs-sync-form"' in text
    assert re.search(r'<option value="reject_stale" selected>', text)
    assert re.search(r'<option value="push" selected>', text)
    assert 'id="fs-sync-window" name="window" value="30d"' in text
    assert re.search(r'<option value="prescribed_at" selected>', text)
    perms = client.text(client.get(f"{BASE}/entity/prescription/permissions"))
    assert 'id="fs-permissions-form"' in perms
    for r in ROLES:
        assert f'id="fs-perm-{r}"' in perms
    assert re.search(r'id="fs-perm-supervisor-break-glass"[^>]*checked', perms)
    assert not re.search(r'id="fs-perm-analyst-break-glass"[^>]*checked', perms)
    assert re.search(r'id="fs-perm-field_rep-create"[^>]*checked', perms)
    assert not re.search(r'id="fs-perm-field_rep-delete"[^>]*checked', perms)
    assert re.search(r'id="fs-perm-analyst-visible-product_id"[^>]*checked', perms)
    assert not re.search(r'id="fs-perm-analyst-visible-patient_name"[^>]*checked', perms)
    enc = client.text(client.get(f"{BASE}/entity/prescription/encryption"))
    assert 'id="fs-encryption-form"' in enc and 'id="fs-enc-patient_name"' in enc
    assert re.search(r'id="fs-enc-patient_name-mode".*?<option value="blind_index" selected>', enc, re.S)
    assert re.search(r'id="fs-enc-patient_name-phi"[^>]*checked', enc)
    master = client.text(client.get(f"{BASE}/entity/retailer/sync"))
    assert 'id="fs-sync-window"' not in master          # only transactions have a window


@sqlite_only
def test_compliance_is_refused_anonymous_redirected_children_and_unknowns_404(browser_as, admin_app, defs):
    compliance = browser_as("compliance")
    for form in ("sync", "permissions", "encryption"):
        assert compliance.get(f"{BASE}/entity/retailer/{form}").status_code == 403
        assert compliance.post(f"{BASE}/entity/retailer/{form}", {"direction": "pull"}).status_code == 403
        response = AdminClient(admin_app).get(f"{BASE}/entity/retailer/{form}")
        assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    analyst = browser_as("analyst")
    for form in ("sync", "permissions", "encryption"):
        assert analyst.get(f"{BASE}/entity/order_line/{form}").status_code == 404
        assert analyst.get(f"{BASE}/entity/nothing/{form}").status_code == 404
    child = analyst.text(analyst.get(f"{BASE}/entity/order_line"))
    assert 'id="fs-edit-sync"' not in child


# -- sync rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["analyst", "admin"])
def test_sync_window_change_is_planned_applied_and_in_the_model(browser_as, admin_app, defs, role):
    client = browser_as(role)
    before = (defs / "transactions" / "prescription.yaml").read_text()
    plan = client.post(f"{BASE}/entity/prescription/sync", {**PRESCRIPTION_SYNC, "window": "60d", "priority": "55"})
    text = client.text(plan)
    assert plan.status_code == 200, text
    assert "Plan: change the sync rule of prescription" in text and 'id="fs-apply-form"' in text
    diff = yaml_diff(text)
    assert "-  window: 30d" in diff and "+  window: 60d" in diff and "+  priority: 55" in diff
    applied = apply_form(client, text)
    assert applied.status_code == 302, client.text(applied)
    after = (defs / "transactions" / "prescription.yaml").read_text()
    removed, added = changed_lines(before, after)
    assert removed == ["  window: 30d", "  priority: 60"] and added == ["  window: 60d", "  priority: 55"]
    rule = snapshot_model(admin_app).entity("prescription").sync
    assert rule.window_days == 60 and rule.priority == 55 and rule.window_field == "prescribed_at"
    assert versions(admin_app)[-1]["applied_by"] == {"analyst": "ann-analyst", "admin": "ada-admin"}[role]
    (detail,) = audit_details(admin_app, "definitions_applied")
    assert detail["files"] == ["transactions/prescription.yaml"]
    page = client.text(client.get(f"{BASE}/entity/prescription"))
    assert "60 days on prescribed_at" in page


@sqlite_only
def test_sync_keys_emptied_are_removed_and_a_new_block_is_written(browser_as, admin_app, defs):
    client = browser_as("analyst")
    # retailer: the scope removed (every row the role may read), direction pull
    plan = client.post(f"{BASE}/entity/retailer/sync", {"direction": "pull", "scope": "", "conflict": "field_merge",
                                                        "priority": "30"})
    text = client.text(plan)
    assert plan.status_code == 200, text
    diff = yaml_diff(text)
    assert "-  scope: &#34;territory_id in $user.territory_ids&#34;" in diff and "+  direction: pull" in diff
    assert apply_form(client, text).status_code == 302
    rule = snapshot_model(admin_app).entity("retailer").sync
    assert rule.direction == "pull" and rule.scope_source is None and rule.conflict == "field_merge"


@sqlite_only
def test_bad_sync_values_return_the_form_with_a_message(browser_as, admin_app, defs):
    client = browser_as("analyst")
    before = len(versions(admin_app))
    for data in ({**PRESCRIPTION_SYNC, "window": "soon"}, {**PRESCRIPTION_SYNC, "window": "0d"},
                 {**PRESCRIPTION_SYNC, "direction": "sideways"}, {**PRESCRIPTION_SYNC, "conflict": "coin_toss"},
                 {**PRESCRIPTION_SYNC, "priority": "-1"}, {**PRESCRIPTION_SYNC, "priority": "high"},
                 {**PRESCRIPTION_SYNC, "window": "9" * 30 + "d"}, {**PRESCRIPTION_SYNC, "priority": "9" * 400},
                 {**PRESCRIPTION_SYNC, "window": "", "window_field": "prescribed_at"},
                 {**PRESCRIPTION_SYNC, "scope": "x\x00"}):
        response = client.post(f"{BASE}/entity/prescription/sync", data)
        assert response.status_code == 400, data
        assert "alert-danger" in client.text(response) and 'id="fs-sync-form"' in client.text(response)
    master = client.post(f"{BASE}/entity/retailer/sync", {"direction": "pull", "window": "30d"})
    assert master.status_code == 400 and "only transactions" in client.text(master)
    # an expression that does not parse: the loader's file:line:column message, no plan
    broken = client.post(f"{BASE}/entity/prescription/sync", {**PRESCRIPTION_SYNC, "scope": "rep_id == "})
    text = client.text(broken)
    assert broken.status_code == 400 and 'id="fs-apply-form"' not in text
    assert re.search(r"entity_defs/transactions/prescription\.yaml:\d+:\d+: sync\.scope", text)
    assert 'value="rep_id == "' in text                  # the form keeps what was typed
    unknown = client.post(f"{BASE}/entity/prescription/sync", {**PRESCRIPTION_SYNC, "window_field": "dosage"})
    assert unknown.status_code == 400 and "sync.window_field" in client.text(unknown)
    same = client.post(f"{BASE}/entity/prescription/sync", PRESCRIPTION_SYNC)
    assert same.status_code == 200 and "nothing to change" in client.text(same)
    assert len(versions(admin_app)) == before


# -- permissions ----------------------------------------------------------------------------------

def _analyst_lists_retailers(admin_app) -> int:
    token = issue_token(SECRET, "ann-analyst", "analyst", {}, now=admin_app.clock())
    return admin_app.test_client().get("/api/v1/retailer", headers={"Authorization": f"Bearer {token}"}).status_code


@sqlite_only
@pytest.mark.parametrize("role", ["analyst", "admin"])
def test_a_permission_removed_makes_rest_refuse_that_role(browser_as, admin_app, defs, role):
    assert _analyst_lists_retailers(admin_app) == 200
    client = browser_as(role)
    before = (defs / "masters" / "retailer.yaml").read_text()
    data = yaml.safe_load(before)
    fields = snapshot_model(admin_app).entity("retailer").field_names
    plan = client.post(f"{BASE}/entity/retailer/permissions", permissions_form(data, fields, analyst=None))
    text = client.text(plan)
    assert plan.status_code == 200, text
    assert "Plan: change the permissions of retailer" in text
    assert apply_form(client, text).status_code == 302
    after = (defs / "masters" / "retailer.yaml").read_text()
    removed, added = changed_lines(before, after)
    assert added == []
    assert removed == ["  analyst:", "    actions: [read]", "    visible: [name, territory_id, category, credit_limit]"]
    assert snapshot_model(admin_app).entity("retailer").permission("analyst") is None
    assert _analyst_lists_retailers(admin_app) == 403


@sqlite_only
def test_permission_keys_change_alone_and_comments_stay(browser_as, admin_app, defs):
    client = browser_as("analyst")
    before = (defs / "transactions" / "prescription.yaml").read_text()
    data = yaml.safe_load(before)
    fields = snapshot_model(admin_app).entity("prescription").field_names
    supervisor = {**data["permissions"]["supervisor"], "visible": [
        f for f in data["permissions"]["supervisor"]["visible"] if f != "dosage"],
                  "row_filter": "territory_id in $user.territory_ids"}
    compliance = {"actions": ["read"], "break_glass": True}
    plan = client.post(f"{BASE}/entity/prescription/permissions",
                       permissions_form(data, fields, supervisor=supervisor, compliance=compliance))
    text = client.text(plan)
    assert plan.status_code == 200, text
    assert apply_form(client, text).status_code == 302
    after = (defs / "transactions" / "prescription.yaml").read_text()
    removed, added = changed_lines(before, after)
    assert removed == ["    visible: [rep_id, retailer_id, territory_id, product_id, dosage, prescribed_at]"]
    assert added == ["    visible: [rep_id, retailer_id, territory_id, product_id, prescribed_at]",
                     '    row_filter: "territory_id in $user.territory_ids"', "    break_glass: true"]
    assert after.count("break_glass: true") == 2 and after.endswith(before[before.index("sync:"):])
    assert "# emergency access (docs/access.md)" in after
    entity = snapshot_model(admin_app).entity("prescription")
    assert entity.permission("compliance").break_glass and "dosage" not in entity.permission("supervisor").visible
    assert entity.permission("supervisor").row_filter_source == "territory_id in $user.territory_ids"


@sqlite_only
def test_bad_permission_values_return_the_form_with_a_message(browser_as, admin_app, defs):
    client = browser_as("analyst")
    data = yaml.safe_load((defs / "masters" / "retailer.yaml").read_text())
    fields = snapshot_model(admin_app).entity("retailer").field_names
    before = len(versions(admin_app))
    bad = [permissions_form(data, fields, analyst={"actions": ["read", "fly"]}),
           permissions_form(data, fields, analyst={"actions": ["read"], "visible": ["name", "secret"]}),
           permissions_form(data, fields, analyst={"actions": ["update"], "break_glass": True}),
           permissions_form(data, fields, analyst={"actions": ["read"], "row_filter": "a\x00"})]
    for form in bad:
        response = client.post(f"{BASE}/entity/retailer/permissions", form)
        assert response.status_code == 400, form
        assert "alert-danger" in client.text(response) and 'id="fs-permissions-form"' in client.text(response)
    broken = client.post(f"{BASE}/entity/retailer/permissions",
                         permissions_form(data, fields, analyst={"actions": ["read"], "row_filter": "name ==="}))
    text = client.text(broken)
    assert broken.status_code == 400 and 'id="fs-apply-form"' not in text
    assert re.search(r"entity_defs/masters/retailer\.yaml:\d+:\d+: permissions\.analyst\.row_filter", text)
    same = client.post(f"{BASE}/entity/retailer/permissions", permissions_form(data, fields))
    assert same.status_code == 200 and "nothing to change" in client.text(same)
    assert len(versions(admin_app)) == before


# -- encryption -----------------------------------------------------------------------------------

@sqlite_only
@pytest.mark.parametrize("role", ["analyst", "admin"])
def test_an_encryption_policy_is_planned_and_applied(browser_as, admin_app, defs, role):
    client = browser_as(role)
    model = snapshot_model(admin_app)
    before = (defs / "masters" / "retailer.yaml").read_text()
    form = encryption_form(model, "retailer", phone=("encrypt", False))
    plan = client.post(f"{BASE}/entity/retailer/encryption", form)
    text = client.text(plan)
    assert plan.status_code == 200, text
    assert "Plan: change the encryption policies of retailer" in text
    assert apply_form(client, text).status_code == 302
    after = (defs / "masters" / "retailer.yaml").read_text()
    assert after.startswith(before.rstrip("\n"))          # the policy block is added at the end
    assert yaml.safe_load(after)["encryption"] == {"fields": {"phone": {"mode": "encrypt"}}}
    assert snapshot_model(admin_app).entity("retailer").field("phone").encryption == "encrypt"


@sqlite_only
def test_encryption_policies_removed_and_changed_keep_the_subject(browser_as, admin_app, defs):
    client = browser_as("admin")
    model = snapshot_model(admin_app)
    before = (defs / "transactions" / "prescription.yaml").read_text()
    form = encryption_form(model, "prescription", patient_name=("encrypt", True), dosage=("encrypt", True))
    plan = client.post(f"{BASE}/entity/prescription/encryption", form)
    text = client.text(plan)
    assert plan.status_code == 200, text
    # blind_index to encrypt drops the index column: destructive, an admin applies it with the flag
    assert 'id="fs-destructive"' in text and "drop column prescription.fs_bidx_patient_name" in text
    assert apply_form(client, text, allow_destructive="yes").status_code == 302
    after = (defs / "transactions" / "prescription.yaml").read_text()
    expected = before.replace("    patient_name:\n      mode: blind_index\n", "    patient_name:\n      mode: encrypt\n")
    expected = expected.replace("      phi: true\npermissions:",
                                "      phi: true\n    dosage:\n      mode: encrypt\n      phi: true\npermissions:")
    assert after == expected
    entity = snapshot_model(admin_app).entity("prescription")
    assert entity.field("dosage").phi and entity.field("patient_name").encryption == "encrypt"
    assert entity.subject == "patient_id"


@sqlite_only
def test_bad_encryption_values_return_the_form_with_a_message(browser_as, admin_app, defs):
    client = browser_as("analyst")
    model = snapshot_model(admin_app)
    before = len(versions(admin_app))
    for form in (encryption_form(model, "retailer", phone=("rot13", False)),
                 encryption_form(model, "retailer", phone=("plain", True))):
        response = client.post(f"{BASE}/entity/retailer/encryption", form)
        assert response.status_code == 400 and "alert-danger" in client.text(response)
    # the loader's own rule: a ref field cannot be encrypted (file:line:column message)
    ref = client.post(f"{BASE}/entity/retailer/encryption", encryption_form(model, "retailer",
                                                                             territory_id=("encrypt", False)))
    assert ref.status_code == 400
    assert re.search(r"entity_defs/masters/retailer\.yaml:\d+:\d+: encryption", client.text(ref))
    same = client.post(f"{BASE}/entity/retailer/encryption", encryption_form(model, "retailer"))
    assert same.status_code == 200 and "nothing to change" in client.text(same)
    assert len(versions(admin_app)) == before


# -- CSRF -----------------------------------------------------------------------------------------

@sqlite_only
def test_form_posts_without_csrf_are_refused(browser_as, admin_app, defs):
    client = browser_as("admin")
    model = snapshot_model(admin_app)
    data = yaml.safe_load((defs / "masters" / "retailer.yaml").read_text())
    posts = {"sync": {"direction": "pull"},
             "permissions": permissions_form(data, model.entity("retailer").field_names, analyst=None),
             "encryption": encryption_form(model, "retailer", phone=("encrypt", False))}
    for form, body in posts.items():
        response = client.post(f"{BASE}/entity/retailer/{form}", body, csrf=False)
        assert response.status_code == 400, form
        assert 'id="fs-plan"' not in client.text(response)
    plan = client.text(client.post(f"{BASE}/entity/retailer/sync", {"direction": "pull", "conflict": "field_merge",
                                                                    "scope": "territory_id in $user.territory_ids",
                                                                    "priority": "30"}))
    before = len(versions(admin_app))
    assert client.post(f"{BASE}/apply", {"draft": hidden(plan, "draft"), "digest": hidden(plan, "digest")},
                       csrf=False).status_code == 400
    assert len(versions(admin_app)) == before


# -- the text edits (pure) ------------------------------------------------------------------------

HEAD = "entity: thing\nkind: transaction\n# the fields\nfields:\n  when:\n    type: date\n"


def test_a_missing_sync_block_is_appended_and_comments_are_kept():
    from fieldsync_admin.definitions_rules import Edit, apply_edits
    text = HEAD + "# trailing comment\n"
    edited = apply_edits(text, [Edit(("sync", "direction"), "push"), Edit(("sync", "window"), "90d")])
    assert edited == text + "sync:\n  direction: push\n  window: 90d\n"


def test_a_flow_style_block_falls_back_to_a_round_trip():
    from fieldsync_admin.definitions_rules import Edit, apply_edits
    text = HEAD + "sync: {direction: pull, priority: 5}\n"
    edited = apply_edits(text, [Edit(("sync", "direction"), "both")])
    assert yaml.safe_load(edited)["sync"] == {"direction": "both", "priority": 5}
    assert yaml.safe_load(edited)["fields"] == {"when": {"type": "date"}}
    listed = HEAD + "permissions:\n  admin:\n    actions:\n    - read\n    - delete\n"
    edited = apply_edits(listed, [Edit(("permissions", "admin", "actions"), ["read"])])
    assert yaml.safe_load(edited)["permissions"] == {"admin": {"actions": ["read"]}}


def test_removing_the_last_entry_removes_its_emptied_parents():
    from fieldsync_admin.definitions_rules import Edit, apply_edits
    text = HEAD + "encryption:\n  fields:\n    when:\n      mode: encrypt\nsync:\n  direction: push\n"
    assert apply_edits(text, [Edit(("encryption", "fields", "when"), None)]) == HEAD + "sync:\n  direction: push\n"
    four = text.replace("  ", "    ")
    edited = apply_edits(four, [Edit(("encryption", "fields", "when", "phi"), True)])
    assert edited == four.replace("mode: encrypt\n", "mode: encrypt\n            phi: true\n")


def test_a_file_that_is_not_yaml_is_a_form_error():
    from fieldsync_admin.definitions_rules import Edit, apply_edits
    from fieldsync_admin.definitions_yaml import FormError
    with pytest.raises(FormError):
        apply_edits("fields: [unclosed\n", [Edit(("sync", "direction"), "push")])
