"""A real fieldsync server process for the end-to-end tests, set up as an operator would.

`FieldsyncServer.start(root)` copies the example definitions into `root/entity_defs` (so a test
may change them with `fieldsync apply`), loads the example seed data (`fieldsync seed`), adds a
directory user per role (`fieldsync users add`, ROLE_USERS with PASSWORD), then starts
`fieldsync serve` on a free loopback port and waits until `/api/v1/health` answers: no fixed
sleep. Every `fieldsync` command runs as its own process with the same environment (DATA_DIR,
DEFS_DIR, SYNC_LISTENERS) and the working directory `root`, so nothing is written into the
repository (`fieldsync apply` writes its `generated/` there too).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "correct horse battery"      # as tests/admin/conftest.py
ROLE_USERS = {"admin": "ada-admin", "analyst": "ann-analyst", "compliance": "cole-compliance",
              "field_rep": "rep-asha"}
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"   # a seed territory (examples/seed)
USER_ATTRIBUTES = {"field_rep": (f"territory_ids={PUNE_CENTRAL}",)}
START_TIMEOUT = 60.0      # seconds for `fieldsync serve` to answer its health check
STOP_TIMEOUT = 20.0

__all__ = ["FieldsyncServer", "PASSWORD", "PUNE_CENTRAL", "ROLE_USERS", "ServerFailed", "free_port"]


class ServerFailed(AssertionError):
    """The server process or a `fieldsync` command did not do what the test needs."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(root: Path, listeners: int) -> dict[str, str]:
    """The process environment: the caller's, without its FIELDSYNC_* settings (a developer's
    own database must never be touched), with this server's directories; the sources under
    test come first on the path (a worktree's, not the installed checkout's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
    env.update(FIELDSYNC_DATA_DIR=str(root / "data"), FIELDSYNC_DEFS_DIR=str(root / "entity_defs"),
               FIELDSYNC_SYNC_LISTENERS=str(listeners), PYTHONUNBUFFERED="1")
    sources = [str(ROOT / "platform"), str(ROOT / "admin")]
    env["PYTHONPATH"] = os.pathsep.join(sources + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@dataclass
class FieldsyncServer:
    """A `fieldsync serve` process on 127.0.0.1 with its own DATA_DIR and DEFS_DIR under `root`."""

    root: Path
    listeners: int = 2
    port: int = 0
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)   # seconds per setup step, for the report

    @property
    def url(self) -> str:
        """The server's origin, e.g. http://127.0.0.1:41234 (the admin UI is at url + /admin/)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def defs_dir(self) -> Path:
        return self.root / "entity_defs"

    @property
    def log_path(self) -> Path:
        return self.root / "serve.log"

    @classmethod
    def prepare(cls, root: Path, *, users: dict[str, str] | None = None) -> "FieldsyncServer":
        """Set up `root` as an operator would, without starting the server: a copy of the
        example definitions, the seed data and one user per role."""
        server = cls(root=root, env=_environment(root, 0))
        shutil.copytree(ROOT / "entity_defs", server.defs_dir)
        server.data_dir.mkdir(parents=True)
        # the seed data and the users, in one process (the CLI's entry, once per command)
        server.cli_batch([(["seed", str(ROOT / "examples" / "seed")], None)]
                         + [server._add_user_command(role, user, PASSWORD)
                            for role, user in (users or ROLE_USERS).items()])
        return server

    @classmethod
    def start(cls, root: Path, *, listeners: int = 2, prepared: Path | None = None,
              users: dict[str, str] | None = None) -> "FieldsyncServer":
        """Start a server on `root`: a copy of the directory `prepared` (made by `prepare`, so a
        run sets up once and each module starts from the same state), else set up afresh."""
        started = time.perf_counter()
        if prepared is not None:
            root.mkdir(parents=True, exist_ok=True)
            for name in ("entity_defs", "data"):
                shutil.copytree(prepared / name, root / name)
        else:
            cls.prepare(root, users=users)
        server = cls(root=root, listeners=listeners, env=_environment(root, listeners))
        server.timings["set up"] = time.perf_counter() - started
        mark = time.perf_counter()
        server.serve()
        server.timings["serve"] = time.perf_counter() - mark
        return server

    # -- the `fieldsync` command ----------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run `fieldsync ARGS` against this server's directories; fails the test when it exits
        non-zero (unless check=False)."""
        done = subprocess.run([sys.executable, "-m", "fieldsync.cli", *args], cwd=self.root, env=self.env,
                              input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise ServerFailed(f"fieldsync {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def cli_batch(self, commands: Sequence[tuple[Sequence[str], str | None]], timeout: float = 300.0) -> str:
        """Run several `fieldsync` commands, one after another, in one process: the console
        script's entry `fieldsync.cli.main(args)` per (args, standard input) pair, so the
        interpreter starts once (about 1 s each otherwise). Stops at the first that fails."""
        driver = (
            "import io, json, sys\n"
            "from fieldsync.cli import main\n"
            "for args, stdin in json.loads(sys.stdin.read()):\n"
            "    sys.stdin = io.StringIO(stdin or '')\n"
            "    status = main(args)\n"
            "    if status:\n"
            "        sys.exit(f'fieldsync {\" \".join(args)} exited {status}')\n")
        done = subprocess.run([sys.executable, "-c", driver], cwd=self.root, env=self.env,
                              input=json.dumps([[list(args), stdin] for args, stdin in commands]),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ServerFailed(f"fieldsync commands failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def add_users(self, users: dict[str, str], password: str = PASSWORD) -> None:
        """`fieldsync users add` for each role -> user id (the field rep works in the seed
        territory PUNE_CENTRAL)."""
        self.cli_batch([self._add_user_command(role, user, password) for role, user in users.items()])

    @staticmethod
    def _add_user_command(role: str, user: str, password: str) -> tuple[list[str], str]:
        args = ["users", "add", user, "--role", role, "--password-stdin"]
        for attr in USER_ATTRIBUTES.get(role, ()):
            args += ["--attr", attr]
        return args, password + "\n"

    # -- the server process ---------------------------------------------------------------------

    def serve(self) -> None:
        """Start `fieldsync serve` and return once its health check answers 200."""
        self.port = free_port()
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fieldsync.cli", "serve", "--port", str(self.port)],
                cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.process.poll() is not None:
                raise ServerFailed(f"fieldsync serve exited {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"fieldsync serve did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)   # the poll interval; readiness is the health answer, not the time slept

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGTERM, then wait for the process (SIGKILL after STOP_TIMEOUT)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # -- REST ----------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: object = None, token: str | None = None) -> tuple[int, object]:
        """A JSON request to the API (path below /api/v1); (status, decoded body)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def login_token(self, user: str, password: str = PASSWORD) -> str:
        """A bearer token for a directory user, from `POST /api/v1/auth/login` (as an app logs in)."""
        status, body = self.request("POST", "/auth/login", {"user": user, "password": password})
        if status != 200:
            raise ServerFailed(f"login of {user} answered {status}: {body}")
        return body["token"]
