"""`kill -9` a checkpointed run at random points, rerun it, and count what each item cost.

End to end: a child process (`_kill_child.py`) streams ``N_ITEMS`` items through
`ParallelBatchProcessor.stream` with an SQLite checkpoint, its strategy calling the
`ProviderSimulator` this test runs, over HTTP with the openai SDK. The simulator counts the
calls per item and per run (each run has its own API key), so the counts survive the child.
The test kills the child with SIGKILL, possibly several times, then reruns it to completion:

- after a kill the store passes ``PRAGMA integrity_check``; every outcome committed before
  is still there unchanged; what the child printed had been committed first;
- a rerun never calls an item whose outcome was committed; the completed run prints every
  item exactly once, replaying exactly the committed ones, and the store then holds one
  successful entry per item;
- the items called again are the ones called before the kill and not committed: at most
  ``max_workers`` in flight plus the finished outcomes waiting for their commit, all of
  them among the claims of the killed run (at most a window of items), and the rerun
  reports them (with the claimed items that never started) as ``unfinished``; so every
  item costs one call plus one per kill that caught it uncommitted.

The kill points: after a random number of printed results, at a random provider call (from
inside the simulator), after a random delay, and inside the store's SQLite commit of claims
or of outcomes, before ``COMMIT`` (a transaction in progress) or after it (durable, not yet
published).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import async_batch_llm
from async_batch_llm._internal.stream_run import default_window
from async_batch_llm.checkpoint import CheckpointEntry, EntryState, SQLiteCheckpointReader
from async_batch_llm.testing.simulator import ProviderRequest, ProviderSimulator, SimulatorConfig

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

SRC = Path(async_batch_llm.__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_kill_child.py")

N_ITEMS = 240
WORKERS = 8
#: Most items a run has taken (and claimed) whose results the consumer has not taken.
WINDOW = default_window(WORKERS)
IDS = [f"item-{i:04d}" for i in range(N_ITEMS)]
#: Simulated provider latency per call, in seconds.
LATENCY = (0.005, 0.03)
#: Seconds a run may take before the test gives up on it.
RUN_DEADLINE = 60.0
POLL = 0.002

#: The kill points, in the order a scenario applies them (one per run).
KILL_POINTS = (
    "lines",  # once the child printed a random number of results
    "call",  # at a random provider call, from inside the simulator's reply hook
    "delay",  # a random time after the child is ready to start the processor
    "before-open",  # inside the store's first or second commit (schema, session number)
    "after-open",
    "before-claim",  # inside the commit of the claims that reaches a random count
    "after-claim",
    "before-outcome",  # inside the commit of the outcomes that reaches a random count
    "after-outcome",
)

#: (seed, kill points, stream(ordered=...) and a post-processor)
SCENARIOS = [
    pytest.param(101, ("lines",), False, id="lines"),
    pytest.param(202, ("after-open", "call"), False, id="after_open-call"),
    pytest.param(303, ("before-outcome",), False, id="before-outcome"),
    pytest.param(404, ("after-outcome",), False, id="after-outcome"),
    pytest.param(505, ("before-open", "before-claim"), False, id="before_open-before_claim"),
    pytest.param(606, ("delay", "after-claim", "call"), False, id="delay-after_claim-call"),
    pytest.param(
        707, ("call", "before-outcome", "lines"), True, id="ordered_post-call-before_outcome-lines"
    ),
]


@dataclass
class Run:
    """What one child run did, as the test saw it once the child was gone."""

    number: int
    kill_point: str | None
    killed: bool
    #: Store entries by id after the run (read from a copy of its files).
    store: dict[str, CheckpointEntry]
    #: The store's session number after the run (0: no run has opened it yet).
    session: int
    #: ``(item_id, replayed, ok)`` per result the child printed, in order.
    printed: list[tuple[str, bool, bool]]
    started: list[str]
    ended: list[str]
    report: dict[str, Any] | None
    #: Calls per item the simulator received from this run (filled in at the end).
    calls: Counter[str] = field(default_factory=Counter)
    #: Of those, how many it answered, and how many the client left before the answer.
    answered: int = 0
    abandoned: int = 0

    def ids_in(self, state: EntryState) -> set[str]:
        return {item_id for item_id, entry in self.store.items() if entry.state is state}


class Harness:
    """Runs the children against one simulator, counting calls per run and per item."""

    def __init__(self, tmp_path: Path, rng: random.Random, *, ordered_post: bool) -> None:
        self.ordered_post = ordered_post
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.db = tmp_path / "run.sqlite"
        self.scratch = tmp_path / "scratch"
        self.rng = rng
        self.calls: dict[int, Counter[str]] = {}
        self.runs: list[Run] = []
        # (run, call number, process): the simulator kills that process at that call.
        self.kill_at_call: tuple[int, int, asyncio.subprocess.Process] | None = None
        self.sim: ProviderSimulator | None = None

    def reply(self, request: ProviderRequest) -> None:
        """The simulator's reply hook: count the call, kill the child at its kill point."""
        number = int(request.api_key.removeprefix("sk-run"))
        item_id = request.prompt.split()[1].rstrip(":")
        counts = self.calls.setdefault(number, Counter())
        counts[item_id] += 1
        kill = self.kill_at_call
        if kill is not None and kill[0] == number and kill[1] == counts.total():
            self.kill_at_call = None
            if kill[2].returncode is None:
                kill[2].send_signal(signal.SIGKILL)
        return None  # the default reply: "Echo: <prompt>"

    async def run(self, kill_point: str | None) -> Run:
        assert self.sim is not None
        number = len(self.runs) + 1
        committed = self.runs[-1].ids_in(EntryState.SUCCEEDED) if self.runs else set()
        to_run = N_ITEMS - len(committed)  # items this run calls (claims, commits) if it ends
        if to_run == 0 and kill_point not in (None, "lines", "delay", "before-open", "after-open"):
            kill_point = None  # no call, claim or outcome commit left to be killed at
        pause = None
        if kill_point is not None and kill_point.startswith(("before-", "after-")):
            where, what = kill_point.split("-")
            state = {"open": "meta", "claim": "pending", "outcome": "succeeded"}[what]
            pause = {
                "where": where,
                "state": state,
                "threshold": self.rng.randint(1, 2 if state == "meta" else to_run),
            }
        settings = {
            "base_url": self.sim.openai_base_url,
            "db": str(self.db),
            "work": str(self.work),
            "run": number,
            "items": N_ITEMS,
            "workers": WORKERS,
            "pause": pause,
            "ordered": self.ordered_post,
            "post": self.ordered_post,
        }
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        }
        stderr_path = self.work / f"stderr-{number}"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CHILD),
                json.dumps(settings),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                cwd=self.work,
                start_new_session=True,
            )
        try:
            await self._kill_at(kill_point, process, number, to_run, pause)
            await asyncio.wait_for(process.wait(), RUN_DEADLINE)
        finally:
            self.kill_at_call = None
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()
        code = process.returncode
        if code not in (0, -signal.SIGKILL):
            pytest.fail(
                f"run {number} (kill point {kill_point}, settings {settings}) exited with "
                f"{code}:\n{stderr_path.read_text()}"
            )
        report_path = self.work / f"report-{number}.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        if code == 0:
            assert report is not None, f"run {number} ended without a report"
        starts, ends = self._calls_log(number)
        store, meta = self._snapshot(number)
        run = Run(
            number=number,
            kill_point=kill_point,
            # A kill that landed after the stream ended and the report was written (as the
            # interpreter shut down) did not stop the run.
            killed=report is None,
            store=store,
            session=int(meta.get("session", 0)),
            printed=self._printed(number),
            started=starts,
            ended=ends,
            report=report,
        )
        self.runs.append(run)
        return run

    async def _kill_at(
        self,
        kill_point: str | None,
        process: asyncio.subprocess.Process,
        number: int,
        to_run: int,
        pause: dict[str, Any] | None,
    ) -> None:
        if kill_point is None:
            return
        control = self.work / f"control-{number}"
        if kill_point == "lines":
            lines = self.rng.randint(1, N_ITEMS - 1)
            out = self.work / f"out-{number}"
            reached = await self._until(lambda: _count_lines(out) >= lines, process)
        elif kill_point == "call":
            self.kill_at_call = (number, self.rng.randint(1, to_run), process)
            return  # the simulator kills it
        elif kill_point == "delay":
            delay = self.rng.uniform(0.0, 1.0)
            reached = await self._until(lambda: b"ready" in _read(control), process)
            if reached:
                await asyncio.sleep(delay)  # the kill point itself, not a synchronisation
        else:
            assert pause is not None, kill_point
            reached = await self._until(lambda: b"paused" in _read(control), process)
            assert reached, f"run {number} ended without reaching its pause point {pause}"
        if reached and process.returncode is None:
            process.send_signal(signal.SIGKILL)

    @staticmethod
    async def _until(condition: Callable[[], bool], process: asyncio.subprocess.Process) -> bool:
        """Poll `condition` until it holds (True) or the process ends (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RUN_DEADLINE
        while not condition():
            if process.returncode is not None:
                return False
            if loop.time() > deadline:
                pytest.fail("the child neither reached its kill point nor ended")
            await asyncio.sleep(POLL)
        return True

    def _snapshot(self, number: int) -> tuple[dict[str, CheckpointEntry], dict[str, str]]:
        """Check and read the store (entries by id, metadata) as the child left it, from a
        copy of its files: the next run, not this check, recovers the log a killed writer
        left."""
        if not self.db.exists():
            return {}, {}
        if self.scratch.exists():
            shutil.rmtree(self.scratch)
        self.scratch.mkdir()
        copy = self.scratch / self.db.name
        for suffix in ("", "-wal"):
            source = Path(f"{self.db}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{copy}{suffix}")
        with closing(sqlite3.connect(copy)) as conn:
            check = conn.execute("PRAGMA integrity_check").fetchall()
            assert check == [("ok",)], f"after run {number}: {check}"
            empty = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if empty:  # killed before the schema was committed
            return {}, {}
        with SQLiteCheckpointReader(copy) as reader:
            return {entry.item_id: entry for entry in reader.entries()}, reader.meta()

    def _printed(self, number: int) -> list[tuple[str, bool, bool]]:
        printed = []
        for line in _lines(self.work / f"out-{number}"):
            item_id, replayed, ok = line.split()
            printed.append((item_id, replayed == "1", ok == "1"))
        return printed

    def _calls_log(self, number: int) -> tuple[list[str], list[str]]:
        starts, ends = [], []
        for line in _lines(self.work / f"calls-{number}"):
            word, item_id = line.split()
            (starts if word == "start" else ends).append(item_id)
        return starts, ends


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _count_lines(path: Path) -> int:
    return _read(path).count(b"\n")


def _lines(path: Path) -> list[str]:
    text = _read(path).decode()
    # Each line was one write(2) of a whole line: a kill cannot leave half of one.
    assert not text or text.endswith("\n"), f"{path.name} ends in a partial line"
    return text.splitlines()


@pytest.mark.parametrize(("seed", "kill_points", "ordered_post"), SCENARIOS)
async def test_kill_9_at_random_points_then_resume_calls_each_item_once_more_at_most_per_kill(
    tmp_path: Path, seed: int, kill_points: tuple[str, ...], ordered_post: bool
) -> None:
    assert set(kill_points) <= set(KILL_POINTS)
    harness = Harness(tmp_path, random.Random(seed), ordered_post=ordered_post)
    config = SimulatorConfig(latency=LATENCY, seed=seed, recent_requests=100_000)
    async with ProviderSimulator(config, reply=harness.reply) as sim:
        harness.sim = sim
        for kill_point in kill_points:
            if (await harness.run(kill_point)).report is not None:
                break  # it finished before the kill landed: nothing left to kill
        if harness.runs[-1].report is None:
            await harness.run(None)
    # The simulator has stopped: it served every request any run sent.
    statuses = Counter((record.api_key, record.status) for record in sim.stats.recent)
    for run in harness.runs:
        run.calls = harness.calls.get(run.number, Counter())
        key = f"sk-run{run.number}"
        run.answered, run.abandoned = statuses[key, 200], statuses[key, 499]
    context = f"seed {seed}{', ordered, post-processed' if ordered_post else ''}, " + ", ".join(
        f"run {run.number}: {run.kill_point or 'to the end'}"
        f"{' (killed)' if run.killed else ' (finished)'}"
        for run in harness.runs
    )
    runs = harness.runs
    for run in runs:  # shown when the test fails
        print(summary(run))
    assert all(run.killed for run in runs[:-1]), context
    assert not runs[-1].killed, context
    assert runs[-1].report is not None
    assert runs[-1].report["store"] == str(harness.db), context

    previous: dict[str, CheckpointEntry] = {}
    session = 0
    uncommitted_calls: list[set[str]] = []
    for run in runs:
        # A run killed before it opened the store leaves the session number as it was.
        assert run.session == session + 1 or (run.killed and run.session == session), context
        check_run(run, previous, session, ordered_post, context)
        if run.killed:
            uncommitted_calls.append(set(run.calls) - run.ids_in(EntryState.SUCCEEDED))
        previous, session = run.store, run.session

    for before, after, uncommitted in zip(runs, runs[1:], uncommitted_calls, strict=False):
        # Called by the killed run and again by the next: only items it had not committed.
        called_again = set(before.calls) & set(after.calls)
        where = f"{context}; run {after.number} after run {before.number}"
        assert called_again <= uncommitted, where
        if after.report is not None:
            # The rerun ran everything the killed run left uncommitted, and counted each
            # of them as unfinished (along with claimed items that never started).
            assert called_again == uncommitted, where
            assert len(called_again) <= after.report["unfinished"], where

    # Each item cost one call, plus one per kill that caught it called but not committed.
    total = Counter[str]()
    for run in runs:
        total.update(run.calls)
    for item_id in IDS:
        extra = sum(item_id in uncommitted for uncommitted in uncommitted_calls)
        assert total[item_id] == 1 + extra, f"{context}; {item_id}"

    with closing(sqlite3.connect(harness.db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], context


def check_run(
    run: Run,
    previous: dict[str, CheckpointEntry],
    previous_session: int,
    ordered: bool,
    context: str,
) -> None:
    """What must hold for one run, given the store (entries, session) it started from."""
    where = f"{context}; run {run.number}"
    store = run.store
    if run.session == previous_session:
        # Killed before it opened the store: it called and printed nothing, changed nothing.
        assert run.killed, where
        assert not run.calls, where
        assert not run.printed, where
        assert store == previous, where
        return
    committed_before = {i for i, e in previous.items() if e.state is EntryState.SUCCEEDED}
    committed = run.ids_in(EntryState.SUCCEEDED)
    pending = run.ids_in(EntryState.PENDING)
    assert committed | pending == set(store), f"{where}: only claims and successes are stored"
    assert set(store) <= set(IDS), where
    # A committed outcome survives every later run (and kill) untouched.
    for item_id in committed_before:
        assert store.get(item_id) == previous[item_id], f"{where}: {item_id}"

    # The provider: never an item whose outcome was committed; each other item at most once.
    # Each call was answered, or left unanswered by a client killed while it waited.
    assert run.answered + run.abandoned == run.calls.total(), where
    assert run.abandoned <= (WORKERS if run.killed else 0), where
    called = set(run.calls)
    assert not called & committed_before, f"{where}: committed items were called again"
    assert all(count == 1 for count in run.calls.values()), f"{where}: {run.calls}"
    # The child logged each call's start before sending it and its end once answered.
    assert len(run.started) == len(set(run.started)), where
    assert set(run.ended) <= called <= set(run.started), where
    # Every outcome this run committed came from a call of this run that had returned.
    assert committed - committed_before <= set(run.ended), where
    for item_id in committed - committed_before:
        assert store[item_id].session == run.session, f"{where}: {item_id}"

    # What the child printed: each result once, committed before it was printed, replayed
    # exactly when it had been committed by an earlier run, with the right output.
    printed_ids = [item_id for item_id, _, _ in run.printed]
    assert len(printed_ids) == len(set(printed_ids)), f"{where}: a result printed twice"
    assert set(printed_ids) <= committed, f"{where}: a result printed before its commit"
    assert all(ok for _, _, ok in run.printed), f"{where}: a wrong or failed result"
    for item_id, replayed, _ in run.printed:
        assert replayed == (item_id in committed_before), f"{where}: {item_id}"
    if ordered:
        assert printed_ids == IDS[: len(printed_ids)], f"{where}: out of order"

    pending_before = {i for i, e in previous.items() if e.state is EntryState.PENDING}
    if run.killed:
        # Called and not committed: the calls in flight at the kill (at most one per
        # worker) and the finished ones whose outcomes waited for a commit. All were
        # claimed by this run first, so the rerun finds them unfinished.
        uncommitted = called - committed
        in_flight = set(run.started) - set(run.ended)
        assert len(in_flight) <= WORKERS, f"{where}: {len(in_flight)} calls in flight"
        assert uncommitted <= pending, where
        claimed_here = {i for i in pending if store[i].session == run.session}
        assert uncommitted <= claimed_here, where
        assert len(claimed_here) <= WINDOW, f"{where}: {len(claimed_here)} claims open"
        return

    # The run that finished: every item exactly once, all of them stored as successes;
    # the provider called exactly the items that had not been committed.
    assert sorted(printed_ids) == IDS, where
    assert committed == set(IDS), where
    assert not pending, where
    assert called == set(IDS) - committed_before, where
    assert run.report is not None
    assert run.report == {
        "store": run.report["store"],
        "session": run.session,
        "replayed": len(committed_before),
        "unfinished": len(pending_before),
        "run_again": 0,
        "new": N_ITEMS - len(committed_before) - len(pending_before),
        "recorded": N_ITEMS - len(committed_before),
    }, where


def summary(run: Run) -> str:
    """One line about a run: where it was killed and what it left behind."""
    committed = run.ids_in(EntryState.SUCCEEDED)
    called = set(run.calls)
    return (
        f"run {run.number} ({run.kill_point or 'to the end'}, "
        f"{'killed' if run.killed else 'finished'}): {len(run.printed)} printed, "
        f"{len(called)} called, {len(set(run.started) - set(run.ended))} in flight "
        f"({run.abandoned} unanswered), "
        f"{len(set(run.ended) - committed)} answered but not committed, "
        f"store {len(committed)} succeeded / {len(run.ids_in(EntryState.PENDING))} pending"
        f", report {run.report}"
    )
