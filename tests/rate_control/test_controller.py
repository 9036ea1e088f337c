"""The async controller: admission, pauses, quota, cancellation, the httpx hook, the public
module, and a simulated provider to check that learning settles near the real limit."""

from __future__ import annotations

import asyncio
import math
import pickle
from typing import Any

import httpx2
import pytest
from rate_control_fakes import (
    OTHER_SCOPE,
    SCOPE,
    FakeClock,
    ProviderBucket,
    make_controller,
)

from async_batch_llm import rate_control
from async_batch_llm._internal.rate_control.controller import (
    RateController,
    Ticket,
    active_ticket,
    current_ticket,
    rate_limit_response_hook,
)
from async_batch_llm.rate_control import (
    AdaptiveRateLimitStrategy,
    QuotaExhaustedError,
    RateScope,
    httpx_event_hooks,
    instrument,
)
from async_batch_llm.strategies.rate_limit import RateLimitStrategy


class TestAdmission:
    async def test_admit_waits_for_the_pace(self, clock: FakeClock) -> None:
        """At 60/min with no margin the calls are admitted one second apart."""
        controller = make_controller(clock, rpm=60, safety_margin=0.0)
        start = clock.now
        times = []
        for _ in range(3):
            await controller.admit(SCOPE)
            times.append(clock.now - start)
        assert times == [0.0, 1.0, 2.0]
        assert clock.sleeps == [1.0, 1.0]

    async def test_a_429_pauses_only_its_own_scope(self, clock: FakeClock) -> None:
        """A retry hint of 5 s holds the limited scope; another scope admits at once."""
        controller = make_controller(clock)
        ticket = await controller.admit(SCOPE)
        assert controller.rate_limited(ticket, retry_after=5.0) == 5.0
        start = clock.now
        await controller.admit(OTHER_SCOPE)
        assert clock.now == start
        await controller.admit(SCOPE)
        assert clock.now - start == pytest.approx(5.0)
        assert controller.longest_pause() == 0.0

    async def test_pause_remaining_per_scope(self, clock: FakeClock) -> None:
        """The remaining pause is reported per scope, 0 for scopes never used."""
        controller = make_controller(clock)
        controller.rate_limited(await controller.admit(SCOPE), retry_after=3.0)
        assert controller.pause_remaining(SCOPE) == 3.0
        assert controller.pause_remaining(OTHER_SCOPE) == 0.0
        assert controller.longest_pause() == 3.0

    async def test_outcomes_count_once_per_ticket(self, clock: FakeClock) -> None:
        """A second outcome for a settled ticket changes nothing."""
        controller = make_controller(clock)
        ticket = await controller.admit(SCOPE)
        controller.complete(ticket, {"total_tokens": 10})
        controller.complete(ticket, {"total_tokens": 10})
        controller.failed(ticket)
        assert controller.rate_limited(ticket, retry_after=9.0) == 0.0
        [snapshot] = controller.snapshot()
        assert (snapshot.succeeded, snapshot.failed, snapshot.rate_limited) == (1, 0, 0)
        assert snapshot.tokens_used == 10
        assert snapshot.in_flight == 0

    @pytest.mark.parametrize(
        ("usage", "used"),
        [
            ({"input_tokens": 7, "output_tokens": 3}, 10),
            ({"total_tokens": 12, "input_tokens": 1}, 12),
            (25, 25),
            ({}, 0),
            (None, 0),
        ],
    )
    async def test_usage_forms(self, clock: FakeClock, usage: Any, used: int) -> None:
        """Usage may be a token-usage dict (total, or input + output) or a plain total."""
        controller = make_controller(clock)
        controller.complete(await controller.admit(SCOPE, 100), usage)
        assert controller.snapshot()[0].tokens_used == used

    async def test_a_ticket_of_another_controller_is_refused(self, clock: FakeClock) -> None:
        """Outcomes must go to the controller that admitted the call."""
        ticket = await make_controller(clock).admit(SCOPE)
        with pytest.raises(ValueError, match="belongs to another RateController"):
            make_controller(clock).complete(ticket)

    async def test_snapshot_lists_scopes_in_order_of_first_use(self, clock: FakeClock) -> None:
        """One snapshot per scope, oldest first."""
        controller = make_controller(clock)
        await controller.admit(OTHER_SCOPE)
        await controller.admit(SCOPE)
        assert [snapshot.scope for snapshot in controller.snapshot()] == [OTHER_SCOPE, SCOPE]


