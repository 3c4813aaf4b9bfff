"""Invariant 9 across the wire: a device on schema version 1 keeps working when the server moves
to version 2 — its push is accepted (renamed fields mapped), its pull asks it to migrate, it
migrates its store additively (outbox and data kept) and receives the new field for the rows
it already had."""

from __future__ import annotations

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.client import Client, WsgiTransport
from fieldsync.defs import load_model
from fieldsync.seed import load_seed

SECRET = "e" * 32
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"


def test_device_on_old_schema_pushes_migrates_and_receives_new_field(defs_copy, tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "DEFS_DIR": str(defs_copy)})
    state = app.extensions["fieldsync"]
    load_seed(state.config, "examples/seed")
    token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": [PUNE_CENTRAL]})
    device = Client(tmp_path / "device.db", WsgiTransport(app), token)
    device.sync()
    shop = device.query("retailer")[0]
    # offline: a visit written in schema 1, with `notes`, which version 2 renames to `remarks`
    visit = device.insert("visit", {"retailer_id": shop["id"], "territory_id": PUNE_CENTRAL,
                                    "visited_at": "2026-11-27T09:00:00Z", "purpose": "order", "notes": "kept"})

    # the analyst ships version 2: retailer gains gst_number, visit.notes becomes remarks
    (defs_copy / "app.yaml").write_text((defs_copy / "app.yaml").read_text().replace("schema_version: 1",
                                                                                     "schema_version: 2"))
    retailer_yaml = defs_copy / "masters" / "retailer.yaml"
    retailer_yaml.write_text(retailer_yaml.read_text().replace(
        "fields:\n", "fields:\n  gst_number:\n    type: string\n    max_length: 15\n", 1))
    visit_yaml = defs_copy / "transactions" / "visit.yaml"
    text = visit_yaml.read_text()
    assert "  notes:\n" in text
    visit_yaml.write_text(text.replace("  notes:\n", "  remarks:\n    renamed_from: notes\n", 1)
                          .replace("purpose, notes,", "purpose, remarks,").replace("editable: [notes]", "editable: [remarks]"))
    state.swap_model(load_model(defs_copy))
    store = state.store
    store.update("retailer", shop["id"], {"gst_number": "27AAAPL1234C1Z5"}, expected_version=shop["_version"]
                 if "_version" in shop else store.get("retailer", shop["id"])["version"])

    device.sync()          # push (accepted in v1), pull -> 409 upgrade -> migrate -> rescope
    state.sync.drain()
    device.sync()
    assert store.get("visit", visit)["remarks"] == "kept"          # the renamed field kept its value
    migrated = device.get("retailer", shop["id"])
    assert migrated["gst_number"] == "27AAAPL1234C1Z5"              # the new field reached an old row
    assert device.status().pending == 0 and device.status().quarantined == 0
    device.close()
    import sqlite3
    with sqlite3.connect(tmp_path / "device.db") as db:     # the store itself moved to version 2
        assert db.execute("SELECT value FROM _meta WHERE key = 'schema_version'").fetchone() == ("2",)
        columns = {row[1] for row in db.execute('PRAGMA table_info("retailer")')}
        assert "gst_number" in columns
        assert db.execute('SELECT count(*) FROM "visit"').fetchone() == (1,)   # its own visit kept


def test_an_entry_written_before_the_upgrade_and_pushed_after_it_keeps_its_renamed_field(defs_copy, tmp_path):
    """protocol §7.2: an outbox entry carries no schema version of its own; the migration renames
    the fields of the entries not yet sent, so one written in version 1 and pushed after the
    store moved to version 2 (the app wrote while the pull that migrated was under way) is
    applied, not rejected for an unknown field."""
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "DEFS_DIR": str(defs_copy)})
    state = app.extensions["fieldsync"]
    load_seed(state.config, "examples/seed")
    token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": [PUNE_CENTRAL]})
    written = []

    class WriteDuringPull:
        """The app writes a visit (schema 1) while the first pull after the upgrade is on its way."""

        def __init__(self, inner):
            self.inner = inner

        def request(self, method, path, *, headers, body):
            if path.endswith("/pull") and state.model.schema_version == 2 and not written:
                written.append(device.insert("visit", {"retailer_id": shop["id"], "territory_id": PUNE_CENTRAL,
                                                       "visited_at": "2026-11-27T09:00:00Z", "purpose": "order",
                                                       "notes": "written in version 1"}))
            return self.inner.request(method, path, headers=headers, body=body)

    device = Client(tmp_path / "device.db", WriteDuringPull(WsgiTransport(app)), token)
    device.sync()
    shop = device.query("retailer")[0]
    (defs_copy / "app.yaml").write_text((defs_copy / "app.yaml").read_text().replace("schema_version: 1",
                                                                                     "schema_version: 2"))
    visit_yaml = defs_copy / "transactions" / "visit.yaml"
    visit_yaml.write_text(visit_yaml.read_text().replace("  notes:\n", "  remarks:\n    renamed_from: notes\n", 1)
                          .replace("purpose, notes,", "purpose, remarks,").replace("editable: [notes]",
                                                                                    "editable: [remarks]"))
    state.swap_model(load_model(defs_copy))

    device.sync()          # pull -> 409 upgrade -> the app writes -> migrate -> rescope
    assert written
    device.sync()          # the entry goes out in version 2
    state.sync.drain()
    device.sync()
    assert device.status().quarantined == 0, device.quarantined()
    assert state.store.get("visit", written[0])["remarks"] == "written in version 1"
    assert device.get("visit", written[0])["remarks"] == "written in version 1"
    device.close()
