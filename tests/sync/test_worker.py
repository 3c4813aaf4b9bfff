"""The listener pool: ack only after the handler returned (invariants 1 and 2), FIFO per device
under concurrent threads, resizing without losing a message, retries with backoff, heartbeats,
a graceful stop, and a consumer process killed mid-handler."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import pytest

from fieldsync.queue.embedded import Message, SqliteQueue
from fieldsync.workers.pool import ListenerPool, retry_delay


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def queue_path(tmp_path):
    return tmp_path / "queue.db"


@pytest.fixture
def queue(queue_path):
    q = SqliteQueue(queue_path)
    yield q
    q.close()


@pytest.fixture
def pools():
    """Pools a test builds; stopped afterwards even when the test failed."""
    made: list[ListenerPool] = []
    yield made
    for pool in made:
        pool.stop(timeout=10)


def _pool(pools, queue, handler, **options) -> ListenerPool:
    options.setdefault("wait_seconds", 0.05)
    pool = ListenerPool(queue, handler, **options)
    pools.append(pool)
    return pool


def _wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # polling a condition with a deadline, not standing in for one


class Recorder:
    """A handler that records every call (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Message] = []
        self.threads: set[str] = set()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.calls.append(message)
            self.threads.add(threading.current_thread().name)

    def count(self) -> int:
        with self.lock:
            return len(self.calls)


def test_retry_delay_doubles_up_to_a_minute():
    assert [retry_delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_nothing_runs_before_start(queue, pools):
    before = set(threading.enumerate())
    pool = _pool(pools, queue, Recorder(), threads=3, name="idle")
    assert set(threading.enumerate()) == before
    assert pool.threads == 3


def test_three_threads_process_every_message_once(queue, pools):
    ids = queue.send_batch([(b"%d" % i, f"device-{i % 30}") for i in range(300)])
    handler = Recorder()
    pool = _pool(pools, queue, handler, threads=3, name="apply")
    pool.start()
    assert pool.wait_idle(30)
    assert Counter(m.id for m in handler.calls) == Counter(ids)
    assert pool.stats.processed == 300 and pool.stats.failed == 0
    assert handler.threads <= {"apply-1", "apply-2", "apply-3"} and len(handler.threads) > 1
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("apply-"))


def test_fifo_per_group_with_concurrent_threads(queue, pools):
    groups, per_group = 10, 20
    # interleaved, so the heads of g0 and g1 are the first two messages
    queue.send_batch([(b"%d" % n, f"g{g}") for n in range(per_group) for g in range(groups)])
    seen: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()
    both_heads = threading.Barrier(2, timeout=10)

    def handler(message: Message) -> None:
        number = int(message.body)
        if number == 0 and message.group in ("g0", "g1"):
            both_heads.wait()  # breaks (and the message fails) unless two groups run at once
        with lock:
            seen[message.group].append(number)

    pool = _pool(pools, queue, handler, threads=4, batch_size=1)
    pool.start()
    assert pool.wait_idle(30)
    assert pool.stats.failed == 0
    assert dict(seen) == {f"g{g}": list(range(per_group)) for g in range(groups)}


def test_resize_while_messages_flow_loses_nothing(queue, pools):
    handler = Recorder()
    pool = _pool(pools, queue, handler, threads=1, name="flow")
    pool.start()
    sent: list[str] = []
    stop_sending = threading.Event()

    def send():
        i = 0
        while not stop_sending.is_set() and i < 3000:
            sent.extend(queue.send_batch([(b"%d" % (i + k), f"device-{(i + k) % 7}") for k in range(5)]))
            i += 5

    sender = threading.Thread(target=send)
    sender.start()
    try:
        for size in (4, 1):
            mark = handler.count()
            _wait_for(lambda: handler.count() > mark + 100, what="messages flowing")
            pool.resize(size)
            assert pool.threads == size
            if size == 4:
                _wait_for(lambda: len(handler.threads) >= 3, what="new threads handling messages")
        _wait_for(lambda: sum(t.name.startswith("flow-") and t.name != "flow-heartbeat"
                              for t in threading.enumerate()) == 1, what="retired threads to exit")
    finally:
        stop_sending.set()
        sender.join(30)
    assert pool.wait_idle(30)
    assert Counter(m.id for m in handler.calls) == Counter(sent)
    assert queue.dead_letters() == []


