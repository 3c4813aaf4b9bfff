"""The one backoff rule (fieldsync.backoff): full jitter below a doubling bound, never above the cap."""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from fieldsync.backoff import Backoff

bases = st.floats(min_value=0.001, max_value=100.0)
caps = st.floats(min_value=0.001, max_value=10_000.0)
retries = st.integers(min_value=0, max_value=10_000)


@given(base=bases, cap=caps, retry=retries, seed=st.integers(), retry_after=st.none() | st.floats(0, 1000))
def test_a_delay_lies_in_zero_to_its_bound(base, cap, retry, seed, retry_after):
    backoff = Backoff(base=base, cap=cap, rng=random.Random(seed))
    delay = backoff.delay(retry)
    assert 0.0 <= delay <= backoff.ceiling(retry) <= cap
    with_minimum = backoff.delay(retry, retry_after=retry_after)
    assert with_minimum <= max(cap, retry_after or 0.0)
    assert with_minimum >= (retry_after or 0.0)            # a server's Retry-After is a minimum


@given(base=bases, cap=caps, retry=st.integers(min_value=0, max_value=200))
def test_the_bound_grows_at_most_twofold_up_to_the_cap(base, cap, retry):
    backoff = Backoff(base=base, cap=cap)
    now, after = backoff.ceiling(retry), backoff.ceiling(retry + 1)
    assert now <= after <= 2 * now
    assert backoff.ceiling(0) == min(base, cap)


@given(seed=st.integers(), base=bases, cap=caps)
def test_the_same_random_source_gives_the_same_delays(seed, base, cap):
    first = Backoff(base=base, cap=cap, rng=random.Random(seed))
    second = Backoff(base=base, cap=cap, rng=random.Random(seed))
    assert [first.delay(n) for n in range(20)] == [second.delay(n) for n in range(20)]


def test_the_bounds_of_the_three_users():
    redelivery = Backoff(base=1.0, cap=60.0)            # workers.pool.retry_delay
    assert [redelivery.ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    reconnect = Backoff(base=0.1, cap=2.0)              # queue.stomp reconnects
    assert [round(reconnect.ceiling(n), 3) for n in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    sdk = Backoff(base=1.0, cap=300.0)                  # client.background, protocol §9
    assert sdk.ceiling(1) == 2 and sdk.ceiling(8) == 256 and sdk.ceiling(9) == 300
    assert sdk.ceiling(8, cap=3600) == 256 and sdk.ceiling(20, cap=3600) == 3600


def test_the_sdk_imports_it_without_the_server():
    import ast
    from pathlib import Path
    import fieldsync.backoff as module
    tree = ast.parse(Path(module.__file__).read_text("utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert imported <= {"__future__", "random"}
