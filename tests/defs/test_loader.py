"""The definition language: the example loads; every mistake is reported with file, line, key."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from fieldsync.defs import DefinitionErrors, build_model, load_model
from fieldsync.defs.model import Entity, Model

APP = "app: demo\nschema_version: 1\n"
ROLES = textwrap.dedent("""\
    attributes:
      territory_ids: {type: list, items: uuid}
      region: {type: string}
    roles:
      rep: {description: A rep.}
      boss: {}
    """)


def sources(**entities: str) -> dict[str, str]:
    """A minimal definitions set plus the given entity files (key: 'masters/x' or 'transactions/x')."""
    files = {"app.yaml": APP, "roles.yaml": ROLES}
    for key, text in entities.items():
        folder, name = key.split("__")
        files[f"{folder}/{name}.yaml"] = textwrap.dedent(text)
    return files


def errors_of(files: dict[str, str]) -> list:
    with pytest.raises(DefinitionErrors) as info:
        build_model(files)
    return info.value.errors


def test_example_definitions_load(example_model):
    m = example_model
    assert m.app == "field_force"
    assert set(m.entity_names) == {"territory", "product", "retailer", "price_list", "price_list_item",
                                   "visit", "order", "order_line", "prescription", "expense"}
    assert {e.name for e in m.entities if e.kind == "master"} == {
        "territory", "product", "retailer", "price_list", "price_list_item"}
    assert set(m.role_names) == {"field_rep", "supervisor", "admin", "analyst", "compliance"}
    line = m.entity("order_line")
    assert line.parent == "order" and line.parent_field == "order_id" and line.fields[0].ref == "order"
    assert m.entity("order").children == ("order_line",)
    rx = m.entity("prescription")
    assert rx.subject == "patient_id"
    assert {f.name for f in rx.phi_fields} == {"patient_id", "patient_name", "patient_dob", "diagnosis"}
    assert rx.field("patient_name").encryption == "blind_index"
    visit = m.entity("visit")
    assert visit.sync.window_days == 90 and visit.sync.window_field == "visited_at"
    assert m.entity("product").field("unit_price").precision == 12


def test_model_is_immutable(example_model):
    with pytest.raises(dataclasses.FrozenInstanceError):
        example_model.entities[0].name = "x"  # type: ignore[misc]
    assert isinstance(example_model.entities, tuple)
    assert isinstance(example_model, Model) and isinstance(example_model.entities[0], Entity)


def test_fingerprint_is_stable_and_shape_sensitive(defs_copy, example_model):
    assert load_model(defs_copy).fingerprint() == example_model.fingerprint()
    path = defs_copy / "masters" / "product.yaml"
    path.write_text(path.read_text().replace("  active:\n", "  note:\n    type: string\n  active:\n"))
    assert load_model(defs_copy).fingerprint() != example_model.fingerprint()


def test_schema_error_names_file_line_column_and_key():
    errs = errors_of(sources(masters__shop="""\
        entity: shop
        kind: master
        fields:
          name:
            type: strnig
            required: true
        """))
    assert len(errs) == 1
    e = errs[0]
    assert e.file == "entity_defs/masters/shop.yaml"
    assert (e.line, e.column) == (5, 5)
    assert e.path == "fields.name.type"
    assert "strnig" in e.message
    assert str(e).startswith("entity_defs/masters/shop.yaml:5:5: fields.name.type:")


def test_every_error_reported_in_one_run():
    errs = errors_of(sources(
        masters__shop="""\
            entity: shop
            kind: master
            colour: red
            fields:
              name: {type: string, precision: 3}
              price: {type: decimal}
              owner_id: {type: ref, to: nobody}
            permissions:
              ghost: {actions: [read]}
              rep: {actions: [read], visible: [nope]}
            sync:
              scope: "missing_field in $user.territory_ids"
            """,
        transactions__sale="""\
            entity: sale
            kind: master
            fields:
              total: {type: integer, minimum: 10, maximum: 1}
            """))
    found = {(e.file.split("/")[-1], e.path) for e in errs}
    assert ("shop.yaml", "colour") in found
    assert ("shop.yaml", "fields.name.precision") in found
    assert ("shop.yaml", "fields.price") in found            # decimal needs precision and scale
    assert ("shop.yaml", "fields.owner_id.to") in found      # unknown ref target
    assert ("shop.yaml", "permissions.ghost") in found       # unknown role
    assert ("shop.yaml", "permissions.rep.visible.0") in found
    assert ("shop.yaml", "sync.scope") in found
    assert ("sale.yaml", "kind") in found                    # a master under transactions/
    assert ("sale.yaml", "fields.total.minimum") in found
    assert all(e.line > 0 and e.column > 0 for e in errs)


def test_unknown_key_reports_its_own_line():
    errs = errors_of(sources(masters__shop="""\
        entity: shop
        kind: master
        fields:
          name:
            type: string
            max_lenght: 20
        """))
    assert [(e.path, e.line) for e in errs] == [("fields.name.max_lenght", 6)]
    assert "unknown key" in errs[0].message and "max_length" in errs[0].message


def test_bad_yaml_names_line():
    errs = errors_of({"app.yaml": APP, "roles.yaml": ROLES,
                      "masters/shop.yaml": "entity: shop\nkind: master\nfields:\n  name: {type: string\n"})
    assert len(errs) == 1 and errs[0].file.endswith("shop.yaml") and "invalid YAML" in errs[0].message
    assert errs[0].line >= 4


def test_an_alias_inside_its_own_anchor_is_an_error_not_a_crash():
    errs = errors_of({"app.yaml": APP, "roles.yaml": ROLES, "masters/shop.yaml": "&a [*a]\n"})
    assert len(errs) == 1 and errs[0].file.endswith("shop.yaml") and "alias" in errs[0].message


def test_aliases_that_expand_exponentially_are_refused_quickly():
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    errs = errors_of({"app.yaml": APP, "roles.yaml": ROLES, "masters/shop.yaml": "\n".join(lines) + "\n"})
    assert len(errs) == 1 and "aliases expand" in errs[0].message


@pytest.mark.parametrize("text", [
    "entity: shop\nmade: 2026-02-30\n", "entity: shop\nn: " + "9" * 5000 + "\n", "entity: !!binary zz\n",
    "entity: !!timestamp x\n", "entity: !!bool x\n", "entity: shop\nx: " + "[" * 900 + "]" * 900 + "\n",
    "entity: shop\n? [a, b]\n: 1\n", "entity: {[1]: 2}\n"])
def test_a_scalar_yaml_cannot_read_is_an_error_not_a_crash(text):
    # found by fuzzing the admin UI's YAML editor (tests/admin/test_admin_fuzz.py): each was a 500
    errs = errors_of({"app.yaml": APP, "roles.yaml": ROLES, "masters/shop.yaml": text})
    assert errs and all(e.file.endswith("shop.yaml") for e in errs), errs


def test_duplicate_keys_are_errors():
    errs = errors_of(sources(masters__shop="""\
        entity: shop
        kind: master
        fields:
          name: {type: string}
          name: {type: text}
        """))
    assert [(e.path, e.line) for e in errs] == [("fields.name", 5)]
    assert "duplicate key" in errs[0].message and "line 4" in errs[0].message


def test_duplicate_entity_names_across_files():
    files = sources(masters__shop="entity: shop\nkind: master\nfields: {a: {type: string}}\n",
                    transactions__sale="""\
                        entity: sale
                        kind: transaction
                        fields: {a: {type: string}}
                        children:
                          items:
                            entity: shop
                            fields: {b: {type: integer}}
                        """)
    errs = errors_of(files)
    assert any("duplicate entity name 'shop'" in e.message for e in errs)


def test_required_reference_cycle_is_an_error_but_optional_self_ref_is_fine():
    errs = errors_of(sources(
        masters__a="entity: a\nkind: master\nfields:\n  b_id: {type: ref, to: b, required: true}\n",
        masters__b="entity: b\nkind: master\nfields:\n  a_id: {type: ref, to: a, required: true}\n"))
    assert len(errs) == 1 and "cycle" in errs[0].message and "a -> b -> a" in errs[0].message
    build_model(sources(masters__a="entity: a\nkind: master\nfields:\n  parent_id: {type: ref, to: a}\n"))


def test_expression_errors_point_at_the_character():
    errs = errors_of(sources(masters__shop="""\
        entity: shop
        kind: master
        fields:
          region: {type: string}
        sync:
          scope: "region == == $user.region"
        """))
    assert len(errs) == 1
    assert errs[0].path == "sync.scope" and errs[0].line == 6
    assert errs[0].column == 10 + 1 + len("region == ")  # value column + quote + offset


@pytest.mark.parametrize("scope,reason", [
    ("region in $user.nope", "unknown user attribute $user.nope"),
    ("region in $user.region", "is not a list"),
    ("colour == 'red'", "unknown field 'colour'"),
    ("region in 'x'", "must be a list"),
])
def test_expression_semantic_errors(scope, reason):
    errs = errors_of(sources(masters__shop=f"""\
        entity: shop
        kind: master
        fields:
          region: {{type: string}}
        sync:
          scope: "{scope}"
        """))
    assert len(errs) == 1 and reason in errs[0].message, errs


def test_encryption_policy_checks():
    errs = errors_of(sources(transactions__rx="""\
        entity: rx
        kind: transaction
        fields:
          name: {type: string}
          code: {type: string, unique: true}
          clinic_id: {type: ref, to: rx}
        encryption:
          subject: patient
          fields:
            ghost: {mode: encrypt}
            name: {mode: plain, phi: true}
            code: {mode: encrypt}
            clinic_id: {mode: encrypt}
        """))
    by_path = {e.path: e.message for e in errs}
    assert "unknown field 'ghost'" in by_path["encryption.fields.ghost"]
    assert "unknown field 'patient'" in by_path["encryption.subject"]
    assert "PHI field cannot be plain" in by_path["encryption.fields.name.mode"]
    assert "deterministic" in by_path["encryption.fields.code.mode"]
    assert "ref field cannot be encrypted" in by_path["encryption.fields.clinic_id.mode"]


def test_encrypted_fields_cannot_be_filtered_on():
    errs = errors_of(sources(transactions__rx="""\
        entity: rx
        kind: transaction
        fields:
          diagnosis: {type: text}
        encryption:
          fields:
            diagnosis: {mode: encrypt, phi: true}
        sync:
          scope: "diagnosis == 'flu'"
        """))
    assert len(errs) == 1 and "encrypted" in errs[0].message


def test_defaults_are_validated_and_normalised():
    errs = errors_of(sources(masters__shop="""\
        entity: shop
        kind: master
        fields:
          size: {type: enum, values: [s, m], default: xl}
          price: {type: decimal, precision: 5, scale: 2, default: "1.234"}
        """))
    assert {e.path for e in errs} == {"fields.size.default", "fields.price.default"}
    m = build_model(sources(masters__shop="""\
        entity: shop
        kind: master
        fields:
          price: {type: decimal, precision: 5, scale: 2, default: 3}
          opened: {type: date, default: 2024-01-31}
        """))
    f = m.entity("shop").field("price")
    assert f.has_default and f.default == "3.00"
    assert m.entity("shop").field("opened").default == "2024-01-31"


def test_reserved_names_and_wrong_file_name():
    errs = errors_of(sources(masters__shop="""\
        entity: store
        kind: master
        fields:
          version: {type: integer}
          name: {type: string}
        """))
    by_path = {e.path for e in errs}
    assert by_path == {"fields.version", "entity"}


def test_missing_files_and_stray_files():
    errs = errors_of({"masters/a.yaml": "entity: a\nkind: master\nfields: {x: {type: string}}\n",
                      "notes/readme.yaml": "hello: world\n"})
    messages = sorted((e.file.split("/")[-1], e.message) for e in errs)
    assert ("app.yaml", "file is missing") in messages
    assert ("roles.yaml", "file is missing") in messages
    assert any(f == "readme.yaml" and "unexpected file" in m for f, m in messages)


def test_children_get_a_parent_reference_and_inherit_rules(example_model):
    line = example_model.entity("order_line")
    order = example_model.entity("order")
    assert line.kind == "transaction"
    assert line.sync.conflict == order.sync.conflict
    assert {p.role for p in line.permissions} == {p.role for p in order.permissions}
    assert line.field("order_id").required



ORDER_WITH_LINES = """\
    entity: sale
    kind: transaction
    fields:
      status: {type: string}
      note: {type: text}
    children:
      lines:
        entity: sale_line
        fields:
          qty: {type: integer}
          note: {type: text}
    permissions:
      rep:
        actions: [read, create, update]
        row_filter: "status == 'open'"
      boss:
        actions: [read, update]
        visible: [status, note]
        editable: [note]
    """


def test_a_childs_permissions_come_from_its_parent_with_its_field_lists():
    """docs/access.md: the parent's actions and grant; its visible/editable lists applied to the
    child's fields by name (the parent reference always visible); no row filter of its own (a
    child row is reached through its parent, `fieldsync.defs.access`)."""
    from fieldsync.defs.access import access_rule
    model = build_model(sources(transactions__sale=ORDER_WITH_LINES))
    line = model.entity("sale_line")
    rep, boss = line.permission("rep"), line.permission("boss")
    assert rep.actions == {"read", "create", "update"} and rep.row_filter is None
    assert rep.visible is None and rep.editable is None
    assert boss.visible == ("sale_id", "note") and boss.editable == ("note",)
    rule = access_rule(model, line, "rep")
    assert rule.parent is not None and rule.parent.entity.name == "sale"
    assert rule.parent.permission.row_filter_source == "status == 'open'"
    assert rule.writable(create=True)[0] == "sale_id"
    assert access_rule(model, line, "nobody") is None


def test_a_child_section_may_declare_its_own_field_lists_and_they_are_checked():
    text = ORDER_WITH_LINES.replace("""\
          note: {type: text}
    permissions:""", """\
          note: {type: text}
        permissions:
          boss:
            editable: [qty]
            visible: [qty, note]
    permissions:""")
    model = build_model(sources(transactions__sale=text))
    boss = model.entity("sale_line").permission("boss")
    assert boss.editable == ("qty",) and boss.visible == ("sale_id", "qty", "note")
    # without its own visible list the parent's applies ([note] here): qty editable, not visible
    errs = errors_of(sources(transactions__sale=text.replace("            visible: [qty, note]\n", "")))
    assert [e.message for e in errs] == ["'qty' is editable but not visible"]
    errs = errors_of(sources(transactions__sale=text.replace("          boss:\n            editable: [qty]\n"
                                                              "            visible: [qty, note]",
                                                              "          rep:\n            editable: [nope]\n"
                                                              "          ghost:\n            visible: []")))
    assert sorted(e.message.split(";")[0] for e in errs) == [
        "the parent grants role 'ghost' nothing", "unknown field 'nope'"]
    assert all(e.file == "entity_defs/transactions/sale.yaml" and e.line > 0 for e in errs)
    # actions and row filters are the parent's alone
    errs = errors_of(sources(transactions__sale=text.replace("editable: [qty]", "actions: [read]")))
    assert [e.path for e in errs] == ["children.lines.permissions.boss.actions"]


def test_children_of_children_are_refused_with_file_and_line():
    """The definition language has one level of children (docs/access.md)."""
    text = ORDER_WITH_LINES.replace("""\
          note: {type: text}
    permissions:""", """\
          note: {type: text}
        children:
          parts:
            entity: sale_line_part
            fields:
              code: {type: string}
    permissions:""")
    errs = errors_of(sources(transactions__sale=text))
    assert len(errs) == 1
    err = errs[0]
    assert (err.file, err.line, err.path) == ("entity_defs/transactions/sale.yaml", 12, "children.lines.children")
    assert "cannot have children of its own" in err.message
    assert str(err).startswith("entity_defs/transactions/sale.yaml:12:")
