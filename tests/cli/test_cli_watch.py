"""``abl status STATE --watch`` in a pseudo-terminal while another ``abl run`` writes STATE.

The simulator holds the replies after the first few, so the run is caught half-way: the
live view must show the items done so far and the calls in flight, then, once the replies
are released and the run ends, every item and the run's end; Ctrl-C (sent through the
terminal, as a user would) stops the view with exit status 0 and leaves the run alone.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from typing import Final

import pytest
from test_cli_support import Cli, StartSimulator, poll

from async_batch_llm._internal.timeline import read_timeline
from async_batch_llm.checkpoint import SQLiteCheckpointReader

LINES: Final = 12
FOOTER: Final = "Ctrl-C to stop watching"
FREE: Final = 5
CONCURRENCY: Final = 3
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")

# Run by the child before `abl`: become the session's controlling terminal, so that the
# terminal's Ctrl-C reaches it as SIGINT (Popen hands over the descriptors only).
_BECOME_TTY_OWNER = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'async_batch_llm.cli', *sys.argv[1:]])"
)


class Terminal:
    """A process on the slave side of a pty; reads what it draws from the master side."""

    def __init__(self, cli: Cli, *args: str, rows: int = 50, columns: int = 140) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = dict(cli.env, TERM="xterm-256color", COLUMNS=str(columns), LINES=str(rows))
        env.pop("NO_COLOR", None)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BECOME_TTY_OWNER, *args],
            cwd=cli.directory,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    def text(self) -> str:
        return _ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def screen(self) -> str:
        """The last frame received whole: from the state file's name to the footer, or ""
        before the first whole frame (a read can end in the middle of a frame, and a
        condition met by half a frame says nothing about the rest of it)."""
        text = self.text()
        end = text.rfind(FOOTER)
        if end < 0:
            return ""
        start = text.rfind("abl-state  run ", 0, end)
        return text[start if start >= 0 else 0 : end + len(FOOTER)]

    def read_until(
        self,
        condition: Callable[[str], bool],
        what: str,
        timeout: float = 60.0,
        *,
        whole_frames: bool = True,
    ) -> str:
        """Read until `condition` holds for the last whole frame (or, with
        ``whole_frames=False``, for everything drawn so far: for views without the footer)."""
        deadline = time.monotonic() + timeout
        seen = self.screen if whole_frames else self.text
        while not condition(seen()):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out waiting for {what}; screen:\n{self.text()[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.raw += os.read(self.master, 65536)
                except OSError:  # the process closed the terminal
                    if self.process.poll() is not None:
                        pytest.fail(f"the view exited ({self.process.returncode}):\n{self.text()}")
        return seen()

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self.master)


def _timeline_written(state: str) -> bool:
    try:
        with SQLiteCheckpointReader(state) as reader:
            return bool(read_timeline(reader.meta()).points)
    except Exception:
        return False  # not created yet


def test_watch_shows_a_run_in_progress_and_its_end(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator(latency=0.0)
    simulator.hold(free=FREE)
    cli.write_jsonl("in.jsonl", [{"id": f"q{n}", "prompt": f"question {n}"} for n in range(LINES)])
    state = str(cli.directory / "out.jsonl.abl-state")
    run_args = ["run", "in.jsonl", "out.jsonl", "-m", "openai:gpt-4o-mini"]
    run_args += ["--base-url", str(simulator.openai_base_url), "-c", str(CONCURRENCY)]
    with cli.start(*run_args, "--no-progress") as run:
        poll(lambda: simulator.waiting == CONCURRENCY, "the held calls")
        poll(lambda: _timeline_written(state), "the run's first timeline sample")
        view = Terminal(cli, "status", state, "--watch", "--interval", "0.1")
        try:
            screen = view.read_until(
                lambda s: f"{FREE} succeeded" in s and f"{CONCURRENCY} in flight" in s,
                "the items done so far and the calls in flight",
            )
            assert f"items: {LINES}" in screen  # every line is claimed
            assert "running" in screen
            assert "openai/" in screen  # the scope table
            assert "gpt-4o-mini" in screen  # latency per model
            simulator.release()
            assert run.wait().returncode == 0
            screen = view.read_until(
                lambda s: f"{LINES} succeeded" in s and "ended" in s, "the end of the run"
            )
            assert "0 unfinished (100% done)" in screen
            assert view.process.poll() is None  # the view keeps watching until told
            view.send(b"\x03")  # Ctrl-C, through the terminal
            assert view.process.wait(30) == 0
        finally:
            view.close()


def test_watch_waits_for_a_state_file_that_does_not_exist_yet(cli: Cli) -> None:
    # Brackets in the name are text, not rich markup (a "[/]" made the view crash).
    view = Terminal(cli, "status", "later[/].abl-state", "--watch", "--interval", "0.1")
    try:
        view.read_until(
            lambda s: "Waiting for later[/].abl-state" in s,
            "the waiting message",
            whole_frames=False,
        )
        view.send(b"\x03")
        assert view.process.wait(30) == 0
    finally:
        view.close()


def test_watch_cannot_be_combined_with_json(cli: Cli) -> None:
    result = cli.run("status", "x.abl-state", "--watch", "--json")
    assert result.returncode == 2
    assert "cannot be combined with --json" in result.stderr
