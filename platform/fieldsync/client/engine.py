"""One sync cycle (protocol §9): register if needed, push until no pending or sent entries
remain, pull until `has_more` is false (each page in one local transaction), then ack.

Recoveries handled here, each at most a few times per cycle so a misbehaving server cannot
spin the device: 413 (halve the batch; a lone mutation too large is quarantined locally),
404 `unknown-device` (§3.2), 409 `schema-upgrade-required` (migrate additively, pull again),
410 `sync-reset` (§6.7), 400 `invalid-resume` (drop `resume`). Everything else reaches the
caller as an SDK error, with the outbox untouched: entries left `sent` are resent with the
same seqs next time (invariants 1 and 2).
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping

from fieldsync.client import outbox
from fieldsync.client.apply import Applied, apply_page, check_page, reset_store, settle_results
from fieldsync.client.bundles import BundleLoader, BundleProgress, TransferCallback, checked_manifest
from fieldsync.errors import ProblemType, ProtocolError
from fieldsync.client.reports import SyncReport
from fieldsync.client.schema import DeviceSchema, quote
from fieldsync.client.store import LocalStore
from fieldsync.client.wire import SYNC_PREFIX, Wire
from fieldsync.defs.values import format_datetime

ACK_EVERY_PAGES = 20
MAX_RECOVERIES = 3
REFETCH_MAX = 1000

Progress = Callable[[int, int], None]


def _read_batch(store: LocalStore, limit: int, after_seq: int | None = None
                ) -> tuple[list[Any], list[dict[str, Any]]]:
    """The next `limit` entries to send (after `after_seq` when given) and their mutations."""
    entries = (outbox.entries_to_send(store, limit) if after_seq is None
               else outbox.entries_to_send_after(store, after_seq, limit))
    return entries, [outbox.as_mutation(e) for e in entries]


class _ReadAhead:
    """One background thread reading the next push batch while a push is in flight."""

    def __init__(self, store: LocalStore):
        self.store = store
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None

    def start(self, after_seq: int, limit: int) -> bool:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldsync-push-read")
        self._future = self._pool.submit(_read_batch, self.store, limit, after_seq)
        return True

    def result(self) -> tuple[list[Any], list[dict[str, Any]]] | None:
        """The batch read ahead, or None when reading it failed (the loop then reads it itself)."""
        future, self._future = self._future, None
        try:
            return future.result() if future is not None else None
        except Exception:
            return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class SyncEngine:
    """Runs sync cycles for one store against one server."""

    def __init__(self, store: LocalStore, wire: Wire, *, clock: Callable[[], dt.datetime],
                 install_info: Mapping[str, Any] | None = None, push_batch: int = 500, pull_limit: int = 1000,
                 bundles: bool = True, outbox_bundles: Any = None):
        self.store = store
        self.wire = wire
        self.clock = clock
        self.install_info = dict(install_info or {})
        self.push_batch = push_batch
        self.pull_limit = pull_limit
        self.bundles = bundles          # ask for snapshots as bundles (protocol §11)
        self.on_bundle: TransferCallback | None = None
        self.outbox_bundles = outbox_bundles   # an OutboxBundles, or None: pushes only in batches (§4.7)
        self._encodings_set = False
        self._refresh_failed_for: str | None = None   # the user token a device token refresh failed with
        wire.on_device_token_refused = self._forget_device_token

    # -- the cycle -------------------------------------------------------------------------------

    def run(self, *, max_pages: int | None = None, progress: Progress | None = None) -> SyncReport:
        started = time.monotonic()
        report = SyncReport()
        try:
            self.ensure_registered()
            self.push_all(report)
            self.pull_all(report, max_pages=max_pages, progress=progress)
            self.ack(final=report.complete)
        finally:
            report.cursor = int(self.store.state("cursor", 0))
            report.duration = time.monotonic() - started
        return report

    # -- registration (§3) -----------------------------------------------------------------------

    def ensure_registered(self) -> str:
        device_id = self.store.state("device_id")
        if device_id is None:
            return self.register()
        if not self._encodings_set:
            self._use_capabilities(self.store.state("capabilities") or {})
        self.wire.device_token = self.store.state("device_token")
        self._refresh_device_token()
        return device_id

    def _refresh_device_token(self) -> None:
        """Register again (idempotent) when the device token was not issued from the user's
        current token: it was dropped (idle, expired), or the app has a new token (a new
        territory: the device token carries the user's role and attributes). A user token the
        server refuses (401) leaves the device token in use; that token is not tried again."""
        fingerprint = self.wire.user_token_fingerprint()
        if fingerprint in (self.store.state("device_token_for"), self._refresh_failed_for):
            return
        try:
            self.register()
        except ProtocolError as exc:
            if exc.status != 401:
                raise
            self._refresh_failed_for = fingerprint

    def _forget_device_token(self) -> None:
        with self.store.transaction() as conn:
            self.store.set_state(conn, device_token=None, device_token_for=None)

    def register(self, *, keep_id: str | None = None) -> str:
        """Register this install (idempotent on `install_id`, so a lost answer is harmless)."""
        install_id = self.store.state("install_id")
        if install_id is None:
            install_id = outbox.new_install_id()
            with self.store.transaction() as conn:
                self.store.set_state(conn, install_id=install_id)
        body: dict[str, Any] = {"install_id": install_id, "schema_version": self.store.schema_version}
        for key in ("platform", "app_version"):
            if self.install_info.get(key) is not None:
                body[key] = self.install_info[key]
        if keep_id is not None:
            body["device_id"] = keep_id
        answer = self.wire.call("POST", "/devices", body, user_token=True)   # a user registers a device
        fingerprint = self.wire.user_token_fingerprint(self.wire.last_user_token)   # the token that got it
        capabilities = answer.get("capabilities") or {}
        device_token = answer.get("device_token") if isinstance(answer.get("device_token"), str) else None
        with self.store.transaction() as conn:
            self.store.set_state(conn, device_id=answer["device_id"], user_id=answer.get("user_id"),
                                 capabilities=capabilities, device_token=device_token, device_token_for=fingerprint)
        self.wire.device_token = device_token
        self._use_capabilities(capabilities)
        return answer["device_id"]

    def _use_capabilities(self, capabilities: Mapping[str, Any]) -> None:
        use = getattr(self.wire.transport, "use_encodings", None)
        if use is not None and capabilities.get("encodings"):
            use(capabilities["encodings"])
        self._encodings_set = True

    def _unknown_device(self) -> None:
        """§3.2: the server lost this device. Keep the id while the outbox holds anything
        (invariant 2); with an empty outbox start afresh."""
        old = self.store.state("device_id")
        if not self._outbox_size():
            with self.store.transaction() as conn:
                assert self.store.schema is not None
                for table in self.store.schema.entities.values():
                    conn.execute(f"DELETE FROM {quote(table.table)} WHERE _dirty = 0")
                self.store.set_state(conn, device_id=None, cursor=0, resume=None, scope_hash=None,
                                     refetch=[], write_checkpoint=0)
            self.register()
        else:
            self.register(keep_id=old)

    def _outbox_size(self) -> int:
        with self.store.lock:
            return self.store.conn.execute('SELECT count(*) FROM "_outbox"').fetchone()[0]

    def _capability(self, name: str, default: int) -> int:
        value = (self.store.state("capabilities") or {}).get(name)
        return int(value) if isinstance(value, int) and value > 0 else default

    # -- push (§4) -------------------------------------------------------------------------------

    def push_all(self, report: SyncReport) -> None:
        if self.outbox_bundles is not None:
            # a long-offline outbox goes as one resumable upload first (client/outbox_bundle.py)
            self.outbox_bundles.push(report, self._store_push_answer, progress=self.on_bundle)
        batch = max(1, min(self.push_batch, self._capability("max_mutations", self.push_batch)))
        recoveries = 0
        # while a push is in flight the next batch's entries are read and turned into mutations
        # on another thread (the wait for the answer leaves this one idle); still one push in
        # flight (§4.4). They are used only after an answer that accounted for every seq, when
        # they are exactly what `entries_to_send` would read then: the entries after the last
        # seq sent, none of which that answer can have touched
        ahead = _ReadAhead(self.store)
        try:
            prepared = None
            while True:
                entries, mutations = prepared if prepared is not None else _read_batch(self.store, batch)
                prepared = None
                if not entries:
                    return
                seqs = [e["seq"] for e in entries]
                with self.store.transaction() as conn:
                    # marked before sending: after a crash they are resent with the same seqs
                    conn.executemany("UPDATE \"_outbox\" SET status = 'sent', attempts = attempts + 1 "
                                     "WHERE seq = ? AND status IN ('pending', 'sent')", [(s,) for s in seqs])
                body = {"device_id": self.store.state("device_id"), "schema_version": self.store.schema_version,
                        "sent_at": format_datetime(self.clock()), "mutations": mutations}
                offset = self.wire.clock_offset.estimate_ms(self.clock())
                if offset is not None:
                    # measured over the fastest recent round trip: this push's upload time is not
                    # in it, as it would be in received_at - sent_at (protocol §8.1)
                    body["clock_offset_ms"] = offset
                next_batch = ahead.start(seqs[-1], batch) if len(entries) == batch else None
                try:
                    answer = self.wire.call("POST", "/push", body)
                except ProtocolError as exc:
                    if exc.status == 413 or exc.name == ProblemType.PAYLOAD_TOO_LARGE.slug:
                        if len(entries) == 1:
                            self._quarantine_too_large(entries[0], exc)
                            report.rejected += 1
                        else:
                            batch = max(1, len(entries) // 2)
                        continue
                    if exc.name == ProblemType.UNKNOWN_DEVICE.slug and recoveries < MAX_RECOVERIES:
                        recoveries += 1
                        self._unknown_device()
                        continue
                    raise
                finally:
                    read_ahead = ahead.result() if next_batch is not None else None
                self._store_push_answer(answer, seqs, report)   # raises unless every seq is accounted for
                prepared = read_ahead
        finally:
            ahead.close()

    def _quarantine_too_large(self, entry, exc: ProtocolError) -> None:
        with self.store.transaction() as conn:
            current = conn.execute('SELECT * FROM "_outbox" WHERE seq = ?', (entry["seq"],)).fetchone()
            if current is not None:
                limit = exc.problem.get("max_bytes")
                outbox.quarantine_locally(
                    self.store, conn, current, kind=ProblemType.PAYLOAD_TOO_LARGE, now=self.clock(),
                    reason="the mutation is larger than the server accepts" + (f" ({limit} bytes)" if limit else ""))

    def _store_push_answer(self, answer: Mapping[str, Any], seqs: list[int], report: SyncReport) -> None:
        received = [int(s) for s in answer.get("received") or ()]
        results = list(answer.get("results") or ())
        answered = set(received) | {int(r.get("seq", -1)) for r in results}
        missing = [s for s in seqs if s not in answered]
        outcome = Applied()
        with self.store.transaction() as conn:
            conn.executemany("UPDATE \"_outbox\" SET status = 'received' WHERE seq = ? AND status = 'sent'",
                             [(s,) for s in received])
            settle_results(self.store, conn, results, self.clock(), outcome)
            if answer.get("write_checkpoint") is not None:
                current = int(self.store.state_in(conn, "write_checkpoint", 0))
                self.store.set_state(conn, write_checkpoint=max(current, int(answer["write_checkpoint"])))
        report.pushed += len(seqs) - len(missing)
        report.applied += outcome.applied
        report.rejected += outcome.rejected
        report.conflicts += outcome.conflicts
        if missing:
            # every mutation of a 202 is in exactly one of received/results (§4.2)
            raise ProtocolError(202, {"detail": f"the push answer does not account for seqs {missing}"})

    # -- pull (§6) -------------------------------------------------------------------------------

    def pull_all(self, report: SyncReport, *, max_pages: int | None = None,
                 progress: Progress | None = None) -> None:
        recoveries = 0
        while max_pages is None or report.pages < max_pages:
            if self.store.state("bundle") is not None:
                self._load_bundle(report, progress)
                continue
            refetch = (self.store.state("refetch") or [])[:REFETCH_MAX]
            body = {"device_id": self.store.state("device_id"), "schema_version": self.store.schema_version,
                    "cursor": int(self.store.state("cursor", 0)), "resume": self.store.state("resume"),
                    "scope_hash": self.store.state("scope_hash"), "limit": self.pull_limit,
                    "results_after": outbox.settled_through(self.store), "refetch": refetch}
            if self.install_info.get("app_version") is not None:   # the server shows what a device runs now
                body["app_version"] = self.install_info["app_version"]
            if self.bundles:
                body["bundles"] = True
            try:
                page = self.wire.call("POST", "/pull", body)
            except ProtocolError as exc:
                if recoveries >= MAX_RECOVERIES or not self._recover_pull(exc):
                    raise
                recoveries += 1
                continue
            check_page(page)
            bundle = page.get("bundle") if page.get("phase") == "bundle" else None
            if bundle is not None and not isinstance(bundle, dict):
                raise ProtocolError(200, {"detail": "the pull page's bundle is not an object"})
            with self.store.transaction() as conn:
                outcome = apply_page(self.store, conn, page, refetch_sent=refetch, now=self.clock())
                if bundle is not None:
                    # kept before any chunk is fetched: a cut from here on resumes this bundle
                    self.store.set_state(conn, bundle={"bundle": bundle, "next": 0, "rows_done": 0,
                                                       "cursor_before": int(page["cursor"])})
            report.pages += 1
            report.pulled += outcome.changes
            report.applied += outcome.applied
            report.rejected += outcome.rejected
            report.conflicts += outcome.conflicts
            if progress is not None:
                progress(report.pulled, int(page.get("remaining") or 0))
            # `more_results`: over 1000 results were waiting; pull again for the rest, as long
            # as this page settled some (results of entries no longer held cannot loop us)
            more_results = bool(page.get("more_results")) and (outcome.applied + outcome.rejected) > 0
            if not page.get("has_more") and not more_results:
                report.complete = True
                return
            if report.pages % ACK_EVERY_PAGES == 0:
                self.ack(final=False)

    def _load_bundle(self, report: SyncReport, progress: Progress | None) -> None:
        """Fetch and apply the snapshot bundle the store names, from its first chunk not applied
        (protocol §11). A bundle the server no longer has, or one that fails its checks, is
        dropped: the next pull is offered a new one."""
        state = self.store.state("bundle")
        bundle = state.get("bundle") if isinstance(state, dict) else None
        try:
            if not isinstance(bundle, dict) or not isinstance(bundle.get("url"), str):
                raise ProtocolError(200, {"detail": "the stored snapshot bundle is malformed"})
            manifest_raw = bundle.get("manifest")
            if isinstance(manifest_raw, dict) and manifest_raw.get("schema_version") != self.store.schema_version:
                # the store was upgraded since the bundle was offered: pull again for one of this schema
                raise ProtocolError(404, {"detail": "the bundle is of another schema version"})
            manifest = checked_manifest(bundle, self._manifest_keys(bundle.get("signing_key")),
                                        self.store.schema_version)
            loader = BundleLoader(self.store, self.wire.fetch_range, state, manifest)
            rows_before = loader.progress().rows_done

            def on_chunk(done: BundleProgress) -> None:
                if progress is not None:
                    progress(report.pulled + done.rows_done - rows_before, done.rows_total - done.rows_done)
                if self.on_bundle is not None:
                    self.on_bundle(done)
            try:
                loader.run(on_chunk)
            finally:
                report.pulled += loader.progress().rows_done - rows_before
                report.bundle_bytes += loader.fetched_bytes
            report.bundles += 1
        except ProtocolError as exc:
            if exc.status == 200 or exc.status == 404 or exc.name == ProblemType.NOT_FOUND.slug:
                with self.store.transaction() as conn:
                    self.store.set_state(conn, bundle=None)
                if exc.status == 200:
                    raise   # refused as tampered or malformed: the app hears of it
                return
            raise

    def _manifest_keys(self, kid: Any) -> Mapping[str, str]:
        """The server's manifest signing keys; the capabilities are read again for a key this
        device has not seen (the server rotated it)."""
        capabilities = self.store.state("capabilities") or {}
        keys = capabilities.get("manifest_keys") or {}
        if kid not in keys:
            capabilities = self.wire.call("GET", "/capabilities")
            with self.store.transaction() as conn:
                self.store.set_state(conn, capabilities=capabilities)
            keys = capabilities.get("manifest_keys") or {}
        return keys if isinstance(keys, dict) else {}

    def _recover_pull(self, exc: ProtocolError) -> bool:
        if exc.name == ProblemType.SCHEMA_UPGRADE_REQUIRED.slug:
            self.upgrade_schema(exc.problem.get("schema_url"))
        elif exc.name == ProblemType.SYNC_RESET.slug:
            with self.store.transaction() as conn:
                reset_store(self.store, conn)
        elif exc.name == ProblemType.INVALID_RESUME.slug:
            with self.store.transaction() as conn:
                self.store.set_state(conn, resume=None)
        elif exc.name == ProblemType.UNKNOWN_DEVICE.slug:
            self._unknown_device()
        else:
            return False
        return True

    # -- schema (§7.2) -----------------------------------------------------------------------------

    def fetch_schema(self, url: str | None = None) -> dict[str, Any]:
        path = "/schema"
        if url and url.startswith(SYNC_PREFIX + "/schema"):
            path = url[len(SYNC_PREFIX):]
        document = self.wire.call("GET", path)
        if "entities" not in document and isinstance(document.get("schema"), dict):
            document = document["schema"]
        return document

    def upgrade_schema(self, url: str | None = None) -> list[str]:
        """Migrate the store additively to the server's schema, in one local transaction."""
        schema = DeviceSchema(self.fetch_schema(url))
        if schema.version <= self.store.schema_version and schema.fingerprint == self.store.schema.fingerprint:
            raise ProtocolError(409, {"detail": f"the server asked for a schema upgrade but serves version "
                                                f"{schema.version}, which this device already has"})
        return self.store.migrate(schema)

    # -- ack (§7.1) ------------------------------------------------------------------------------------

    def ack(self, *, final: bool) -> None:
        c = outbox.counts(self.store)
        body = {"device_id": self.store.state("device_id"), "cursor": int(self.store.state("cursor", 0)),
                "results_through": outbox.settled_through(self.store),
                "outbox": {"pending": c["pending"], "sent": c["sent"], "received": c["received"]},
                "quarantined": c["quarantined"]}
        self.wire.call("POST", "/ack", body)
        if final:
            with self.store.transaction() as conn:
                self.store.set_state(conn, last_sync_at=format_datetime(self.clock()))
