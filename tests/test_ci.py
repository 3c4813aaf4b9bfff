"""`make test` on a fresh machine is all a newcomer (and CI) runs: the Makefile's test recipe
sets up the services the suite needs, and .ci/run adds nothing of its own."""

import os
import socket
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
# as tests/conftest.py (not imported from it: `conftest` names a different module depending on
# which test directories pytest collected first)
PG_ADMIN_URL = os.environ.get("FIELDSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_ci_runs_only_the_readme_test_command():
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "make test"
    assert all(c.startswith(("set ", "cd ")) for c in commands[:-1]), commands
    assert "make test" in (ROOT / "README.md").read_text()


def test_make_test_sets_up_services_before_the_suite():
    recipe = _recipe("test")
    services = recipe.index("bash ci/services.sh")
    pytest_line = next(i for i, line in enumerate(recipe) if "pytest" in line)
    assert services < pytest_line


@pytest.mark.broker   # it checks the broker is up: never while a broker test restarts it
def test_services_script_is_idempotent_and_leaves_them_up():
    # run it again: everything is already up, so it must succeed and change nothing
    done = subprocess.run(["bash", "ci/services.sh"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    engine = sa.create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select current_database()")).scalar() == "test"
    engine.dispose()
    with socket.create_connection(("127.0.0.1", 61613), timeout=5) as sock:
        sock.settimeout(5)
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        assert sock.recv(4096).startswith(b"CONNECTED")
        sock.sendall(b"DISCONNECT\n\n\0")
    # Chromium for the admin UI's browser tests (ci/chromium.sh): Debian's, launched by Playwright
    assert os.access("/usr/bin/chromium", os.X_OK)
