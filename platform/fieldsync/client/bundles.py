"""Loading a snapshot bundle (docs/protocol.md §11) into the device store.

A pull answer with `phase: "bundle"` names a bundle: its URL, its key, its manifest and the
manifest's signature. The device keeps that in its state (`bundle`), then fetches the chunks one
HTTP Range request each and applies each in one local transaction together with the index of the
next chunk. So a cut — of the network, or of the app — costs at most the chunk in flight: the
next sync fetches from the first chunk not applied. When the last chunk is in, the same
transaction sets the cursor the manifest names (or keeps the device's own after a rescope) and
the scope hash, and the device streams on by cursor.

Nothing of a chunk is used before its digest, its AEAD tag (which binds its index and whether it
is the last) and the manifest's Ed25519 signature have been checked.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fieldsync.client.schema import EntityTable, quote
from fieldsync.client.store import LocalStore
from fieldsync.errors import ProtocolError
from fieldsync.transfer.chunks import ChunkRefused, Manifest, key_bytes, verify_manifest


@dataclass
class BundleProgress:
    """Where a bundle download stands: what a progress bar shows."""

    bundle_id: str
    bytes_done: int
    bytes_total: int
    rows_done: int
    rows_total: int


TransferCallback = Callable[[BundleProgress], None]


def _refused(detail: str) -> ProtocolError:
    return ProtocolError(200, {"detail": f"the snapshot bundle was refused: {detail}"})


def checked_manifest(bundle: Mapping[str, Any], keys: Mapping[str, str], schema_version: int) -> Manifest:
    """The bundle's manifest once its signature verifies under a key the device learned from
    the server's capabilities, and it is a snapshot of this device's schema version."""
    try:
        manifest = Manifest.from_dict(bundle.get("manifest"))
        public = keys.get(bundle.get("signing_key"))
        if not isinstance(public, str):
            raise ChunkRefused("its signing key is not one the server lists")
        verify_manifest(public, manifest, bundle.get("signature"))
    except ChunkRefused as exc:
        raise _refused(str(exc)) from None
    if manifest.kind != "snapshot" or manifest.bundle_id != bundle.get("id"):
        raise _refused("the manifest is not this bundle's snapshot manifest")
    if manifest.schema_version != schema_version or manifest.cursor is None:
        raise _refused(f"the bundle is for schema version {manifest.schema_version}, not {schema_version}")
    return manifest


class BundleLoader:
    """Applies one bundle's chunks to the store, from the first one not applied."""

    def __init__(self, store: LocalStore, fetch: Callable[[str, int, int], bytes], state: Mapping[str, Any],
                 manifest: Manifest):
        self.store = store
        self.fetch = fetch            # fetch(url, first byte, last byte) -> the bytes of that range
        self.state = dict(state)      # the `bundle` state: the pull's `bundle`, plus next, rows_done, cursor_before
        self.manifest = manifest
        try:
            self.opener = manifest.opener(key_bytes(self.state["bundle"].get("key")))
        except ChunkRefused as exc:
            raise _refused(str(exc)) from None
        self._sql: dict[tuple[str, tuple[str, ...]], tuple[EntityTable, str]] = {}
        self.fetched_bytes = 0

    @property
    def next_chunk(self) -> int:
        return int(self.state.get("next", 0))

    def progress(self) -> BundleProgress:
        return BundleProgress(self.manifest.bundle_id, self.manifest.offset_of(self.next_chunk), self.manifest.size,
                              int(self.state.get("rows_done", 0)), sum(self.manifest.rows.values()))

    def run(self, on_chunk: Callable[[BundleProgress], None] | None = None) -> None:
        url = self.state["bundle"]["url"]
        chunks = self.manifest.chunks
        for index in range(self.next_chunk, len(chunks)):
            start = self.manifest.offset_of(index)
            sealed = self.fetch(url, start, start + chunks[index].size - 1)
            self.fetched_bytes += len(sealed)
            try:
                frame = self.manifest.open_chunk(self.opener, index, sealed)
            except ChunkRefused as exc:
                raise _refused(str(exc)) from None
            last = index == len(chunks) - 1
            with self.store.transaction() as conn:
                if index == 0:
                    self._clear(conn)
                rows = self._apply_frame(conn, frame, index)
                self.state["next"] = index + 1
                self.state["rows_done"] = int(self.state.get("rows_done", 0)) + rows
                if last:
                    self._finish(conn)
                else:
                    self.store.set_state(conn, bundle=self.state)
            if on_chunk is not None:
                on_chunk(self.progress())

    def _clear(self, conn: sqlite3.Connection) -> None:
        """A bundle replaces the clean rows of its entities (and clears those the device may no
        longer see): rows of a bundle abandoned half-way go too."""
        tables = self.store.schema.entities
        for name in self.state["bundle"].get("clear") or ():
            table = tables.get(name)
            if table is not None:
                conn.execute(f"DELETE FROM {quote(table.table)} WHERE _dirty = 0")

    def _apply_frame(self, conn: sqlite3.Connection, frame: bytes, index: int) -> int:
        if not frame:
            return 0
        try:
            document = json.loads(frame)
            name, columns, rows = document["entity"], tuple(document["columns"]), document["rows"]
        except (ValueError, KeyError, TypeError):
            raise _refused(f"chunk {index} is not a frame of rows") from None
        if name != self.manifest.chunks[index].entity or not isinstance(rows, list):
            raise _refused(f"chunk {index} holds other rows than the manifest says")
        table, sql = self._statement(name, columns)
        try:
            conn.executemany(sql, rows)
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError, TypeError, ValueError) as exc:
            raise _refused(f"chunk {index}: {exc}") from None
        return len(rows)

    def _statement(self, name: str, columns: tuple[str, ...]) -> tuple[EntityTable, str]:
        """INSERT OR IGNORE of `columns`: the bundle's entities were cleared of clean rows by its
        first chunk, so a row already there is dirty and keeps its local values (§10.2)."""
        found = self._sql.get((name, columns))
        if found is not None:
            return found
        table = self.store.schema.entities.get(name)
        if (table is None or name not in self.manifest.entities or len(set(columns)) != len(columns)
                or not set(columns) <= set(table.field_names)):
            raise _refused(f"rows of {name!r} with columns this device does not have")
        names = ("id", *columns, "_version", "_created_at", "_updated_at")
        sql = (f"INSERT OR IGNORE INTO {quote(table.table)} ({', '.join(quote(n) for n in names)}) "
               f"VALUES ({', '.join('?' for _ in names)})")
        self._sql[(name, columns)] = (table, sql)
        return table, sql

    def _finish(self, conn: sqlite3.Connection) -> None:
        before = int(self.state.get("cursor_before", 0))
        # a first sync goes on from the bundle's position; after a rescope the device's other
        # entities are at its own cursor, and the stream from there also brings the bundle's
        # entities up to date (the bundle is never older than that cursor: the server checks)
        cursor = before if before > 0 else int(self.manifest.cursor)
        # the scope the device holds now: the pull answer's, which says (when the bundle took only
        # the entities many users share) that the rest of the phase is still to come
        scope_hash = self.state["bundle"].get("scope_hash")
        self.store.set_state(conn, bundle=None, cursor=cursor, resume=None,
                             scope_hash=scope_hash if isinstance(scope_hash, str) else self.manifest.scope_hash)
