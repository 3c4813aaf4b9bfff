"""SQLite writers of one process queue on a lock before BEGIN IMMEDIATE (store/engine.py), and the
JSON text of the push hot paths (fieldsync.json_wire) reads back to the values written."""

from __future__ import annotations

import json
import threading

import sqlalchemy as sa

from fieldsync.json_wire import dumps_bytes, dumps_sorted, dumps_text
from fieldsync.store.engine import make_engine, write_transaction


def test_concurrent_writers_of_one_process_all_commit(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO counter VALUES (1, 0)")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(25):
                with write_transaction(engine) as conn:
                    n = conn.exec_driver_sql("SELECT n FROM counter WHERE id = 1").scalar_one()
                    conn.exec_driver_sql("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))
        except BaseException as exc:   # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 100   # no lost update
    engine.dispose()


def test_a_failed_write_releases_the_queue(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        with write_transaction(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    done = threading.Event()

    def other() -> None:
        with write_transaction(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE u (x INTEGER)")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(60)
    assert done.is_set()
    with engine.connect() as conn:
        names = {r[0] for r in conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    assert names == {"u"}   # the failed transaction rolled back, the next one ran
    engine.dispose()


def test_json_text_reads_back_equal_including_what_orjson_refuses():
    values = [{"b": 1, "a": [1.5, None, True, "é"]}, {"big": 2 ** 70}, {"s": "\ud800"}, {"x": 1e-7, "y": -0.0}]
    for value in values:
        assert json.loads(dumps_sorted(value)) == value
        assert json.loads(dumps_bytes(value)) == value
        assert json.loads(dumps_text(value)) == value
    assert dumps_sorted({"b": 1, "a": 2}) == '{"a":2,"b":1}'
