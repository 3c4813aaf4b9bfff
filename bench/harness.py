"""What the sync benchmarks share: a server in a temporary directory, a field rep's token and
device, the raw sqlite3 baseline every figure is divided by, and the way figures are printed.

Benchmarks print figures; they are not tests and `make test` never runs them. Every ratio is
taken against a baseline measured in the same process, on the same machine, a moment earlier
or later (DESIGN.md section 6), so a slow CI box slows both sides.
"""

from __future__ import annotations

import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import sqlite3
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from fieldsync.api import create_app
from fieldsync.auth import issue_token
from fieldsync.seed import PUNE_CENTRAL, PUNE_RURAL

ROOT = Path(__file__).resolve().parent.parent
SECRET = "x" * 32
REP = {"user": "rep-asha", "role": "field_rep", "attributes": {"territory_ids": [PUNE_CENTRAL, PUNE_RURAL]}}
SYNC = "/api/v1/sync"


# -- the server ------------------------------------------------------------------------------------

def make_server(data_dir: Path):
    """A fieldsync app with its SQLite database and queue in `data_dir`; pushed batches are
    applied only when the bench calls `state.sync.drain()` (no listener threads)."""
    app = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DEFS_DIR": str(ROOT / "entity_defs")})
    return app, app.extensions["fieldsync"]


def rep_token() -> str:
    return issue_token(SECRET, REP["user"], REP["role"], REP["attributes"], ttl=3600)


def sync_headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1", **extra}


def register_device(app, token: str, install_id: str = "bench-device") -> str:
    """Register a device for the token's user through the sync API; returns its id."""
    answer = app.test_client().post(f"{SYNC}/devices", headers=sync_headers(token),
                                    json={"install_id": install_id, "schema_version": 1})
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"device registration failed: {answer.status_code} {answer.get_data(as_text=True)}")
    return answer.get_json()["device_id"]


# -- the raw baseline --------------------------------------------------------------------------------

def sqlite_ddl(table: sa.Table) -> list[str]:
    """CREATE TABLE and CREATE INDEX statements of a server table, as SQLite gets them."""
    dialect = sqlite_dialect.dialect()
    statements = [str(sa.schema.CreateTable(table).compile(dialect=dialect))]
    statements += [str(sa.schema.CreateIndex(index).compile(dialect=dialect)) for index in table.indexes]
    return statements


def sqlite_value(value: Any) -> Any:
    """A Python value as SQLAlchemy's SQLite dialect stores it (prepared before timing)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def raw_executemany(path: Path, ddl: Sequence[str], table: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> float:
    """The baseline (DESIGN.md section 6): Python sqlite3 `executemany` of `rows` into a fresh
    file in WAL mode, one transaction. Returns rows per second (DDL not timed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in ddl:
            conn.execute(statement)
        sql = (f'INSERT INTO "{table}" ({", ".join(chr(34) + c + chr(34) for c in columns)}) '
               f'VALUES ({", ".join("?" for _ in columns)})')
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(rows) / elapsed


# -- timing, profiling and printing -----------------------------------------------------------------

class Stopwatch:
    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def running(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started


def profile_top(call, limit: int = 15) -> tuple[Any, str]:
    """Run `call()` under cProfile; returns its result and the top `limit` functions by
    cumulative time as text."""
    profiler = cProfile.Profile()
    result = profiler.runcall(call)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    text = out.getvalue()
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return result, "\n".join(lines[start:])


def header(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"   machine: {os.cpu_count()} cores (load {load}), Python {platform.python_version()}, "
          f"sqlite {sqlite3.sqlite_version}, SQLAlchemy {sa.__version__}")


def figure(name: str, rate: float, baseline: float, budget: float, unit: str = "rows/s") -> bool:
    """Print one figure with its baseline and ratio against a budget (a minimum share)."""
    ratio = rate / baseline
    verdict = "ok" if ratio >= budget else "OVER BUDGET"
    print(f"   {name}: {rate:,.0f} {unit} | raw baseline {baseline:,.0f} {unit} | "
          f"ratio {ratio:.1%} (budget >= {budget:.0%}) {verdict}")
    return ratio >= budget


def info(name: str, text: str) -> None:
    print(f"   {name}: {text}")


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def wait_listening(process, url: str, name: str, timeout: float = 60.0):
    """Return `process` (a server this bench started) once `url` answers; raise with its stderr
    if it exits first, or after `timeout` seconds (then it is killed)."""
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process
        except OSError:
            time.sleep(0.1)   # polling a process we started until it listens: nothing to wait on
    process.kill()
    raise RuntimeError(f"{name} did not answer within {timeout:.0f} s")