class TestWaitingCalls:
    async def test_cancelling_a_waiting_admit_releases_its_booking(
        self, timed_clock: FakeClock
    ) -> None:
        """The slot of a cancelled waiter goes to the next caller, not one slot later."""
        controller = make_controller(timed_clock, rpm=60, safety_margin=0.0)
        await controller.admit(SCOPE)
        waiter = asyncio.ensure_future(controller.admit(SCOPE))
        await timed_clock.settle([waiter])
        assert timed_clock.sleeps == [1.0]
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        state = controller.scope_state(SCOPE)
        assert state.requests.serial == 1
        follower = asyncio.ensure_future(controller.admit(SCOPE))
        await timed_clock.settle([follower])
        assert timed_clock.sleeps == [1.0, 1.0]
        timed_clock.advance(1.0)
        assert isinstance(await follower, Ticket)
        assert state.in_flight == 2

    async def test_a_pause_sends_waiting_calls_back_to_book_after_it(
        self, timed_clock: FakeClock
    ) -> None:
        """A call waiting for its slot when a 429 pauses the scope goes after the pause."""
        controller = make_controller(timed_clock, rpm=60, safety_margin=0.0)
        start = timed_clock.now
        first = await controller.admit(SCOPE)
        waiter = asyncio.ensure_future(controller.admit(SCOPE))
        await timed_clock.settle([waiter])
        controller.rate_limited(first, retry_after=5.0)
        await timed_clock.settle([waiter])
        timed_clock.advance(1.0)
        await timed_clock.settle([waiter])
        assert not waiter.done()
        timed_clock.advance(4.0)
        ticket = await waiter
        assert ticket.admission.admitted_at == pytest.approx(start + 5.0)
        assert timed_clock.sleeps == [1.0, 5.0]

    async def test_waiting_calls_rebooked_after_a_limit_change_get_a_slot_each(
        self, timed_clock: FakeClock
    ) -> None:
        """Headers doubling the limit wake the waiting calls; booked again they go one new
        interval apart, not all at once in the last slot."""
        controller = make_controller(timed_clock, rpm=60, safety_margin=0.0)
        first = await controller.admit(SCOPE)
        waiters = [asyncio.ensure_future(controller.admit(SCOPE)) for _ in range(3)]
        await timed_clock.settle(waiters)
        assert timed_clock.sleeps == [1.0, 2.0, 3.0]
        start = timed_clock.now
        controller.observe_headers(first, {"x-ratelimit-limit-requests": "120"})
        await timed_clock.settle(waiters)
        assert sorted(timed_clock.sleeps[3:]) == [0.5, 1.0, 1.5]
        admitted = []
        for _ in range(3):
            timed_clock.advance(0.5)
            await timed_clock.settle(waiters)
            admitted.append(sum(waiter.done() for waiter in waiters))
        assert admitted == [1, 2, 3]
        assert timed_clock.now - start == pytest.approx(1.5)

    async def test_quota_exhaustion_raises_at_admit_at_once(self, clock: FakeClock) -> None:
        """After one quota error every admission in the scope fails without waiting."""
        controller = make_controller(clock, rpm=1)
        ticket = await controller.admit(SCOPE)
        controller.quota_exhausted(ticket, "insufficient_quota")
        with pytest.raises(QuotaExhaustedError, match="insufficient_quota") as raised:
            await controller.admit(SCOPE)
        assert raised.value.scope == SCOPE
        assert clock.sleeps == []
        await controller.admit(OTHER_SCOPE)
        assert controller.snapshot()[0].quota_exhausted

    async def test_quota_exhaustion_fails_the_calls_already_waiting(
        self, timed_clock: FakeClock
    ) -> None:
        """Waiting calls raise as soon as the quota runs out, without the clock moving."""
        controller = make_controller(timed_clock, rpm=6, safety_margin=0.0)
        first = await controller.admit(SCOPE)
        waiters = [asyncio.ensure_future(controller.admit(SCOPE)) for _ in range(3)]
        await timed_clock.settle(waiters)
        start = timed_clock.now
        controller.quota_exhausted(first, "daily quota")
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(result, QuotaExhaustedError) for result in results)
        assert timed_clock.now == start
        state = controller.scope_state(SCOPE)
        assert (state.in_flight, state.requests.serial) == (0, 1)


def openai_handler(request: httpx2.Request) -> httpx2.Response:
    headers = {
        "x-ratelimit-limit-requests": "300",
        "x-ratelimit-remaining-requests": "299",
        "x-ratelimit-reset-requests": "200ms",
    }
    return httpx2.Response(200, headers=headers, json={"ok": True})


