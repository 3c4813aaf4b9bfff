"""Every path enforces one rule of access (issue 10, item 1; docs/access.md "Child entities").

A hypothesis property test over users (of every role) x entities (parents and children) x
operations x paths: REST by id, REST list (a filter by id, or by the parent for a child), the
nested route of a child, the flat route, sync push (and the `row` of its result), pull
(snapshot) and refetch. Each outcome is compared with ONE model of the rules written here from
the YAML definitions alone (it parses them itself and evaluates their expressions with its own
tiny evaluator; nothing of fieldsync's rule code is used to predict).

It runs on the example definitions (every entity of entity_defs/) and on a variant (a copy in
a temporary directory) whose child sections declare their own visible/editable lists and whose
parents have visible lists and another row filter, on SQLite, and the variant on PostgreSQL. The definition language has no children of
children: `tests/defs/test_loader.py::test_children_of_children_are_refused` checks the loader
says so with file:line.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.store.changelog import head_position

ROOT = Path(__file__).resolve().parents[2]
SECRET = "access-model-" + "s" * 20
NOW = dt.datetime.now(dt.timezone.utc)
RECENT = (NOW - dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
RECENT_DAY = (NOW - dt.timedelta(days=2)).date().isoformat()
SYSTEM = ("id", "version", "created_at", "updated_at", "deleted")
PG_ADMIN_URL = os.environ.get("FIELDSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

T1, T2 = "0190a4c2-0000-7000-8000-0000000000a1", "0190a4c2-0000-7000-8000-0000000000a2"
USERS = {
    "rep-a": ("field_rep", {"territory_ids": [T1]}),
    "rep-c": ("field_rep", {"territory_ids": [T1]}),    # same territory, another rep
    "rep-b": ("field_rep", {"territory_ids": [T2]}),
    "sup": ("supervisor", {"region": "north", "territory_ids": [T1]}),
    "admin": ("admin", {"territory_ids": [T1, T2]}),
    "analyst": ("analyst", {"territory_ids": [T1, T2]}),
    "compliance": ("compliance", {"territory_ids": [T1, T2]}),
}


# -- the model: the rules, from the YAML definitions ------------------------------------------------

def _operand(text: str, row: dict, user: dict) -> Any:
    text = text.strip()
    if text.startswith("$user."):
        return user.get(text[6:])
    if text in ("true", "false"):
        return text == "true"
    if text[:1] in "'\"":
        return text[1:-1]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return row.get(text)


def holds(source: str | None, row: dict, user: dict) -> bool:
    """`a == b`, `a != b`, `a in b` terms joined by `and` (all the definitions here use)."""
    if source is None:
        return True
    for term in re.split(r"\s+and\s+", source.strip()):
        m = re.fullmatch(r"(.+?)\s+(==|!=|in)\s+(.+)", term.strip())
        assert m, f"the model cannot read {source!r}"
        a, op, b = _operand(m[1], row, user), m[2], _operand(m[3], row, user)
        if a is None or b is None:
            return False
        if op == "==" and a != b or op == "!=" and a == b or op == "in" and a not in b:
            return False
    return True


class Rules:
    """Per entity: parent, fields, owner, sync rule; per (role, entity): actions, visible,
    editable and row filter, a child's taken from its parent as docs/access.md says."""

    def __init__(self, defs: Path):
        self.entities: dict[str, dict] = {}
        for path in sorted(defs.glob("*/*.yaml")):
            doc = yaml.safe_load(path.read_text())
            perms = {role: {"actions": set(p["actions"]), "visible": p.get("visible"),
                            "editable": p.get("editable"), "row_filter": p.get("row_filter")}
                     for role, p in (doc.get("permissions") or {}).items()}
            sync = doc.get("sync") or {}
            self.entities[doc["entity"]] = {"parent": None, "link": None, "fields": doc["fields"],
                                            "owner": doc.get("owner"), "perms": perms, "sync": sync,
                                            "kind": doc["kind"], "subject": (doc.get("encryption") or {}).get("subject")}
            for child in (doc.get("children") or {}).values():
                link = f"{doc['entity']}_id"
                fields = {link: {"type": "ref", "to": doc["entity"], "required": True}, **child["fields"]}
                declared = child.get("permissions") or {}
                child_perms = {}
                for role, p in perms.items():
                    own = declared.get(role) or {}

                    def pick(key, own=own, p=p):
                        if key in own:
                            return list(own[key])
                        return None if p[key] is None else [f for f in fields if f in p[key]]
                    visible = pick("visible")
                    if visible is not None and link not in visible:
                        visible = [link] + visible
                    child_perms[role] = {"actions": p["actions"], "visible": visible, "editable": pick("editable"),
                                         "row_filter": None}
                self.entities[child["entity"]] = {"parent": doc["entity"], "link": link, "fields": fields,
                                                  "owner": None, "perms": child_perms, "sync": {},
                                                  "kind": doc["kind"], "subject": None}

    def perm(self, role: str, name: str) -> dict | None:
        return self.entities[name]["perms"].get(role)

    def can(self, role: str, name: str, action: str) -> bool:
        p = self.perm(role, name)
        return p is not None and action in p["actions"]

    def root(self, name: str) -> dict:
        e = self.entities[name]
        return self.entities[e["parent"]] if e["parent"] else e

    def writable(self, role: str, name: str, *, create: bool) -> set[str]:
        e, p = self.entities[name], self.perm(role, name)
        names = set(e["fields"] if p["editable"] is None else p["editable"]) - {e["owner"]}
        if create and e["link"]:
            names.add(e["link"])
        return names

    def visible(self, role: str, name: str) -> set[str]:
        p = self.perm(role, name)
        return set(self.entities[name]["fields"]) if p["visible"] is None else set(p["visible"])

    # rows ---------------------------------------------------------------------------------
    def reach(self, role, name, row, user, db, *, sync: bool = False) -> bool:
        """A live row the role reaches: its row filter (and on sync paths the root's scope) holds,
        and a child's parent row is live and reached the same way."""
        e, p = self.entities[name], self.perm(role, name)
        if p is None or row is None or row["deleted"] or not holds(p["row_filter"], row, user):
            return False
        if sync and e["parent"] is None and not holds(e["sync"].get("scope"), row, user):
            return False
        if e["parent"] is None:
            return True
        return self.reach(role, e["parent"], db(e["parent"], row.get(e["link"])), user, db, sync=sync)

    def readable(self, role, name, row, user, db) -> bool:
        return self.can(role, name, "read") and self.reach(role, name, row, user, db)

    def in_window(self, name, row, db) -> bool:
        e = self.entities[name]
        if e["parent"]:
            return self.in_window(e["parent"], db(e["parent"], row[e["link"]]), db)
        window, field = e["sync"].get("window"), e["sync"].get("window_field")
        if not window or not field:
            return True
        days = int(window[:-1]) * {"d": 1, "w": 7, "m": 30}[window[-1]]
        floor = NOW - dt.timedelta(days=days)
        value = row.get(field)
        return value is not None and str(value) >= (floor.date().isoformat() if len(str(value)) == 10
                                                     else floor.strftime("%Y-%m-%dT%H:%M:%SZ"))

    def pulled(self, role, name, row, user, db) -> bool:
        return (self.root(name)["sync"].get("direction", "pull" if self.root(name)["kind"] == "master" else "both")
                in ("pull", "both") and self.can(role, name, "read") and self.reach(role, name, row, user, db, sync=True)
                and self.in_window(name, row, db))

    def pushed(self, name) -> bool:
        root = self.root(name)
        return root["sync"].get("direction", "pull" if root["kind"] == "master" else "both") in ("push", "both")

    def bad_refs(self, role, name, values, user, db) -> list[str]:
        """Reference fields naming a record that is missing or that the role may not read."""
        out = []
        for f, spec in self.entities[name]["fields"].items():
            if spec["type"] == "ref" and values.get(f) is not None:
                if not self.readable(role, spec["to"], db(spec["to"], values[f]), user, db):
                    out.append(f)
        return out


