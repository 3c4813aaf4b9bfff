"""Fixtures of the dependency-outage tests: the broker's (tests/queue/stomp_fixtures.py) and
moto's (tests/moto_server.py), which these tests take down and bring back."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "queue"))

from moto_server import aws_credentials  # noqa: E402,F401
from stomp_fixtures import activemq, stomp_queue_url  # noqa: E402,F401