class TestResponseHook:
    async def test_hook_forwards_the_headers_of_the_current_ticket(self, clock: FakeClock) -> None:
        """A response seen while a ticket is active updates that ticket's scope."""
        controller = make_controller(clock)
        async with httpx2.AsyncClient(
            transport=httpx2.MockTransport(openai_handler), event_hooks=httpx_event_hooks()
        ) as client:
            ticket = await controller.admit(SCOPE)
            with active_ticket(ticket):
                response = await client.get("https://api.example.test/v1/chat")
            assert current_ticket.get() is None
        assert response.status_code == 200
        [snapshot] = controller.snapshot()
        assert snapshot.request_limit_source == "header"
        assert snapshot.requests_per_minute == pytest.approx(300)
        assert snapshot.remaining_requests == 299

    async def test_hook_without_a_ticket_does_nothing(self, clock: FakeClock) -> None:
        """Calls made outside an admitted attempt are not attributed to any scope."""
        controller = make_controller(clock)
        async with httpx2.AsyncClient(
            transport=httpx2.MockTransport(openai_handler), event_hooks=httpx_event_hooks()
        ) as client:
            await client.get("https://api.example.test/v1/chat")
        assert controller.snapshot() == []

    async def test_concurrent_calls_report_to_their_own_scopes(self, clock: FakeClock) -> None:
        """Each task's response goes to the ticket active in that task."""
        controller = make_controller(clock)
        limits = {"/a": "100", "/b": "200"}

        def handler(request: httpx2.Request) -> httpx2.Response:
            limit = limits[request.url.path]
            return httpx2.Response(200, headers={"x-ratelimit-limit-requests": limit})

        async with httpx2.AsyncClient(
            transport=httpx2.MockTransport(handler), event_hooks=httpx_event_hooks()
        ) as client:

            async def call(scope: RateScope, path: str) -> None:
                ticket = await controller.admit(scope)
                with active_ticket(ticket):
                    await asyncio.sleep(0)
                    await client.get(f"https://api.example.test{path}")

            await asyncio.gather(call(SCOPE, "/a"), call(OTHER_SCOPE, "/b"))
        limits_seen = {s.scope: s.requests_per_minute for s in controller.snapshot()}
        assert limits_seen == {SCOPE: pytest.approx(100), OTHER_SCOPE: pytest.approx(200)}

    async def test_hook_never_breaks_the_call(self, clock: FakeClock) -> None:
        """An error while applying headers is swallowed; the response still arrives."""

        def broken_wall_clock() -> float:
            raise RuntimeError("clock gone")

        controller = make_controller(clock, wall=broken_wall_clock)
        async with httpx2.AsyncClient(
            transport=httpx2.MockTransport(openai_handler), event_hooks=httpx_event_hooks()
        ) as client:
            with active_ticket(await controller.admit(SCOPE)):
                response = await client.get("https://api.example.test/v1/chat")
        assert response.status_code == 200
        assert controller.snapshot()[0].request_limit_source is None

    async def test_instrument_adds_the_hook_once_and_keeps_others(self) -> None:
        """``instrument`` appends the hook to an existing client, idempotently."""
        seen: list[int] = []

        async def other_hook(response: httpx2.Response) -> None:
            seen.append(response.status_code)

        client = httpx2.AsyncClient(
            transport=httpx2.MockTransport(openai_handler),
            event_hooks={"response": [other_hook]},
        )
        assert instrument(instrument(client)) is client
        assert client.event_hooks["response"] == [other_hook, rate_limit_response_hook]
        async with client:
            await client.get("https://api.example.test/v1/chat")
        assert seen == [200]

    def test_httpx_event_hooks_is_a_fresh_mapping(self) -> None:
        """Each call returns a new ``{"response": [hook]}`` the caller may extend."""
        hooks = httpx_event_hooks()
        assert hooks == {"response": [rate_limit_response_hook]}
        assert hooks is not httpx_event_hooks()