# -- the world -------------------------------------------------------------------------------------

def _variant(defs: Path) -> None:
    """Children that declare their own lists, parents with visible lists and other row filters."""
    order = defs / "transactions" / "order.yaml"
    text = order.read_text()
    text = text.replace('''  analyst:
    actions: [read]
''', '''  analyst:
    actions: [read]
    visible: [rep_id, territory_id, status, total]
''')
    text = text.replace('''  supervisor:
    actions: [read, update]
    editable: [status, remarks]
''', '''  supervisor:
    actions: [read, update]
    editable: [status, remarks]
    row_filter: "territory_id in $user.territory_ids"
''')
    text = text.replace('''        maximum: 100
        default: "0"
''', '''        maximum: 100
        default: "0"
    permissions:
      supervisor:
        editable: [quantity]
      analyst:
        visible: [product_id, quantity]
''')
    order.write_text(text)
    price_list = defs / "masters" / "price_list.yaml"
    text = price_list.read_text().replace('''  analyst:
    actions: [read]
''', '''  analyst:
    actions: [read]
    visible: [name, territory_id, currency]
''').replace('''  compliance:
    actions: [read]
''', '''  compliance:
    actions: [read, update]
    editable: [name, currency]
''')
    price_list.write_text(text)
    assert "permissions:\n      supervisor" in order.read_text() and "editable: [name, currency]" in price_list.read_text()


