"""The embedded queue: durable sends (invariant 1), FIFO per device group, visibility timeouts,
stale receipts, dead letters, several processes on one file (invariant 2 relies on redelivery
being the only failure mode: nothing lost, nothing handed out twice at once)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from fieldsync.errors import ConfigError, QueueClosed
from fieldsync.queue.embedded import ACK_LINGER, POLL_INTERVAL, Message, SqliteQueue, open_queue


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def queue_path(tmp_path):
    return tmp_path / "var" / "queue.db"


@pytest.fixture
def queue(queue_path, clock):
    q = SqliteQueue(queue_path, clock=clock)
    yield q
    q.close()


def _run_script(script: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True, stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, **kwargs)


def _drain(queue: SqliteQueue, **receive) -> list[Message]:
    got = []
    while messages := queue.receive(10, **receive):
        got.extend(messages)
        queue.ack([m.receipt for m in messages])
    return got


# -- opening ------------------------------------------------------------------------------------

def test_open_queue_reads_sqlite_urls(tmp_path, monkeypatch):
    absolute = open_queue(f"sqlite:///{tmp_path}/abs/queue.db")
    absolute.send(b"x")
    absolute.close()
    assert (tmp_path / "abs" / "queue.db").exists()
    monkeypatch.chdir(tmp_path)
    relative = open_queue("sqlite:///var/queue.db", max_receives=2)
    assert isinstance(relative, SqliteQueue) and relative.max_receives == 2
    relative.close()
    assert (tmp_path / "var" / "queue.db").exists()


@pytest.mark.parametrize("url, named", [("amqp://broker/pushes", "'amqp'"),
                                        ("var/queue.db", "scheme"),
                                        ("sqlite://", "path")])
def test_open_queue_refuses_unknown_urls(url, named):
    with pytest.raises(ConfigError, match=named):
        open_queue(url)


def test_file_is_private_and_its_directory_created(queue_path, queue):
    queue.send(b"phi")
    names = sorted(os.listdir(queue_path.parent))
    assert names == ["queue.db", "queue.db-shm", "queue.db-wal"]
    for name in names:
        assert stat.S_IMODE(os.stat(queue_path.parent / name).st_mode) == 0o600, name


def test_a_newer_file_format_is_refused(queue_path):
    SqliteQueue(queue_path).close()
    conn = sqlite3.connect(queue_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ConfigError, match="format 99"):
        SqliteQueue(queue_path)


def test_closed_queue_refuses_calls(queue):
    queue.close()
    queue.close()
    with pytest.raises(QueueClosed):
        queue.send(b"x")
    with pytest.raises(QueueClosed):
        queue.receive()


# -- sending and durability ---------------------------------------------------------------------

def test_messages_come_back_as_sent(queue, clock):
    first = queue.send(b"one")
    rest = queue.send_batch([(b"two", None), (b"three", "device-1")])
    assert len({first, *rest}) == 3
    messages = queue.receive(10)
    assert [(m.id, m.body, m.group, m.receive_count, m.enqueued_at) for m in messages] == [
        (first, b"one", None, 1, clock.now), (rest[0], b"two", None, 1, clock.now),
        (rest[1], b"three", "device-1", 1, clock.now)]
    assert len({m.receipt for m in messages}) == 3


def test_a_claimed_message_is_the_frozen_message_the_constructor_builds(queue, clock):
    message_id = queue.send(b"x", group="d")
    [m] = queue.receive()
    assert m == Message(message_id, b"x", "d", m.receipt, 1, clock.now)
    assert vars(m) == vars(Message(message_id, b"x", "d", m.receipt, 1, clock.now))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.body = b"y"   # type: ignore[misc]
    assert dataclasses.replace(m, body=b"y").body == b"y"


def test_sends_commit_with_synchronous_full_and_claims_with_normal(queue):
    statements: list[str] = []
    queue._conn.set_trace_callback(statements.append)  # the one connection the queue uses
    queue.send(b"a")             # the file was opened with FULL
    [m] = queue.receive()
    queue.ack([m.receipt])
    queue.send(b"b")
    queue._conn.set_trace_callback(None)
    steps = [s for s in statements if s.startswith(("PRAGMA synchronous", "BEGIN", "COMMIT"))]
    # invariant 1: a send's commit is fsynced; a claim or ack lost to a power failure only means
    # a redelivery, which the ledger absorbs (invariant 2)
    assert steps == ["BEGIN IMMEDIATE", "COMMIT",
                     "PRAGMA synchronous = NORMAL", "BEGIN IMMEDIATE", "COMMIT", "BEGIN IMMEDIATE", "COMMIT",
                     "PRAGMA synchronous = FULL", "BEGIN IMMEDIATE", "COMMIT"]


def test_a_draining_consumer_s_ack_rides_on_its_next_claim(queue):
    queue.send_batch([(b"%d" % i, "g" if i == 0 else None) for i in range(5)])
    first = queue.receive(2)                 # full: this consumer is draining a backlog
    statements: list[str] = []
    queue._conn.set_trace_callback(statements.append)
    queue.ack([m.receipt for m in first])
    assert statements == []                  # written behind: no transaction of its own
    second = queue.receive(2)
    queue._conn.set_trace_callback(None)
    writes = [s.split()[0] for s in statements if s.startswith(("BEGIN", "COMMIT", "DELETE", "UPDATE"))]
    # one transaction: the acks first (a message acked there is never claimed again), then the claim
    assert writes == ["BEGIN", "DELETE", "UPDATE", "UPDATE", "COMMIT"]   # the second UPDATE: group g's next head
    assert [m.body for m in second] == [b"2", b"3"]
    assert queue.pending() == 3


def test_a_written_behind_ack_is_counted_at_once_and_written_within_the_linger(queue_path, clock):
    q = SqliteQueue(queue_path, clock=clock)
    other = SqliteQueue(queue_path, clock=clock)     # `workers status` in another process
    try:
        q.send_batch([(b"%d" % i, None) for i in range(4)])
        batch = q.receive(2)
        q.ack([m.receipt for m in batch])         # written behind, and no claim follows
        # the file catches up without another call on q, within ACK_LINGER in a live process
        deadline = time.monotonic() + 30 + ACK_LINGER
        while other.pending() != 2:
            assert time.monotonic() < deadline, "a written-behind ack was never written"
            threading.Event().wait(ACK_LINGER / 5)   # poll the other object; not a synchronisation
        assert q.pending() == 2 and q.depth().in_flight == 0
    finally:
        other.close()
        q.close()


def test_reads_and_close_write_the_acks_written_behind(queue_path, clock):
    q = SqliteQueue(queue_path, clock=clock)
    q.send_batch([(b"%d" % i, None) for i in range(6)])
    q.ack([m.receipt for m in q.receive(2)])
    assert q.depth().visible == 4 and q.depth().in_flight == 0
    q.ack([m.receipt for m in q.receive(2)])
    q.close()                                  # writes them before the connection goes
    again = SqliteQueue(queue_path, clock=clock)
    try:
        clock.advance(3600)                    # past every visibility timeout
        assert [m.body for m in _drain(again)] == [b"4", b"5"]
    finally:
        again.close()


def test_send_batch_checks_every_item_before_writing(queue):
    with pytest.raises(TypeError):
        queue.send_batch([(b"ok", None), ("not bytes", None)])
    assert queue.pending() == 0
    assert queue.send_batch([]) == []


def test_messages_survive_close_and_reopen(queue_path, clock):
    q = SqliteQueue(queue_path, clock=clock)
    ids = q.send_batch([(f"m{i}".encode(), f"d{i % 3}") for i in range(30)])
    claimed = q.receive(2)
    q.close()
    q = SqliteQueue(queue_path, clock=clock)
    try:
        assert q.pending() == 30
        clock.advance(61)  # the two claimed before closing come back after their timeout
        got = _drain(q)
        assert sorted(m.id for m in got) == sorted(ids)
        assert {m.id: m.receive_count for m in got if m.receive_count > 1} == {m.id: 2 for m in claimed}
    finally:
        q.close()


_SENDER = """
import sys
from fieldsync.queue.embedded import SqliteQueue
queue = SqliteQueue(sys.argv[1])
i = 0
while True:
    message_id = queue.send(b"body-%d" % i, group="device-%d" % (i % 4))
    print(message_id, i, flush=True)  # only after send returned
    i += 1
