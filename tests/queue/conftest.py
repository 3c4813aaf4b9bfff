"""The queue behaviour suite runs the same tests against every backend: the embedded SQLite
queue, Amazon SQS (moto in server mode, over HTTP) and ActiveMQ over STOMP. Backend fixtures
live in `sqs_fixtures.py` and `stomp_fixtures.py`; none of them skips: a backend that is not
running fails its tests with how to start it."""

from __future__ import annotations

import pytest

from sqs_fixtures import *    # noqa: F401,F403  (moto server, sqs_queue_url, sqs_raw_bodies)
from stomp_fixtures import *  # noqa: F401,F403  (broker check, stomp_queue_url, stomp_raw_bodies)

BACKENDS = ["sqlite", "sqs", pytest.param("stomp", marks=pytest.mark.broker)]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def queue_url(backend, request, tmp_path) -> str:
    """A URL of a fresh, empty queue on `backend`."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return request.getfixturevalue(f"{backend}_queue_url")


@pytest.fixture
def raw_bodies(backend, request):
    """A function: queue URL -> the message bodies exactly as the backend stores them."""
    if backend == "sqlite":
        import sqlite3

        def read(url: str) -> list[bytes]:
            path = url.partition("://")[2][1:]
            with sqlite3.connect(path) as conn:
                return [b for (b,) in conn.execute("SELECT body FROM fs_queue UNION ALL SELECT body FROM fs_queue_dead")]
        return read
    return request.getfixturevalue(f"{backend}_raw_bodies")