class World:
    """A server on `defs` with records of every entity, in two territories, owned by two reps,
    some under deleted parents; and the model's view of its rows (read straight from the tables)."""

    def __init__(self, defs: Path, data: Path, database_url: str | None = None):
        self.rules = Rules(defs)
        data.mkdir(parents=True, exist_ok=True)
        self.app = create_app({"DATA_DIR": str(data), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                               "DATABASE_URL": database_url or f"sqlite:///{data / 'server.db'}",
                               "DEFS_DIR": str(defs)})
        self.state = self.app.extensions["fieldsync"]
        self.client = self.app.test_client()
        self.records: dict[str, list[str]] = {}
        self.devices: dict[str, tuple[str, str]] = {}
        self.seq = 0
        self._build()

    @property
    def store(self):
        return self.state.store

    def add(self, entity, body, owner=None, deleted=False, **children):
        record = self.store.create(entity, body, server_values={"rep_id": owner} if owner else None,
                                   children=children or None)
        self.records.setdefault(entity, []).append(record["id"])
        for collection, rows in record.items():
            if isinstance(rows, list):
                child = next(c for c in self.store.model.entity(entity).children
                             if self.store.model.entity(c).collection == collection)
                self.records.setdefault(child, []).extend(r["id"] for r in rows)
        if deleted:
            self.store.delete(entity, record["id"])
        return record["id"]

    def _build(self) -> None:
        self.add("territory", {"id": T1, "code": "N-1", "name": "North", "region": "north"})
        self.add("territory", {"id": T2, "code": "S-1", "name": "South", "region": "south"})
        r1 = self.add("retailer", {"name": "Shop 1", "territory_id": T1, "phone": "+91 555 0001"})
        r2 = self.add("retailer", {"name": "Shop 2", "territory_id": T2})
        p1 = self.add("product", {"sku": "P-1", "name": "Pill", "category": "pharma", "unit_price": "2.50"})
        p0 = self.add("product", {"sku": "P-0", "name": "Old", "category": "otc", "unit_price": "1.00",
                                  "active": False})
        for t, dead in ((T1, False), (T2, False), (T1, True)):
            self.add("price_list", {"name": "PL", "territory_id": t, "valid_from": "2026-01-01"}, deleted=dead,
                     items=[{"product_id": p1, "price": "2.00"}])
        v_a = self.add("visit", {"retailer_id": r1, "territory_id": T1, "visited_at": RECENT, "purpose": "order"},
                       owner="rep-a")
        self.add("visit", {"retailer_id": r2, "territory_id": T2, "visited_at": RECENT, "purpose": "survey"},
                 owner="rep-b")
        line = {"product_id": p1, "quantity": 2, "unit_price": "2.50"}
        self.add("order", {"retailer_id": r1, "territory_id": T1, "visit_id": v_a, "ordered_at": RECENT},
                 owner="rep-a", lines=[line, {**line, "product_id": p0}])
        self.add("order", {"retailer_id": r2, "territory_id": T2, "ordered_at": RECENT}, owner="rep-b", lines=[line])
        self.add("order", {"retailer_id": r1, "territory_id": T1, "ordered_at": RECENT}, owner="rep-a",
                 deleted=True, lines=[line])
        for rep, t, r in (("rep-a", T1, r1), ("rep-b", T2, r2)):
            self.add("expense", {"spent_on": RECENT_DAY, "category": "meals", "amount": "10.00"}, owner=rep)
            self.add("prescription", {"retailer_id": r, "territory_id": t, "patient_id": str(uuid.uuid4()),
                                      "patient_name": "A Patient", "patient_dob": "1970-01-01", "diagnosis": "x",
                                      "product_id": p1, "prescribed_at": RECENT}, owner=rep)
        missing = set(self.store.model.entity_names) - set(self.records)
        assert not missing, f"the world has no records of {missing}: add them to World._build"

    # the model's view of the tables -------------------------------------------------------
    def row(self, entity: str, record_id: str | None) -> dict | None:
        if record_id is None:
            return None
        ent = self.store.model.entity(entity)
        table = self.store.table(ent)
        with self.state.engine.connect() as conn:
            found = conn.execute(sa.select(table).where(table.c.id == record_id)).mappings().first()
        return None if found is None else self.store.to_wire_row(ent, found)

    def clone(self, entity: str, record_id: str) -> str:
        """A copy of a record with a new id, for a delete that must not change the world: a root
        through the store (as an admin would), a child straight into the table (its parent may
        be a tombstone, which the store refuses to name)."""
        ent = self.store.model.entity(entity)
        wire = self.row(entity, record_id)
        if ent.parent is None:
            body = {f.name: wire[f.name] for f in ent.fields if wire[f.name] is not None and f.name != ent.owner}
            for f in ent.fields:
                if f.unique and f.name in body:
                    body[f.name] = f"{body[f.name]}-{uuid.uuid4().hex[:6].upper()}"
            owner = {ent.owner: wire[ent.owner]} if ent.owner else None
            return self.store.create(entity, body, server_values=owner)["id"]
        assert not ent.has_encrypted
        table = self.store.table(ent)
        with self.state.engine.begin() as conn:
            row = dict(conn.execute(sa.select(table).where(table.c.id == record_id)).mappings().one())
            row["id"] = str(uuid.uuid4())
            conn.execute(table.insert().values(row))
        return row["id"]

    # callers ------------------------------------------------------------------------------
    def token(self, user: str) -> str:
        role, attributes = USERS[user]
        return issue_token(SECRET, user, role, attributes)

    def rest(self, user, method, path, body=None, headers=None):
        return self.client.open("/api/v1" + path, method=method, json=body,
                                headers={"Authorization": "Bearer " + self.token(user), **(headers or {})})

    def sync(self, user, path, body):
        r = self.client.post("/api/v1/sync" + path, json=body,
                             headers={"Authorization": "Bearer " + self.token(user), "Fieldsync-Protocol": "1"})
        assert r.status_code in (200, 201, 202), (path, r.status_code, r.get_json())
        return r.get_json()

    def device(self, user) -> str:
        if user not in self.devices:
            self.devices[user] = self.sync(user, "/devices", {"install_id": f"i-{user}", "schema_version": 1})["device_id"]
        return self.devices[user]

    def push(self, user, mutation) -> dict:
        device = self.device(user)
        self.seq += 1
        mutation = {"seq": self.seq, "client_time": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"), **mutation}
        self.sync(user, "/push", {"device_id": device, "schema_version": 1, "mutations": [mutation],
                                  "sent_at": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")})
        self.state.sync.drain()
        page = self.sync(user, "/pull", {"device_id": device, "schema_version": 1, "cursor": 0,
                                         "results_after": self.seq - 1, "limit": 1})
        return next(r for r in page["results"] if r["seq"] == self.seq)

    def snapshot(self, user) -> dict[tuple[str, str], dict]:
        """Every row a first pull of the user's device delivers, by (entity, id)."""
        device, rows, cursor, scope_hash, resume = self.device(user), {}, 0, None, None
        while True:
            page = self.sync(user, "/pull", {"device_id": device, "schema_version": 1, "cursor": cursor,
                                             "scope_hash": scope_hash, "resume": resume, "limit": 1000})
            for c in page["changes"]:
                if c["kind"] == "upsert":
                    rows[(c["entity"], c["id"])] = c["row"]
            cursor, scope_hash, resume = page["cursor"], page["scope_hash"], page["resume"]
            if not page["has_more"]:
                self.__dict__.setdefault("_hashes", {})[user] = scope_hash
                return rows

    def refetch(self, user, entity, record_id) -> dict | None:
        """The row a refetch of one record answers with (None: removed), asked on a stream pull
        from the head (so nothing else is in the page)."""
        if user not in self.__dict__.get("_hashes", {}):
            self.snapshot(user)
        with self.state.engine.connect() as conn:
            head = head_position(conn)
        page = self.sync(user, "/pull", {"device_id": self.device(user), "schema_version": 1, "cursor": head,
                                         "scope_hash": self._hashes[user], "limit": 1000,
                                         "refetch": [{"entity": entity, "id": record_id}]})
        assert page["phase"] == "stream", page
        answers = [c for c in page["changes"] if c["id"] == record_id and c.get("position") is None]
        assert len(answers) == 1, page["changes"]
        assert answers[0]["kind"] in ("upsert", "remove")
        return answers[0]["row"] if answers[0]["kind"] == "upsert" else None


@pytest.fixture(scope="module", params=["entity_defs", "variant",
                                        pytest.param("variant-postgresql", marks=pytest.mark.postgres)])
def world(request, tmp_path_factory):
    """The example definitions and the variant on SQLite; the variant on PostgreSQL too (the
    parent chain is SQL there: an EXISTS on the parent's table)."""
    base = tmp_path_factory.mktemp(request.param)
    defs = base / "entity_defs"
    shutil.copytree(ROOT / "entity_defs", defs)
    if request.param.startswith("variant"):
        _variant(defs)
    url, schema, admin = None, None, None
    if request.param.endswith("postgresql"):
        if os.environ.get("FIELDSYNC_TEST_SKIP_POSTGRES") == "1" and not os.environ.get("CI"):
            pytest.skip("FIELDSYNC_TEST_SKIP_POSTGRES=1")   # as tests/conftest.py's pg_url
        schema = "t_" + uuid.uuid4().hex[:12]
        admin = sa.create_engine(PG_ADMIN_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    w = World(defs, base / "data", url)
    yield w
    w.state.sync.close()
    w.state.engine.dispose()
    if admin is not None:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# -- values a harmless update sets ------------------------------------------------------------------

def _harmless(rules: Rules, name: str) -> dict[str, Any]:
    """Fields an update may set without moving the record (not in any filter, scope or window,
    not a reference, owner, subject, unique or media field), each with a valid new value."""
    e = rules.entities[name]
    used = set()
    for other in rules.entities.values():
        for p in other["perms"].values():
            used |= set(re.findall(r"\w+", p["row_filter"] or ""))
        used |= set(re.findall(r"\w+", other["sync"].get("scope", ""))) | {other["sync"].get("window_field")}
    out = {}
    for f, spec in e["fields"].items():
        t = spec["type"]
        if f in used or f in (e["owner"], e["subject"]) or t in ("ref", "media", "uuid") or spec.get("unique") \
                or spec.get("pattern"):
            continue
        out[f] = {
            "string": lambda s: "X" * max(s.get("min_length") or 1, 1),
            "text": lambda s: "changed",
            "integer": lambda s: s.get("minimum") or 1,
            "decimal": lambda s: "1." + "0" * s["scale"],
            "enum": lambda s: s["values"][-1],
            "boolean": lambda s: True,
            "date": lambda s: "2026-06-01",
            "datetime": lambda s: RECENT,
            "json": lambda s: {"k": 1},
            "geopoint": lambda s: {"lat": 1.0, "lon": 2.0},
        }[t](spec)
    return out


def _create_body(rules: Rules, name: str, row: dict) -> dict[str, Any]:
    """A new record like `row`: its non-null fields that differ from their defaults (the owner
    is the caller's, unique values fresh)."""
    e = rules.entities[name]
    body = {}
    for f, spec in e["fields"].items():
        v = row.get(f)
        if v is None or f == e["owner"] or ("default" in spec and str(v) in (str(spec["default"]),
                                                                                f"{spec['default']}.00")):
            continue
        if spec.get("unique"):
            v = f"{v}-{uuid.uuid4().hex[:6].upper()}"
        body[f] = v
    return body


def _shown(row: dict | None) -> set[str]:
    return set(row or {}) - set(SYSTEM)


OPERATIONS = {
    "read": ("rest_get", "rest_list", "rest_nested_list", "pull", "refetch"),
    "update": ("rest_patch", "push_update"),
    "delete": ("rest_delete", "push_delete"),
    "create": ("rest_post", "rest_nested_post", "push_insert"),
}


def _entities() -> list[str]:
    rules = Rules(ROOT / "entity_defs")
    return list(rules.entities)


@pytest.mark.parametrize("op", sorted(OPERATIONS))
@pytest.mark.parametrize("entity", _entities())
@settings(max_examples=14, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_path_allows_what_the_model_allows(world, entity, op, data):
    rules = world.rules
    e = rules.entities[entity]
    user = data.draw(st.sampled_from(sorted(USERS)), label="user")
    role, attributes = USERS[user]
    me = {"id": user, "role": role, **attributes}
    paths = [p for p in OPERATIONS[op] if "nested" not in p or e["parent"]]
    path = data.draw(st.sampled_from(paths), label="path")
    record_id = data.draw(st.sampled_from(world.records[entity]), label="record")
    db = world.row
    row = db(entity, record_id)
    event(f"{path} as {role}")

    if op == "read":
        readable = rules.readable(role, entity, row, me, db)
        visible = rules.visible(role, entity) if rules.perm(role, entity) else set()
        if path == "rest_get":
            r = world.rest(user, "GET", f"/{entity}/{record_id}")
            if not rules.can(role, entity, "read"):
                assert r.status_code == 403
            else:
                assert (r.status_code == 200) == readable, (r.status_code, r.get_json())
                if readable:
                    assert _shown(r.get_json()) == visible
        elif path == "rest_list":
            key, value = (e["link"], row[e["link"]]) if e["parent"] else ("id", record_id)
            r = world.rest(user, "GET", f"/{entity}?{key}={value}&limit=100")
            if not rules.can(role, entity, "read"):
                assert r.status_code == 403
            else:
                items = {i["id"]: i for i in r.get_json()["items"]}
                assert (record_id in items) == readable
                for item in items.values():
                    assert rules.readable(role, entity, db(entity, item["id"]), me, db)
                    assert _shown(item) == visible
        elif path == "rest_nested_list":
            parent_id = row[e["link"]]
            collection = next(k for k, c in yaml_children(world, e["parent"]).items() if c == entity)
            r = world.rest(user, "GET", f"/{e['parent']}/{parent_id}/{collection}?limit=100")
            parent_readable = rules.readable(role, e["parent"], db(e["parent"], parent_id), me, db)
            if not rules.can(role, e["parent"], "read"):
                assert r.status_code == 403
            elif not parent_readable:
                assert r.status_code == 404
            else:
                assert r.status_code == 200
                assert (record_id in {i["id"] for i in r.get_json()["items"]}) == readable
        elif path == "pull":
            rows = world.snapshot(user)
            assert ((entity, record_id) in rows) == rules.pulled(role, entity, row, me, db)
            for (name, rid), got in rows.items():
                assert rules.pulled(role, name, db(name, rid), me, db), (name, rid)
                assert _shown(got) == rules.visible(role, name)
        else:  # refetch
            got = world.refetch(user, entity, record_id)
            assert (got is not None) == rules.pulled(role, entity, row, me, db)
            if got is not None:
                assert _shown(got) == rules.visible(role, entity)
        return

    if op == "update":
        harmless = _harmless(rules, entity)
        if not harmless:
            return
        field = data.draw(st.sampled_from(sorted(harmless)), label="field")
        value = harmless[field]
        can = rules.can(role, entity, "update")
        writable = can and field in rules.writable(role, entity, create=False)
        if path == "rest_patch":
            reach = can and rules.reach(role, entity, row, me, db)
            r = world.rest(user, "PATCH", f"/{entity}/{record_id}", {field: value}, {"If-Match": "*"})
            if not can:
                assert r.status_code == 403
            elif not writable:
                assert r.status_code == 422 and [x["field"] for x in r.get_json()["errors"]] == [field]
            else:
                assert r.status_code == (200 if reach else 404), (r.status_code, r.get_json())
            if r.status_code != 200:   # nothing was written
                assert db(entity, record_id)["version"] == row["version"]
        else:
            reach = can and rules.reach(role, entity, row, me, db, sync=True)
            result = world.push(user, {"entity": entity, "op": "update", "id": record_id,
                                       "base_version": row["version"], "fields": {field: value}})
            expected = rules.pushed(entity) and can and reach and writable
            assert (result["status"] == "applied") == expected, result
            if rules.pushed(entity) and can and reach and not writable:
                assert result["type"].endswith("/validation") and [x["field"] for x in result["errors"]] == [field]
            if result["status"] != "applied":   # nothing was written
                assert db(entity, record_id)["version"] == row["version"]
            _check_result_row(world, rules, role, entity, record_id, me, result)
        return

    if op == "delete":
        clone = world.clone(entity, record_id)
        row = db(entity, clone)
        can = rules.can(role, entity, "delete")
        if path == "rest_delete":
            r = world.rest(user, "DELETE", f"/{entity}/{clone}")
            reach = can and rules.reach(role, entity, row, me, db)
            assert r.status_code == (403 if not can else 204 if reach else 404), r.status_code
        else:
            reach = can and rules.reach(role, entity, row, me, db, sync=True)
            result = world.push(user, {"entity": entity, "op": "delete", "id": clone, "base_version": row["version"]})
            assert (result["status"] == "applied") == (rules.pushed(entity) and can and reach), result
        assert db(entity, clone)["deleted"] == (path == "rest_delete" and can and reach
                                                or path == "push_delete" and result["status"] == "applied")
        return

    # create: a record like `row`, made by this user
    body = _create_body(rules, entity, row)
    if path == "rest_nested_post":
        parent_id = body.pop(e["link"])
        collection = next(k for k, c in yaml_children(world, e["parent"]).items() if c == entity)
        r = world.rest(user, "POST", f"/{e['parent']}/{parent_id}/{collection}", body)
        if not rules.can(role, e["parent"], "read"):
            assert r.status_code == 403
            return
        if not rules.readable(role, e["parent"], db(e["parent"], parent_id), me, db):
            assert r.status_code == 404, r.get_json()
            return
        body[e["link"]] = parent_id
        _check_create(world, rules, role, entity, body, me, r.status_code, r.get_json(), sync=False)
        return
    if path == "rest_post":
        r = world.rest(user, "POST", f"/{entity}", body)
        _check_create(world, rules, role, entity, body, me, r.status_code, r.get_json(), sync=False)
        return
    new_id = str(uuid.uuid4())
    result = world.push(user, {"entity": entity, "op": "insert", "id": new_id, "fields": body})
    status = {"applied": 201}.get(result["status"], 422 if result.get("type", "").endswith("/validation") else 403)
    if not rules.pushed(entity):
        assert result["status"] == "rejected"
        return
    _check_create(world, rules, role, entity, body, me, status, result, sync=True)
    _check_result_row(world, rules, role, entity, new_id, me, result)


def yaml_children(world: World, parent: str) -> dict[str, str]:
    """collection -> child entity name of `parent`."""
    ent = world.store.model.entity(parent)
    return {world.store.model.entity(c).collection: c for c in ent.children}


def _check_create(world, rules, role, entity, body, me, status, answer, *, sync):
    db = world.row
    e = rules.entities[entity]
    if not rules.can(role, entity, "create"):
        assert status == 403, answer
        return
    not_writable = sorted(set(body) - rules.writable(role, entity, create=True))
    bad = not_writable or rules.bad_refs(role, entity, body, me, db)
    if bad:
        assert status == 422, answer
        assert sorted(x["field"] for x in answer["errors"]) == sorted(bad), answer
        return
    new_row = {**body, "deleted": False, **({e["owner"]: me["id"]} if e["owner"] else {})}
    inside = rules.reach(role, entity, new_row, me, db, sync=sync)
    assert status == (201 if inside else 403), answer


def _check_result_row(world, rules, role, entity, record_id, me, result):
    """The `row` of a push result: the record as the user may read it, else null."""
    row = world.row(entity, record_id)
    if row is None or row["deleted"]:
        assert result["row"] is None or result["row"].get("deleted")
        return
    readable = rules.can(role, entity, "read") and rules.reach(role, entity, row, me, world.row, sync=True)
    assert (result["row"] is not None) == readable, result
    if readable:
        assert _shown(result["row"]) == rules.visible(role, entity)