class TestPublicModule:
    def test_all_names_exist_and_report_their_public_home(self) -> None:
        """Every ``__all__`` name is importable and says it lives in ``rate_control``."""
        for name in rate_control.__all__:
            assert getattr(rate_control, name).__module__ == "async_batch_llm.rate_control"

    async def test_strategy_is_a_rate_limit_strategy_with_inert_legacy_methods(
        self, clock: FakeClock
    ) -> None:
        """It plugs into the 0.7.2 surface: no slow start, and no pause until a scope has one."""
        strategy = AdaptiveRateLimitStrategy(rpm=300, clock=clock, sleep=clock.sleep)
        assert isinstance(strategy, RateLimitStrategy)
        assert isinstance(strategy.controller, RateController)
        assert strategy.should_apply_slow_start(0) == (False, 0.0)
        assert await strategy.on_rate_limit(1, 1) == 0.0
        assert strategy.settings.rpm == 300
        assert "rpm=300" in repr(strategy)
        assert strategy.snapshot() == []

    async def test_legacy_cooldown_is_the_longest_scope_pause(self, clock: FakeClock) -> None:
        """``on_rate_limit`` answers the pause the controller already applies."""
        strategy = AdaptiveRateLimitStrategy(clock=clock, sleep=clock.sleep)
        ticket = await strategy.controller.admit(SCOPE)
        strategy.controller.rate_limited(ticket, retry_after=4.0)
        assert await strategy.on_rate_limit(worker_id=0, consecutive_limit_count=1) == 4.0

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"rpm": 0}, r"rpm must be > 0 or None, got 0; pass the provider's"),
            ({"tpm": -5.0}, r"tpm must be > 0 or None, got -5.0"),
            ({"initial_rpm": math.nan}, r"initial_rpm must be > 0 or None, got nan"),
            ({"window_seconds": 0.0}, r"window_seconds must be > 0, got 0.0; pass a number"),
            ({"burst_seconds": math.inf}, r"burst_seconds must be > 0, got inf"),
            ({"decrease_factor": 1.0}, r"decrease_factor must be > 0 and < 1, got 1.0"),
            ({"increase_fraction": 0.0}, r"increase_fraction must be > 0 and <= 1, got 0.0"),
            ({"safety_margin": 1.0}, r"safety_margin must be >= 0 and < 1, got 1.0"),
        ],
    )
    def test_bad_options_name_the_value_and_the_fix(
        self, options: dict[str, Any], message: str
    ) -> None:
        """Each option is validated in the constructor with a message naming it."""
        with pytest.raises(ValueError, match=message):
            AdaptiveRateLimitStrategy(**options)

    def test_quota_error_carries_its_scope_and_pickles(self) -> None:
        """The error is data-carrying and survives a round trip through pickle."""
        error = QuotaExhaustedError(SCOPE, "insufficient_quota")
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.scope, copy.reason, str(copy)) == (SCOPE, "insufficient_quota", str(error))
        assert "run the failed items again" in str(error)

    def test_scope_fingerprints_the_api_key(self) -> None:
        """``from_api_key`` keeps a short stable fingerprint, never the key."""
        scope = RateScope.from_api_key(provider="openai", api_key="sk-secret", model="m")
        again = RateScope.from_api_key(provider="openai", api_key="sk-secret", model="m")
        assert scope == again
        assert len(scope.key_id) == 10
        assert "secret" not in repr(scope)
        assert RateScope.from_api_key(provider="p", api_key=None, model="m").key_id == ""
        assert str(RateScope("p", "", "m")) == "p/-/m"


class TestAgainstASimulatedProvider:
    async def run_provider(
        self,
        clock: FakeClock,
        controller: RateController,
        *,
        with_headers: bool,
        items: int | None = None,
        until: float,
    ) -> tuple[list[float], list[float]]:
        """20 workers, 200 ms calls, a 300/min bucket; returns success times and pace samples."""
        start = clock.now
        bucket = ProviderBucket(300, start)
        successes: list[float] = []
        pace: list[float] = []

        async def worker() -> None:
            while items is None or len(successes) < items:
                ticket = await controller.admit(SCOPE)
                served = bucket.take(clock.now)
                headers = bucket.headers()
                await clock.sleep(0.2)
                if with_headers:
                    controller.observe_headers(ticket, headers)
                if served:
                    successes.append(clock.now - start)
                    controller.complete(ticket)
                else:
                    controller.rate_limited(ticket)

        def sample(second: float) -> None:
            rate = controller.scope_state(SCOPE).requests.pacer.rate
            if second - start > 60 and rate is not None:
                pace.append(rate * 60)

        await clock.run([worker() for _ in range(20)], until=start + until, on_tick=sample)
        return successes, pace

    async def test_learning_settles_near_the_real_limit(self, timed_clock: FakeClock) -> None:
        """No headers, no hints: the learned pace stays within 25% of 300/min after the first
        minute, and 429s are a small fraction of the calls."""
        controller = make_controller(timed_clock)
        successes, pace = await self.run_provider(
            timed_clock, controller, with_headers=False, until=400.0
        )
        assert len(pace) > 300
        assert min(pace) >= 225
        assert max(pace) <= 375
        [snapshot] = controller.snapshot()
        assert snapshot.request_limit_source == "learned"
        assert snapshot.rate_limited / snapshot.admitted < 0.03
        # The bucket served its starting minute plus 5 per second; learning used nearly all.
        assert len(successes) >= 0.95 * (300 + 5 * 400)

    async def test_with_headers_the_batch_finishes_near_the_ideal_without_429s(
        self, timed_clock: FakeClock
    ) -> None:
        """Reading remaining/reset: 600 calls in about a minute (ideal 60 s), no 429 at all."""
        controller = make_controller(timed_clock)
        successes, _ = await self.run_provider(
            timed_clock, controller, with_headers=True, items=600, until=200.0
        )
        assert len(successes) >= 600
        assert successes[599] <= 66.0
        assert controller.snapshot()[0].rate_limited == 0