def test_a_failing_handler_is_retried_after_backoff_and_never_acked_in_between(queue_path, pools):
    clock = FakeClock()
    queue = SqliteQueue(queue_path, clock=clock)
    calls: list[int] = []
    failed = threading.Event()
    errors: list[tuple[str, BaseException]] = []

    def handler(message: Message) -> None:
        calls.append(message.receive_count)
        if message.body == b"batch" and message.receive_count == 1:
            raise RuntimeError("database unavailable")

    def on_error(message: Message, exc: BaseException) -> None:
        errors.append((message.id, exc))
        failed.set()

    try:
        message_id = queue.send(b"batch", group="device-1")
        later = queue.send(b"next batch", group="device-1")
        pool = _pool(pools, queue, handler, threads=2, on_error=on_error)
        pool.start()
        assert failed.wait(10)
        assert [(i, type(e).__name__) for i, e in errors] == [(message_id, "RuntimeError")]
        assert queue.pending() == 2          # released, not acked; its group waits
        clock.advance(0.9)                    # backoff is 1 s after the first delivery
        assert queue.receive() == []
        clock.advance(0.1)
        assert pool.wait_idle(10)
        assert calls == [1, 2, 1]             # the retry, then the group's next message
        assert pool.stats.processed == 2 and pool.stats.failed == 1
        assert later not in [i for i, _ in errors]
    finally:
        for pool in pools:
            pool.stop(10)
        queue.close()


def test_errors_are_logged_without_bodies_or_exception_text(queue, pools, caplog):
    def handler(message: Message) -> None:
        raise ValueError("patient Jane Doe, MRN 12345")

    failed = threading.Event()
    pool = _pool(pools, queue, handler, threads=1, on_error=lambda m, e: failed.set())
    with caplog.at_level(logging.DEBUG, logger="fieldsync.sync.worker"):
        message_id = queue.send(b"PHI-BODY diagnosis")
        pool.start()
        assert failed.wait(10)
        pool.stop(10)
    assert message_id in caplog.text and "ValueError" in caplog.text
    assert "PHI-BODY" not in caplog.text and "Jane" not in caplog.text


def test_stop_lets_the_running_handler_finish_and_gives_back_the_rest(queue, pools):
    first, *rest = queue.send_batch([(b"%d" % i, None) for i in range(5)])
    entered, release = threading.Event(), threading.Event()
    finished = []

    def handler(message: Message) -> None:
        entered.set()
        release.wait(10)
        finished.append(message.id)

    pool = _pool(pools, queue, handler, threads=1, batch_size=5)
    pool.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=pool.stop, kwargs={"timeout": 30})
    stopper.start()
    _wait_for(lambda: pool.threads == 0, what="stop() to signal the threads")
    assert stopper.is_alive() and finished == []   # stop() waits for the running handler
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert finished == [first]
    assert queue.pending() == 4                    # the first acked, the others released
    assert sorted(m.id for m in queue.receive(10)) == sorted(rest)  # visible again at once
    assert not any(t.name.startswith("listener-") for t in threading.enumerate())


def test_a_heartbeat_keeps_a_slow_handler_s_message_hidden(queue_path, queue, pools):
    entered, release = threading.Event(), threading.Event()
    calls = []

    def handler(message: Message) -> None:
        calls.append(message.receive_count)
        entered.set()
        release.wait(10)

    queue.send(b"slow")
    pool = _pool(pools, queue, handler, threads=1, visibility_timeout=0.3)
    pool.start()
    assert entered.wait(10)
    thief = SqliteQueue(queue_path)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 1.2:       # four visibility timeouts
            assert thief.receive(visibility_timeout=0.3) == []
    finally:
        thief.close()
    release.set()
    assert pool.wait_idle(10)
    assert calls == [1]


def test_wait_idle_is_false_while_a_handler_runs(queue, pools):
    release = threading.Event()
    pool = _pool(pools, queue, lambda m: release.wait(10), threads=1)
    queue.send(b"x")
    pool.start()
    assert not pool.wait_idle(0.2)
    release.set()
    assert pool.wait_idle(10)


_DOOMED_CONSUMER = """
import sys, threading
from fieldsync.queue.embedded import SqliteQueue
from fieldsync.workers.pool import ListenerPool
def handler(message):
    print("started", message.id, flush=True)
    threading.Event().wait()          # never finishes: the test kills this process
pool = ListenerPool(SqliteQueue(sys.argv[1]), handler, threads=1, visibility_timeout=60, wait_seconds=0.05)
pool.start()
threading.Event().wait()
"""


def test_a_consumer_killed_mid_handler_loses_nothing(queue_path, queue, pools):
    message_id = queue.send(b"push batch", group="device-1")
    with subprocess.Popen([sys.executable, "-c", _DOOMED_CONSUMER, str(queue_path)], text=True,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline().split() == ["started", message_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert queue.pending() == 1                      # never acked
    # another consumer whose clock is past the dead one's visibility timeout
    later = SqliteQueue(queue_path, clock=lambda: time.time() + 61)
    handler = Recorder()
    try:
        pool = _pool(pools, later, handler, threads=2)
        pool.start()
        assert pool.wait_idle(10)
    finally:
        for pool in pools:
            pool.stop(10)
        later.close()
    assert [(m.id, m.body, m.receive_count) for m in handler.calls] == [(message_id, b"push batch", 2)]
