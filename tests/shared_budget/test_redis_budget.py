"""`RedisBudget` against a real redis-server, in one process: several controllers stand for
several processes (each has its own connection, state and lock, as a process would)."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from typing import Any

import pytest
import redis

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
)
from async_batch_llm._internal.rate_control.controller import RateController
from async_batch_llm._internal.rate_control.scope import RateSettings
from async_batch_llm.observers import BaseObserver
from async_batch_llm.rate_control import (
    AdaptiveRateLimitStrategy,
    QuotaExhaustedError,
    RateScope,
    RedisBudget,
    SharedBudgetUnavailableError,
)
from redis_support import RedisServer
from support import EchoStrategy

SCOPE = RateScope.from_api_key(provider="openai", api_key="sk-raw-secret-key", model="m")


def controllers(url: str, count: int = 2, **settings: Any) -> list[RateController]:
    return [
        RateController(RateSettings(**settings), budget=RedisBudget(url, namespace="unit"))
        for _ in range(count)
    ]


async def close(*controllers: RateController) -> None:
    """What the processor does on shutdown: send what is pending, close the connection."""
    for controller in controllers:
        assert controller.shared is not None
        await controller.shared.flush()
        await controller.shared.budget.aclose()


async def admit_many(controller: RateController, count: int, tokens: int = 0) -> list[float]:
    times = []
    for _ in range(count):
        ticket = await controller.admit(SCOPE, tokens)
        times.append(time.monotonic())
        controller.complete(ticket, tokens or None)
    return times


class TestSharedPacing:
    async def test_two_controllers_share_one_request_pace(self, redis_server: RedisServer) -> None:
        first, second = controllers(redis_server.url, rpm=1200 * 60)  # 1,200 per second
        started = time.monotonic()
        await asyncio.gather(admit_many(first, 150), admit_many(second, 150))
        elapsed = time.monotonic() - started
        await close(first, second)
        # 300 calls at 1,164/s (3% margin) with a gentle start: at least 0.25 s together.
        # Alone, each would pace itself to the whole limit and finish in half that.
        assert elapsed >= 300 / (1200 * 0.97) - 0.02

    async def test_requests_and_tokens_are_booked_together_or_not_at_all(
        self, redis_server: RedisServer
    ) -> None:
        (controller,) = controllers(redis_server.url, 1, rpm=600_000, tpm=60 * 100)
        budget = controller.shared.budget  # type: ignore[union-attr]
        state_key, _ = budget.keys_for(SCOPE)
        client = redis.Redis.from_url(redis_server.url)
        await admit_many(controller, 1, tokens=10)
        before = client.hmget(state_key, ["rt", "tt"])
        # 1,000 tokens at 97 tokens/s is ten seconds away: beyond the booking horizon, so
        # the admission must book neither requests nor tokens while it waits.
        waiting = asyncio.create_task(controller.admit(SCOPE, 1000))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert client.hmget(state_key, ["rt", "tt"]) == before
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        client.close()
        await close(controller)

    async def test_host_clocks_do_not_matter(self, redis_server: RedisServer) -> None:
        url = redis_server.url
        skewed = [
            RateController(
                RateSettings(rpm=1200 * 60),
                budget=RedisBudget(url, namespace="unit"),
                clock=lambda offset=offset: time.monotonic() + offset,  # type: ignore[misc]
            )
            for offset in (-3600.0, 3600.0)
        ]
        started = time.monotonic()
        await asyncio.gather(*(admit_many(c, 150) for c in skewed))
        assert time.monotonic() - started >= 300 / (1200 * 0.97) - 0.02
        await close(*skewed)


class TestSharedState:
    async def test_a_pause_is_seen_by_every_controller(self, redis_server: RedisServer) -> None:
        first, second = controllers(redis_server.url, rpm=6000)
        ticket = await first.admit(SCOPE)
        first.rate_limited(ticket, 0.5)
        await first.shared.flush()  # type: ignore[union-attr]
        started = time.monotonic()
        await admit_many(second, 1)
        assert time.monotonic() - started >= 0.45
        await close(first, second)

    async def test_an_exhausted_quota_fails_every_controller(
        self, redis_server: RedisServer
    ) -> None:
        first, second = controllers(redis_server.url)
        ticket = await first.admit(SCOPE)
        first.quota_exhausted(ticket, "insufficient_quota")
        await first.shared.flush()  # type: ignore[union-attr]
        with pytest.raises(QuotaExhaustedError, match="insufficient_quota"):
            await second.admit(SCOPE)
        await close(first, second)

    async def test_a_limit_learned_by_one_applies_to_all(self, redis_server: RedisServer) -> None:
        first, second = controllers(redis_server.url, rpm=6000)
        ticket = await first.admit(SCOPE)
        first.rate_limited(ticket, 0.0)
        await first.shared.flush()  # type: ignore[union-attr]
        await admit_many(second, 1)
        (snapshot,) = second.snapshot()
        assert snapshot.request_limit_source == "learned"
        assert snapshot.requests_per_minute == pytest.approx(6000 * 0.97 * 0.8)
        await close(first, second)

    async def test_a_header_limit_read_by_one_applies_to_all(
        self, redis_server: RedisServer
    ) -> None:
        first, second = controllers(redis_server.url)
        ticket = await first.admit(SCOPE)
        first.observe_headers(
            ticket, {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "119"}
        )
        first.complete(ticket)
        await first.shared.flush()  # type: ignore[union-attr]
        await admit_many(second, 1)
        (snapshot,) = second.snapshot()
        assert snapshot.request_limit_source == "header"
        assert snapshot.requests_per_minute == pytest.approx(120)
        await close(first, second)

    async def test_keys_share_one_hash_slot_and_hold_no_api_key(
        self, redis_server: RedisServer
    ) -> None:
        (controller,) = controllers(redis_server.url, 1, rpm=6000)
        await admit_many(controller, 3)
        await close(controller)
        client = redis.Redis.from_url(redis_server.url)
        keys = client.keys("*")
        assert len(keys) == 2
        tags = {key.decode().split("{")[1].split("}")[0] for key in keys}
        assert len(tags) == 1
        dump = b" ".join(client.dump(key) or b"" for key in keys) + b" ".join(keys)
        assert b"sk-raw-secret-key" not in dump
        assert b"gpt" not in b" ".join(keys)
        client.close()


class TestPicklingAndLoops:
    def test_it_pickles_as_its_url_and_options(self, redis_server: RedisServer) -> None:
        budget = RedisBudget(redis_server.url, namespace="unit", on_store_error="pause")
        controller = RateController(RateSettings(rpm=6000), budget=budget)

        async def use(controller: RateController) -> None:
            await admit_many(controller, 1)
            await close(controller)

        asyncio.run(use(controller))
        copy = pickle.loads(pickle.dumps(budget))
        assert copy.__getstate__() == budget.__getstate__()
        assert copy._client is None
        # A new loop (a new asyncio.run, a worker process's loop) connects again.
        asyncio.run(use(RateController(RateSettings(), budget=copy)))
        asyncio.run(use(controller))

    def test_bad_options_name_the_value(self) -> None:
        with pytest.raises(ValueError, match="redis URL"):
            RedisBudget("http://127.0.0.1:6379")
        with pytest.raises(ValueError, match="on_store_error"):
            RedisBudget("redis://127.0.0.1", on_store_error="ignore")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            RedisBudget("redis://127.0.0.1", timeout=0)
        with pytest.raises(ValueError, match="namespace"):
            RedisBudget("redis://127.0.0.1", namespace="")
        with pytest.raises(TypeError, match="RedisBudget"):
            AdaptiveRateLimitStrategy(budget="redis://127.0.0.1")  # type: ignore[arg-type]

    def test_the_password_never_shows(self) -> None:
        budget = RedisBudget("redis://:hunter2@127.0.0.1:6379/0")
        assert "hunter2" not in repr(budget)
        assert "hunter2" not in repr(AdaptiveRateLimitStrategy(budget=budget))


class Events(BaseObserver):
    def __init__(self) -> None:
        self.seen: list[ProcessingEvent] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if "shared_budget" in event.value:
            self.seen.append(event)


class TestStoreUnavailable:
    async def test_local_policy_finishes_every_item_and_reports_once(
        self, redis_server: RedisServer
    ) -> None:
        budget = RedisBudget(redis_server.url, namespace="unit", retry_interval=0.05)
        strategy = AdaptiveRateLimitStrategy(rpm=60_000, budget=budget)
        events = Events()
        redis_server.stop()
        async with ParallelBatchProcessor[str, str, None](
            config=ProcessorConfig(max_workers=4),
            rate_limit_strategy=strategy,
            observers=[events],
        ) as processor:
            for index in range(20):
                await processor.add_work(
                    LLMWorkItem(item_id=f"i{index}", strategy=EchoStrategy(), prompt="p")
                )
            result = await processor.process_all()
        assert result.succeeded == 20
        assert events.seen == [ProcessingEvent.SHARED_BUDGET_DEGRADED]

    async def test_restored_is_reported_when_redis_answers_again(
        self, redis_server: RedisServer
    ) -> None:
        budget = RedisBudget(redis_server.url, namespace="unit", retry_interval=0.01)
        seen: list[str] = []
        budget.add_listener(lambda event, payload: seen.append(event))
        controller = RateController(RateSettings(rpm=60_000), budget=budget)
        redis_server.stop()
        await admit_many(controller, 2)
        redis_server.start()
        await asyncio.sleep(0.02)
        await admit_many(controller, 2)
        assert seen == ["degraded", "restored"]
        await close(controller)

    async def test_raise_policy_fails_the_attempt(self, redis_server: RedisServer) -> None:
        budget = RedisBudget(redis_server.url, on_store_error="raise", retry_interval=5.0)
        controller = RateController(RateSettings(), budget=budget)
        redis_server.stop()
        with pytest.raises(SharedBudgetUnavailableError, match="on_store_error='raise'"):
            await controller.admit(SCOPE)
        await close(controller)
        assert SharedBudgetUnavailableError.error_category == "budget_store_error"

    async def test_pause_policy_waits_for_redis(self, redis_server: RedisServer) -> None:
        budget = RedisBudget(redis_server.url, on_store_error="pause", retry_interval=0.02)
        controller = RateController(RateSettings(), budget=budget)
        redis_server.stop()
        waiting = asyncio.create_task(controller.admit(SCOPE))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        redis_server.start()
        ticket = await asyncio.wait_for(waiting, 10)
        assert ticket.shared_at is not None
        await close(controller)

    async def test_local_pacing_begins_after_the_slots_booked_ahead(
        self, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        # At 9.7 calls/s, eight waiting calls book slots up to about 0.7 s ahead in one call.
        budget = RedisBudget(redis_server.url, namespace="unit", max_booking_ahead=2.0)
        controller = RateController(RateSettings(rpm=10 * 60), budget=budget)
        assert controller.shared is not None
        # All eight queue behind the scope's lock first, so that one call books for all.
        lock = controller.shared._lock(SCOPE)
        await lock.acquire()
        waiting = [asyncio.create_task(controller.admit(SCOPE)) for _ in range(8)]
        await asyncio.sleep(0)
        lock.release()
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        booked_until = controller.shared._known[SCOPE].booked_until
        assert booked_until > time.monotonic() + 0.3
        redis_server.stop()
        caplog.set_level(logging.INFO, logger="async_batch_llm._internal.rate_control.shared")
        # Redis is gone: this call is paced locally, after the calls booked before (they
        # still go), not together with them.
        await controller.admit(SCOPE)
        assert time.monotonic() >= booked_until
        await asyncio.gather(*waiting)
        # Those calls were booked before Redis went away: their going does not make the
        # process think it is back (and go local again after each).
        assert controller.shared.is_local(SCOPE)
        assert sum("paced locally" in r.getMessage() for r in caplog.records) == 1
        await close(controller)

    async def test_a_store_back_empty_waits_until_every_process_tried_it_again(
        self, redis_server: RedisServer
    ) -> None:
        retry = 0.3
        first, second = (
            RateController(
                RateSettings(rpm=1000 * 60),
                budget=RedisBudget(redis_server.url, namespace="unit", retry_interval=retry),
            )
            for _ in range(2)
        )
        # In this order, the first sees both in the scope's set of processes.
        await admit_many(second, 1)
        await admit_many(first, 1)
        redis_server.stop()
        await asyncio.gather(admit_many(first, 1), admit_many(second, 1))  # both local now
        redis_server.start()  # empty
        await asyncio.sleep(retry)  # until the first may try Redis again
        began = time.monotonic()
        ticket = await first.admit(SCOPE)
        # The other process paces alone until its own next try, up to `retry` from now:
        # the budget Redis hands out waits that long instead of adding to it.
        assert ticket.shared_at is not None
        assert time.monotonic() - began >= retry
        await close(first, second)