"""


def test_a_sent_message_survives_sigkill_of_the_sender(queue_path):
    SqliteQueue(queue_path).close()  # created up front so the child only sends
    with _run_script(_SENDER, str(queue_path)) as proc:
        acknowledged = {}
        for line in proc.stdout:
            message_id, number = line.split()
            acknowledged[message_id] = b"body-" + number.encode()
            if len(acknowledged) == 200:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    q = SqliteQueue(queue_path)
    try:
        got = {m.id: m.body for m in _drain(q)}
    finally:
        q.close()
    assert got.items() >= acknowledged.items()


_ACKER = """
import sys
import fieldsync.queue.embedded as embedded
embedded.ACK_LINGER = 3600   # fault injection: the kill comes before the timer could write
queue = embedded.SqliteQueue(sys.argv[1])
while True:
    messages = queue.receive(10, visibility_timeout=60)   # writes the previous batch's acks first
    queue.ack([m.receipt for m in messages])
    print(" ".join(m.id for m in messages), flush=True)     # only after ack returned
    if sys.stdin.readline().strip() != "on":
        break
"""


def test_a_consumer_killed_between_its_claim_and_the_written_behind_ack_loses_nothing(queue_path):
    q = SqliteQueue(queue_path)
    sent = q.send_batch([(b"%d" % i, f"device-{i % 7}" if i % 2 else None) for i in range(200)])
    q.close()
    acked: list[list[str]] = []
    with _run_script(_ACKER, str(queue_path)) as proc:
        for _ in range(5):
            acked.append(proc.stdout.readline().split())
            assert len(acked[-1]) == 10
            if len(acked) < 5:
                proc.stdin.write("on\n")
                proc.stdin.flush()
        # the fifth batch's ack returned in the child, and the child claims nothing more
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    later = FakeClock(time.time() + 61)         # past the killed consumer's visibility timeout
    q = SqliteQueue(queue_path, clock=later)
    try:
        redelivered = _drain(q)
    finally:
        q.close()
    # the first four batches' acks rode on the next claims and are done; the fifth was still
    # in memory: those messages come back once, as a second delivery (the ledger's duplicate)
    done = {message_id for batch in acked[:4] for message_id in batch}
    assert {m.id: m.receive_count for m in redelivered if m.id in acked[4]} == {i: 2 for i in acked[4]}
    assert Counter(m.id for m in redelivered) == Counter(set(sent) - done)   # nothing lost, nothing twice
    assert all(m.receive_count == 1 for m in redelivered if m.id not in acked[4])


# -- FIFO groups --------------------------------------------------------------------------------

def test_only_the_oldest_message_of_a_group_is_handed_out(queue):
    a1, a2, b1, n1, n2 = queue.send_batch([(b"a1", "a"), (b"a2", "a"), (b"b1", "b"),
                                           (b"n1", None), (b"n2", None)])
    first = queue.receive(10)
    assert [m.id for m in first] == [a1, b1, n1, n2]
    assert queue.receive(10) == []            # a2 waits while a1 is in flight
    queue.ack([first[0].receipt])
    second = queue.receive(10)
    assert [m.id for m in second] == [a2]
    assert queue.pending("a") == 1 and queue.pending("b") == 1 and queue.pending() == 4


def test_a_released_head_keeps_its_group_blocked_until_it_is_retried(queue, clock):
    a1, a2 = queue.send_batch([(b"a1", "a"), (b"a2", "a")])
    [m] = queue.receive(10)
    queue.release([m.receipt], delay=5)
    assert queue.receive(10) == []
    clock.advance(5)
    [again] = queue.receive(10)
    assert (again.id, again.receive_count) == (a1, 2)
    queue.ack([again.receipt])
    assert [m.id for m in queue.receive(10)] == [a2]


def test_ungrouped_messages_do_not_wait_for_each_other(queue):
    ids = queue.send_batch([(b"%d" % i, None) for i in range(5)])
    assert [m.id for m in queue.receive(3)] == ids[:3]
    assert [m.id for m in queue.receive(3)] == ids[3:]


# -- visibility, receipts, dead letters -----------------------------------------------------------

def test_an_unacked_message_is_redelivered_after_its_visibility_timeout(queue, clock):
    message_id = queue.send(b"x", group="d")
    [first] = queue.receive(visibility_timeout=30)
    clock.advance(29.9)
    assert queue.receive() == []
    clock.advance(0.2)
    [second] = queue.receive(visibility_timeout=30)
    assert (second.id, second.receive_count) == (message_id, 2)
    assert second.receipt != first.receipt
    queue.ack([first.receipt])                # stale: a no-op
    assert queue.pending() == 1
    queue.ack([second.receipt])
    assert queue.pending() == 0


def test_a_stale_receipt_cannot_extend_or_release_the_new_delivery(queue, clock):
    queue.send(b"x")
    [first] = queue.receive(visibility_timeout=10)
    clock.advance(11)
    [second] = queue.receive(visibility_timeout=10)
    queue.extend(first.receipt, 1000)
    queue.release([first.receipt])
    clock.advance(11)
    [third] = queue.receive(visibility_timeout=10)  # neither call touched the second delivery
    assert third.receive_count == 3
    queue.release([second.receipt])
    assert queue.receive() == []


def test_extend_keeps_a_delivery_hidden(queue, clock):
    queue.send(b"x")
    [m] = queue.receive(visibility_timeout=10)
    clock.advance(8)
    queue.extend(m.receipt, 10)
    clock.advance(8)
    assert queue.receive() == []
    clock.advance(3)
    assert [again.receive_count for again in queue.receive()] == [2]


def test_an_expired_receipt_still_acks_until_the_message_is_claimed_again(queue, clock):
    queue.send(b"x")
    [m] = queue.receive(visibility_timeout=10)
    clock.advance(60)
    queue.ack([m.receipt])
    assert queue.pending() == 0


def test_a_receipt_acks_only_once(queue):
    queue.send_batch([(b"x", None), (b"y", None)])
    first, second = queue.receive()
    queue.ack([first.receipt, first.receipt])
    queue.ack([first.receipt])
    assert queue.pending() == 1
    with pytest.raises(ValueError):
        queue.ack(["not-a-receipt"])


def test_after_max_receives_a_message_goes_to_the_dead_letters(queue_path, clock):
    q = SqliteQueue(queue_path, clock=clock, max_receives=2)
    try:
        poison, after = q.send_batch([(b"poison", "d"), (b"after", "d")])
        for expected in (1, 2):
            [m] = q.receive(visibility_timeout=10)
            assert (m.id, m.receive_count) == (poison, expected)
            clock.advance(10)
        [m] = q.receive(visibility_timeout=10)  # the group moves on
        assert m.id == after
        [dead] = q.dead_letters()
        assert (dead.id, dead.body, dead.group, dead.receive_count, dead.receipt) == (poison, b"poison", "d", 2, "")
        assert q.pending() == 1
    finally:
        q.close()


def test_releasing_an_exhausted_message_dead_letters_it_at_once(queue_path, clock):
    q = SqliteQueue(queue_path, clock=clock, max_receives=1)
    try:
        message_id = q.send(b"x", group="d")
        [m] = q.receive()
        q.release([m.receipt], delay=60)
        assert [d.id for d in q.dead_letters()] == [message_id]
        assert q.pending() == 0
    finally:
        q.close()


# -- long polls ---------------------------------------------------------------------------------

def test_a_long_poll_wakes_when_this_process_sends(queue_path):
    consumer, producer = SqliteQueue(queue_path), SqliteQueue(queue_path)
    try:
        got, polling = [], threading.Event()

        def poll():
            polling.set()
            got.extend(consumer.receive(wait_seconds=30))

        waiter = threading.Thread(target=poll)
        waiter.start()
        polling.wait(5)
        sent_at = time.monotonic()
        producer.send(b"wake up")
        waiter.join(10)
        assert [m.body for m in got] == [b"wake up"]
        assert time.monotonic() - sent_at < 5
    finally:
        consumer.close()
        producer.close()


def test_a_long_poll_sees_another_process_send(queue_path):
    queue = SqliteQueue(queue_path)  # the real clock, as the other process has
    got = []
    waiter = threading.Thread(target=lambda: got.extend(queue.receive(wait_seconds=30)))
    waiter.start()
    script = "import sys\nfrom fieldsync.queue.embedded import SqliteQueue\nSqliteQueue(sys.argv[1]).send(b'hi')"
    subprocess.run([sys.executable, "-c", script, str(queue_path)], check=True, timeout=60)
    sent_at = time.monotonic()
    waiter.join(30)
    queue.close()
    assert [m.body for m in got] == [b"hi"]
    assert time.monotonic() - sent_at < 1.0  # re-checked every POLL_INTERVAL


def test_a_long_poll_returns_empty_when_nothing_comes(queue):
    started = time.monotonic()
    assert queue.receive(wait_seconds=4 * POLL_INTERVAL) == []
    assert time.monotonic() - started >= 4 * POLL_INTERVAL


def test_closing_the_queue_ends_a_long_poll(queue):
    got = []
    waiter = threading.Thread(target=lambda: got.append(queue.receive(wait_seconds=30)))
    waiter.start()
    queue.close()
    waiter.join(10)
    assert got == [[]]


# -- several consumers --------------------------------------------------------------------------

_CLAIMER = """
import json, sys
from fieldsync.queue.embedded import SqliteQueue
queue = SqliteQueue(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
got = []
first = True
while True:
    messages = queue.receive(10, visibility_timeout=60, wait_seconds=0.05)
    if first:   # a barrier: both hold a claimed batch before either goes on (no scheduling luck)
        print("claimed", len(messages), flush=True)
        sys.stdin.readline()
        first = False
    if not messages and queue.pending() == 0:
        break
    queue.ack([m.receipt for m in messages])
    got += [[m.id, m.receive_count] for m in messages]
print(json.dumps(got), flush=True)
"""


def test_two_processes_claiming_at_once_get_every_message_once(queue_path):
    q = SqliteQueue(queue_path)
    ids = q.send_batch([(b"%d" % i, f"device-{i % 50}" if i % 2 else None) for i in range(4000)])
    procs = [_run_script(_CLAIMER, str(queue_path)) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # start both together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        claimed = [proc.stdout.readline().split() for proc in procs]   # both claimed their first batch at once
        assert all(line[0] == "claimed" and int(line[1]) > 0 for line in claimed), claimed
        for proc in procs:
            proc.stdin.write("on\n")
            proc.stdin.flush()
        results = [json.loads(proc.stdout.readline()) for proc in procs]
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait(30)
            proc.stdout.close()
    delivered = Counter(message_id for result in results for message_id, _ in result)
    assert delivered == Counter(ids)
    assert {count for result in results for _, count in result} == {1}  # none timed out
    assert all(results), "both processes claimed messages"
    assert q.pending() == 0
    q.close()


@pytest.mark.parametrize("shared", [True, False], ids=["one-object", "object-per-thread"])
def test_threads_claiming_at_once_get_every_message_once(queue_path, shared):
    first = SqliteQueue(queue_path)
    ids = first.send_batch([(b"%d" % i, f"device-{i % 20}" if i % 3 else None) for i in range(2000)])
    queues = [first] * 4 if shared else [first] + [SqliteQueue(queue_path) for _ in range(3)]
    results: list[list[Message]] = [[] for _ in queues]

    def consume(index):
        while True:
            messages = queues[index].receive(10, wait_seconds=0.05)
            if not messages and queues[index].pending() == 0:
                return
            queues[index].ack([m.receipt for m in messages])
            results[index].extend(messages)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(queues))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for q in set(queues):
        q.close()
    delivered = [m for result in results for m in result]
    assert Counter(m.id for m in delivered) == Counter(ids)
    assert {m.receive_count for m in delivered} == {1}


# -- property: nothing is lost ------------------------------------------------------------------

_OPS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.sampled_from([None, "a", "b", "c"])),
    st.tuples(st.just("receive"), st.integers(1, 4)),
    st.tuples(st.just("ack"), st.integers(0, 10_000)),
    st.tuples(st.just("release"), st.integers(0, 10_000), st.sampled_from([0.0, 5.0])),
    st.tuples(st.just("expire"), st.sampled_from([5.0, 31.0])),
    # the process dies right after an ack returned: an ack written behind is lost with it
    st.tuples(st.just("ack+crash"), st.integers(0, 10_000)),
), max_size=60)


def _crash(q: SqliteQueue) -> None:
    """What SIGKILL leaves: the file as committed; acks still in the object's memory are gone."""
    with q._lock:
        q._acks.clear()
    q.close()


@settings(max_examples=150, deadline=None)
@given(ops=_OPS)
def test_every_message_is_acked_once_pending_or_dead(ops):
    max_receives = 3
    clock = FakeClock()
    directory = tempfile.TemporaryDirectory()
    path = os.path.join(directory.name, "queue.db")
    q = SqliteQueue(path, clock=clock, max_receives=max_receives)
    sent: list[tuple[str, str | None]] = []     # (id, group) in send order
    deliveries: list[tuple[str, str]] = []      # (id, receipt), every one ever handed out
    current: dict[str, str | None] = {}          # id -> receipt that may still ack it
    count: Counter[str] = Counter()
    acked: set[str] = set()
    dead: set[str] = set()
    # acked just before a crash: gone, or (the ack was written behind and lost) delivered again
    uncertain: set[str] = set()

    def refresh_dead():
        now_dead = {m.id: m.receive_count for m in q.dead_letters(10_000)}
        assert dead <= set(now_dead)
        for message_id in set(now_dead) - dead:
            assert now_dead[message_id] == count[message_id] == max_receives
            current[message_id] = None
            dead.add(message_id)
            uncertain.discard(message_id)   # its ack was lost in a crash, then it ran out of tries

    def check_counts():
        settled = len(sent) - len(acked) - len(dead) - len(uncertain)
        assert settled <= q.pending() <= settled + len(uncertain)

    for op in ops:
        kind = op[0]
        if kind == "send":
            sent.append((q.send(b"m%d" % len(sent), group=op[1]), op[1]))
        elif kind == "receive":
            batch = q.receive(op[1], visibility_timeout=30)
            refresh_dead()
            groups = [m.group for m in batch if m.group is not None]
            assert len(groups) == len(set(groups))
            for m in batch:
                assert m.id not in acked and m.id not in dead
                uncertain.discard(m.id)   # its ack was lost in the crash: an ordinary redelivery
                earlier = [i for i, g in sent[:[i for i, _ in sent].index(m.id)] if g == m.group]
                if m.group is not None:  # FIFO: every earlier message of the group is finished
                    assert set(earlier) <= acked | dead | uncertain
                count[m.id] += 1
                assert m.receive_count == count[m.id]
                current[m.id] = m.receipt
                deliveries.append((m.id, m.receipt))
        elif kind == "ack+crash" and deliveries:
            message_id, receipt = deliveries[op[1] % len(deliveries)]
            q.ack([receipt])
            _crash(q)
            q = SqliteQueue(path, clock=clock, max_receives=max_receives)
            if current.get(message_id) == receipt:
                uncertain.add(message_id)
                current[message_id] = None   # the model no longer knows whether it may ack
        elif kind in ("ack", "release") and deliveries:
            message_id, receipt = deliveries[op[1] % len(deliveries)]
            live = current.get(message_id) == receipt
            if kind == "ack":
                q.ack([receipt])
                if live:
                    acked.add(message_id)
            else:
                q.release([receipt], delay=op[2])
                if live and count[message_id] >= max_receives:
                    refresh_dead()
                    assert message_id in dead
            if live:
                current[message_id] = None
        elif kind == "expire":
            clock.advance(op[1])
        check_counts()

    drained = set()
    for _ in range(max_receives * len(sent) + 1):
        clock.advance(1000)
        batch = q.receive(10)
        refresh_dead()
        if not batch and q.pending() == 0:
            break
        q.ack([m.receipt for m in batch])
        count.update(m.id for m in batch)
        assert not drained & {m.id for m in batch}
        assert not acked & {m.id for m in batch}
        drained |= {m.id for m in batch}
    refresh_dead()
    assert q.pending() == 0
    assert not (acked & drained) and not (acked & dead) and not (drained & dead)
    # nothing lost: each message was acked, drained now, dead, or acked just before a crash
    assert acked | drained | dead | uncertain == {message_id for message_id, _ in sent}
    q.close()
    directory.cleanup()
