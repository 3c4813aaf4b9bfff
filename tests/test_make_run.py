"""`make run` end to end: the platform starts on the embedded defaults with the example
definitions and seed data, prints a URL, the demo users' passwords and a token per role, and
answers curl-style requests: a printed password logs in."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUNE = {"270707fc-40e4-5205-8dad-51e11ccbfacf", "58f87001-cb0b-5eac-8382-fd18ac1f335e"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def running(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldsync.cli", "run", "--port", str(port), "--data-dir", str(tmp_path / "var")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:           # blocks until the server says it is serving
            lines.append(line)
            if "serving on" in line:
                break
        else:
            pytest.fail("fieldsync run exited:\n" + "".join(lines))
        tokens = dict(re.findall(r"^\s+(\w+)\s+\([^)]*\): (\S+)$", "".join(lines), re.M))
        yield f"http://127.0.0.1:{port}/api/v1", tokens, "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()


def call(method, url, token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_make_run_serves_the_example(running):
    base, tokens, output = running
    assert set(tokens) == {"field_rep", "supervisor", "admin", "analyst", "compliance"}
    assert "seed data:" in output

    status, body = call("GET", f"{base}/retailer", tokens["field_rep"])
    assert status == 200
    retailers = body["items"]
    assert len(retailers) == 4 and {r["territory_id"] for r in retailers} == PUNE   # row filter

    status, created = call("POST", f"{base}/visit", tokens["field_rep"], {
        "retailer_id": retailers[0]["id"], "territory_id": retailers[0]["territory_id"],
        "visited_at": "2026-11-27T10:00:00Z", "purpose": "order", "duration_minutes": 20})
    assert status == 201 and created["rep_id"] == "rep-asha" and created["version"] == 1

    status, problem = call("POST", f"{base}/visit", tokens["field_rep"], {"purpose": "gossip", "duration_minutes": -5})
    assert status == 422
    assert {e["field"] for e in problem["errors"]} >= {"purpose", "duration_minutes", "retailer_id", "visited_at"}

    status, _ = call("GET", f"{base}/retailer")
    assert status == 401
    status, doc = call("GET", f"{base}/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")


def test_make_run_prints_passwords_the_demo_users_log_in_with(running):
    base, _tokens, output = running
    logins = {user: (password, role) for user, password, role in
              re.findall(r"^\s+login (\S+) with password (\S+) \((\w+)\)$", output, re.M)}
    assert set(logins) == {"rep-asha", "sup-ravi", "admin-meera", "analyst-joe", "compliance-lin"}
    password, role = logins["rep-asha"]
    status, body = call("POST", f"{base}/auth/login", body={"user": "rep-asha", "password": password})
    assert status == 200 and body["role"] == role == "field_rep"
    status, page = call("GET", f"{base}/retailer", body["token"])
    assert status == 200 and {r["territory_id"] for r in page["items"]} == PUNE
    status, problem = call("POST", f"{base}/auth/login", body={"user": "rep-asha", "password": password + "x"})
    assert status == 401 and problem["reason"] == "invalid_credentials"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_make_run_admin_ui_takes_the_printed_admin_password(running):
    """README: the admin UI at /admin, logged in to with a password `make run` printed."""
    base, _tokens, output = running
    admin_url = re.search(r"^admin UI: (\S+)", output, re.M).group(1)
    password = re.search(r"^\s+login admin-meera with password (\S+) \(admin\)$", output, re.M).group(1)
    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(admin_url + "login", timeout=20) as resp:
        html = resp.read().decode()
        cookie = resp.headers["Set-Cookie"].split(";")[0]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    form = urllib.parse.urlencode({"csrf_token": csrf, "user": "admin-meera", "password": password}).encode()
    request = urllib.request.Request(admin_url + "login", data=form, headers={"Cookie": cookie})
    try:
        opener.open(request, timeout=20)
        pytest.fail("the login did not redirect")
    except urllib.error.HTTPError as exc:
        assert exc.code == 302 and exc.headers["Location"].rstrip("/").endswith("/admin")
        session = exc.headers["Set-Cookie"].split(";")[0]
    with opener.open(urllib.request.Request(admin_url, headers={"Cookie": session}), timeout=20) as resp:
        assert resp.status == 200 and "admin-meera" in resp.read().decode()
