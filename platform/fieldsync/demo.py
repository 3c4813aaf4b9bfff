"""`fieldsync demo`: two devices working offline, syncing through a server and converging.

Against a running server (`make run`, then `fieldsync demo --url http://127.0.0.1:8000`) the
devices talk HTTP and their tokens are signed with the server's key from the same data
directory; without `--url` the demo starts a server in this process on a temporary database.
Each step prints what happened, so the output is a walkthrough of the protocol.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from fieldsync.auth.tokens import issue_token
from fieldsync.seed import DEMO_USERS

PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"


def _say(out: Callable[[str], None], text: str) -> None:
    out(text)


def _rows(client, entity: str) -> dict[str, dict]:
    return {r["id"]: r for r in client.query(entity)}


def run_demo(config, *, url: str | None = None, workdir: str | None = None,
             out: Callable[[str], None] = print) -> bool:
    """Run the walkthrough; True when both devices converged with the server."""
    from fieldsync.client import Client, HttpTransport, WsgiTransport, enroll

    work = Path(workdir or tempfile.mkdtemp(prefix="fieldsync-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    app = None
    if url is None:
        from fieldsync.api import create_app
        from fieldsync.seed import load_seed
        app = create_app({"DATA_DIR": str(work / "server"), "DEFS_DIR": config["DEFS_DIR"], "SYNC_LISTENERS": 1})
        load_seed(app.extensions["fieldsync"].config, "examples/seed")
        app.extensions["fieldsync"].sync.start()
        secret = app.extensions["fieldsync"].secret_bytes   # the in-process server's own, in its data directory
        _say(out, f"server: in this process, database in {work / 'server'}")
    else:
        secret = config.secret_key()
        _say(out, f"server: {url} (tokens signed with the key in {config.data_dir})")

    asha = next(u for u in DEMO_USERS if u["user"] == "rep-asha")
    attributes = {"territory_ids": [PUNE_CENTRAL]}

    def device(name: str, user: str):
        token = issue_token(secret, user, "field_rep", attributes if user != "rep-asha" else asha["attributes"])
        transport = WsgiTransport(app) if app is not None else HttpTransport(url)
        info = {"platform": "demo", "app_version": "1.0"}
        # encrypted stores (docs/device-store.md): enrol once online; a real app keeps the
        # device secret in the OS keystore, the demo in memory
        enrollment = enroll(work / f"{name}.db", transport, token, install_info=info)
        return Client(work / f"{name}.db", transport, token, install_info=info, store_key=enrollment.store_key())

    phone = device("asha-phone", "rep-asha")
    tablet = device("kiran-tablet", "rep-kiran")
    _say(out, "two devices: Asha's phone and Kiran's tablet, both field reps in Pune Central")
    _say(out, "each store is encrypted (SQLCipher) with a key derived from the device secret issued at enrolment")

    def settle(*clients) -> None:
        # sync until every outbox is settled: the server applies pushes asynchronously
        deadline = time.monotonic() + 60
        while True:
            for c in clients:
                c.sync()
            if all(c.status().pending + c.status().unsettled == 0 for c in clients):
                for c in clients:
                    c.sync()
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not apply the pushes within 60 s")
            time.sleep(0.2)  # a demo polls; tests wait on the listener pool instead

    settle(phone, tablet)
    retailers = _rows(phone, "retailer")
    _say(out, f"first sync: each device pulled {len(retailers)} retailers of its territory, "
              f"{len(_rows(phone, 'product'))} products")
    shop_id = sorted(retailers)[0]
    shop = retailers[shop_id]

    _say(out, "\n-- offline --")
    phone.update("retailer", shop_id, {"phone": "+91 98220 11111"})
    _say(out, f"phone : {shop['name']}: phone number changed")
    tablet.update("retailer", shop_id, {"location": {"lat": 18.5211, "lon": 73.8553}})
    _say(out, f"tablet: {shop['name']}: location corrected (retailer merges field by field)")
    visit = phone.insert("visit", {"retailer_id": shop_id, "territory_id": shop["territory_id"],
                                   "visited_at": "2026-11-27T09:30:00Z", "purpose": "order", "notes": "met owner"})
    product = sorted(_rows(phone, "product").values(), key=lambda p: p["sku"])[0]
    order = phone.insert("order", {"retailer_id": shop_id, "territory_id": shop["territory_id"],
                                   "visit_id": visit, "ordered_at": "2026-11-27T09:40:00Z", "status": "submitted"})
    phone.insert("order_line", {"order_id": order, "product_id": product["id"], "quantity": 12,
                                "unit_price": product["unit_price"]})
    _say(out, f"phone : a visit, an order and its line (12 x {product['name']}), all local")
    tablet.insert("expense", {"spent_on": "2026-11-27", "category": "travel", "amount": "240.00"})
    tablet.insert("visit", {"retailer_id": shop_id, "territory_id": shop["territory_id"],
                            "visited_at": "2026-11-27T11:00:00Z", "purpose": "order"})
    tablet.update("retailer", shop_id, {"credit_limit": "999999.00"})
    _say(out, "tablet: an expense and a visit; and a credit limit change a field rep may not make")
    for name, c in (("phone", phone), ("tablet", tablet)):
        s = c.status()
        _say(out, f"{name:<6}: {s.pending} change(s) waiting in the outbox")

    _say(out, "\n-- network back --")
    settle(phone, tablet)
    for name, c in (("phone", phone), ("tablet", tablet)):
        s = c.status()
        _say(out, f"{name:<6}: synced; outbox {s.pending + s.unsettled}, quarantined {s.quarantined}, cursor {s.cursor}")
    merged_phone = phone.get("retailer", shop_id)
    merged_tablet = tablet.get("retailer", shop_id)
    _say(out, f"phone  sees {shop['name']}: phone {merged_phone['phone']}, location {merged_phone['location']}")
    _say(out, f"tablet sees {shop['name']}: phone {merged_tablet['phone']}, location {merged_tablet['location']}")
    for q in tablet.quarantined():
        _say(out, f"tablet quarantine: seq {q.seq} {q.op} {q.entity}: {q.name}: "
                  + "; ".join(f"{e['field']} {e['reason']}" for e in q.errors) + " (kept for the user to fix or discard)")
    # Asha also works in Pune Rural; what both may see is Pune Central and the catalogue
    def shared(c, e):
        return {k: r for k, r in _strip(_rows(c, e)).items()
                if e == "product" or PUNE_CENTRAL in (r.get("territory_id"), r.get("id"))}
    different = [e for e in ("retailer", "product", "territory") if shared(phone, e) != shared(tablet, e)]
    same = not different
    if different:
        _say(out, f"differs: {different}")
    _say(out, f"shared data identical on both devices: {'yes' if same else 'NO'}")
    _say(out, f"phone keeps its own visits and orders: {len(_rows(phone, 'visit'))} visit(s), "
              f"{len(_rows(phone, 'order'))} order(s); tablet: {len(_rows(tablet, 'visit'))} visit(s), "
              f"{len(_rows(tablet, 'expense'))} expense(s)")
    converged = same and merged_phone["phone"] == "+91 98220 11111" and merged_tablet["location"] is not None
    phone.close()
    tablet.close()
    if app is not None:
        app.extensions["fieldsync"].sync.stop()
    _say(out, "\nconverged" if converged else "\nNOT converged")
    return converged


def _strip(rows: dict[str, dict]) -> dict[str, dict]:
    return {k: {f: v for f, v in r.items() if not f.startswith("_")} for k, r in rows.items()}
