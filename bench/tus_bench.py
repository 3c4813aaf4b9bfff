"""Resumable upload throughput: a 200 MiB file uploaded with the SDK's tus client
(`fieldsync.client.TusClient`, sha256 per chunk) over loopback HTTP to a server run as `fieldsync
serve` runs it (waitress, `make_http_server`), against a raw file copy of the same file (read,
write, fsync) in the same process, a moment earlier.

Figures printed: MiB/s of the upload per chunk size, MiB/s of the raw copy, and their ratio; the
stored file's SHA-256 is checked against the original's.

Run: `.venv/bin/python bench/tus_bench.py [--mib N] [--chunk-mib N ...]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import SECRET, header, info, rep_token

from fieldsync.api import create_app
from fieldsync.api.body_limit import make_http_server
from fieldsync.client import HttpTransport, TusClient
from fieldsync.client.wire import Wire

MIB = 1024 * 1024


def raw_copy(source: Path, target: Path) -> float:
    """Seconds to copy `source` to `target` and fsync it: the floor a server writing uploads has."""
    started = time.perf_counter()
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 4 * MIB)
        dst.flush()
        os.fsync(dst.fileno())
    return time.perf_counter() - started


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for piece in iter(lambda: stream.read(4 * MIB), b""):
            digest.update(piece)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=200, help="file size in MiB (default 200)")
    parser.add_argument("--chunk-mib", type=int, nargs="+", default=[4, 16], help="PATCH sizes in MiB (default 4 16)")
    args = parser.parse_args(argv)

    header(f"tus upload of a {args.mib} MiB file over loopback HTTP vs a raw file copy")
    with tempfile.TemporaryDirectory(prefix="fieldsync-tus-bench-") as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / "upload.bin"
        with open(source, "wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(MIB))
        expected = sha256(source)
        size = source.stat().st_size

        app = create_app({"DATA_DIR": str(tmp_path / "var"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                          "TRANSFER_MAX_BYTES": 2 * size})
        state = app.extensions["fieldsync"]
        server = make_http_server(app, "127.0.0.1", 0, int(state.config["MAX_BODY_BYTES"]),
                                  transfer_limit=int(state.config["TRANSFER_MAX_BYTES"]), threads=4)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        ok = True
        try:
            baseline = size / MIB / raw_copy(source, tmp_path / "copy.bin")
            (tmp_path / "copy.bin").unlink()
            for chunk_mib in args.chunk_mib:
                wire = Wire(HttpTransport(f"http://127.0.0.1:{server.effective_port}"), rep_token(),
                            device_version=lambda: 1)
                client = TusClient(wire, chunk_size=chunk_mib * MIB)
                started = time.perf_counter()
                url = client.upload(source, {"filename": "upload.bin"})
                elapsed = time.perf_counter() - started
                wire.transport.close()
                stored = state.transfer.data_path(url.rsplit("/", 1)[1])
                same = sha256(stored) == expected
                ok = ok and same
                rate = size / MIB / elapsed
                print(f"   tus upload, {chunk_mib} MiB chunks (sha256 each): {rate:,.1f} MiB/s ({elapsed:.2f} s) | "
                      f"raw file copy {baseline:,.1f} MiB/s | ratio {rate / baseline:.1%} | "
                      f"stored sha256 {'matches' if same else 'DIFFERS'}")
                client.delete(url)
            info("raw baseline", "read + write + fsync of the same file in the same process (4 MiB buffers)")
        finally:
            server.trigger.pull_trigger(lambda: [channel.close() for channel in list(server._map.values())])
            thread.join(10)
            server.task_dispatcher.shutdown()
            state.engine.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
