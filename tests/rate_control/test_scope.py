"""One scope's logic with explicit times: limits, learning, pauses, holds, quota, counters."""

from __future__ import annotations

from typing import Any

import pytest

from async_batch_llm._internal.rate_control.headers import LimitObservation
from async_batch_llm._internal.rate_control.scope import (
    Admission,
    QuotaExhaustedError,
    RateScope,
    RateSettings,
    ScopeController,
)

SCOPE = RateScope(provider="openai", key_id="k1", model="gpt-test")
T0 = 500.0


def controller(**options: Any) -> ScopeController:
    return ScopeController(SCOPE, RateSettings(**options), T0)


def go(state: ScopeController, now: float, tokens: int = 0) -> Admission:
    """Book and admit at once (as if the caller waited for ``ready_at``)."""
    booking = state.book(tokens, now)
    return state.admit(booking, max(now, booking.ready_at))


def waits(state: ScopeController, now: float, count: int, tokens: int = 0) -> list[float]:
    """The waits of ``count`` bookings made at ``now`` (all then admitted)."""
    result = []
    for _ in range(count):
        booking = state.book(tokens, now)
        result.append(round(booking.ready_at - now, 6))
        state.admit(booking, booking.ready_at)
    return result


def pace_rpm(state: ScopeController) -> float | None:
    rate = state.requests.pacer.rate
    return None if rate is None else rate * 60.0


class TestLimitSources:
    def test_unknown_limits_admit_everything_at_once(self) -> None:
        """No headers, no configuration, no 429 yet: nothing is paced."""
        state = controller()
        assert waits(state, T0, 50) == [0.0] * 50
        assert state.requests.source is None

    def test_configured_rpm_paces_at_the_limit_less_the_margin(self) -> None:
        """rpm=60 with a 0 margin and a burst of one: one request per second."""
        state = controller(rpm=60, safety_margin=0.0)
        assert waits(state, T0, 3) == [0.0, 1.0, 2.0]
        assert state.requests.source == "configured"

    def test_header_limit_sets_the_pace_with_the_margin(self) -> None:
        """A header limit of 600/min paces at 600 * 0.97 per minute and wins over rpm."""
        state = controller(rpm=60)
        admission = go(state, T0)
        state.observe(LimitObservation(limit_requests=600), admission, T0 + 0.1)
        assert state.requests.source == "header"
        assert pace_rpm(state) == pytest.approx(600 * 0.97)

    def test_header_window_is_configurable(self) -> None:
        """With ``window_seconds=1`` a header limit of 10 means ten per second."""
        state = controller(window_seconds=1.0, safety_margin=0.0)
        admission = go(state, T0)
        state.observe(LimitObservation(limit_requests=10), admission, T0)
        assert state.requests.pacer.rate == pytest.approx(10.0)

    def test_configured_tpm_paces_tokens(self) -> None:
        """tpm=6000 without margin: a 100-token call per second once the burst is used."""
        state = controller(tpm=6000, safety_margin=0.0)
        assert waits(state, T0, 3, tokens=100) == [0.0, 1.0, 2.0]
        assert state.tokens.source == "configured"

    def test_initial_rpm_starts_learning_from_that_pace(self) -> None:
        """``initial_rpm`` paces from the start, marked as learned."""
        state = controller(initial_rpm=120)
        assert pace_rpm(state) == pytest.approx(120)
        assert state.requests.source == "learned"


class TestLearning:
    def test_first_429_sets_the_pace_from_what_got_through(self) -> None:
        """300 successes in 3 s before the first 429: 300 / (60 + 3) per second."""
        state = controller()
        admissions = [go(state, T0 + i * 0.01) for i in range(300)]
        for admission in admissions:
            state.succeeded_with(admission, None, T0 + 3.0)
        limited = go(state, T0 + 3.0)
        state.rate_limited(limited, None, T0 + 3.0)
        assert pace_rpm(state) == pytest.approx(300 / 63 * 60)
        assert state.requests.source == "learned"

    def test_decrease_happens_once_per_episode(self) -> None:
        """A burst of 429s from calls admitted before the first one cuts the pace once."""
        state = controller(initial_rpm=600, burst_seconds=100.0)
        in_flight = [go(state, T0) for _ in range(20)]
        for admission in in_flight:
            state.rate_limited(admission, 0.1, T0 + 1.0)
        assert pace_rpm(state) == pytest.approx(600 * 0.8)
        assert state.episode == 1
        assert state.rate_limited_count == 20

    def test_a_429_admitted_after_the_decrease_decreases_again(self) -> None:
        """A call admitted after a cut that still gets a 429 starts a new episode."""
        state = controller(initial_rpm=600, decrease_factor=0.5)
        state.rate_limited(go(state, T0), 0.0, T0)
        later = go(state, T0 + 1.0)
        state.rate_limited(later, 0.0, T0 + 1.5)
        assert pace_rpm(state) == pytest.approx(150)
        assert state.episode == 2

    def test_increase_only_while_work_waits_for_our_pacing(self) -> None:
        """Six seconds with calls delayed by pacing and no 429 raise the pace by 5%."""
        state = controller(initial_rpm=60)
        waits(state, T0, 3)  # the second and third wait for the pace
        go(state, T0 + 6.0)
        assert pace_rpm(state) == pytest.approx(63)

    def test_no_increase_when_nothing_waited(self) -> None:
        """An interval in which no call waited leaves the pace alone."""
        state = controller(initial_rpm=60)
        go(state, T0)
        go(state, T0 + 6.0)
        go(state, T0 + 12.0)
        assert pace_rpm(state) == pytest.approx(60)

    def test_no_increase_in_an_interval_with_a_429(self) -> None:
        """A 429 of an earlier episode in the interval blocks the increase."""
        state = controller(initial_rpm=60)
        old = go(state, T0)
        state.rate_limited(go(state, T0), 0.0, T0)  # the cut: 48/min, episode 1
        waits(state, T0 + 1.0, 3)
        state.rate_limited(old, 0.0, T0 + 2.0)  # older episode: no cut, but not calm
        go(state, T0 + 7.0)
        assert pace_rpm(state) == pytest.approx(48)

    def test_increase_step_is_at_least_one_request_per_minute(self) -> None:
        """At 2/min a 5% step would be 0.1/min; the step is 1/min."""
        state = controller(initial_rpm=2)
        waits(state, T0, 2)
        go(state, T0 + 6.0)
        assert pace_rpm(state) == pytest.approx(3)

    def test_increase_never_passes_the_configured_limit(self) -> None:
        """After a cut below a configured rpm, learning climbs back to it but not above."""
        state = controller(rpm=100, safety_margin=0.0, decrease_factor=0.98)
        state.rate_limited(go(state, T0), 0.0, T0)
        assert pace_rpm(state) == pytest.approx(98)
        for step in range(1, 4):
            waits(state, T0 + 6.0 * step, 3)
        assert pace_rpm(state) == pytest.approx(100)

    def test_other_failures_never_lower_the_pace(self) -> None:
        """5xx and other failures count as failures and leave the learned pace as it was."""
        state = controller(initial_rpm=60)
        for _ in range(10):
            state.failed_with(go(state, T0), None)
        assert pace_rpm(state) == pytest.approx(60)
        assert state.failed == 10
        assert state.episode == 0

    def test_header_limits_are_not_learned_over(self) -> None:
        """A 429 in a scope paced by headers pauses it but keeps the header pace."""
        state = controller()
        admission = go(state, T0)
        state.observe(LimitObservation(limit_requests=600), admission, T0)
        state.rate_limited(go(state, T0), 2.0, T0)
        assert pace_rpm(state) == pytest.approx(600 * 0.97)
        assert state.episode == 0


class TestPauses:
    def test_retry_hint_pauses_the_scope_for_exactly_that_long(self) -> None:
        """A 429 with a 7 s hint: the next call goes at +7 s, and then calls are spaced."""
        state = controller(initial_rpm=600, burst_seconds=100.0)
        pause = state.rate_limited(go(state, T0), 7.0, T0)
        assert pause == 7.0
        assert state.pause_remaining(T0 + 2.0) == 5.0
        assert waits(state, T0, 2) == [7.0, 7.125]

    def test_without_a_hint_the_pause_is_two_request_intervals(self) -> None:
        """At 60/min (48/min after the cut) the pause is two intervals of the new pace."""
        state = controller(initial_rpm=60)
        pause = state.rate_limited(go(state, T0), None, T0)
        assert pause == pytest.approx(2 * 60 / 48)

    def test_a_shorter_hint_does_not_shorten_a_pause(self) -> None:
        """Pauses only ever extend."""
        state = controller(initial_rpm=60)
        first, second = go(state, T0), go(state, T0)
        state.rate_limited(first, 10.0, T0)
        state.rate_limited(second, 1.0, T0)
        assert state.pause_remaining(T0) == 10.0

    def test_a_pause_voids_bookings_made_before_it(self) -> None:
        """A call still waiting when a pause starts must book again."""
        state = controller(initial_rpm=60)
        waiting = state.book(0, T0)
        state.rate_limited(go(state, T0), 5.0, T0)
        assert not state.is_current(waiting)


class TestHeaderHolds:
    def test_remaining_zero_holds_until_reset(self) -> None:
        """remaining=0 with a reset due in 2 s (before a unit would refill): wait 2 s."""
        state = controller()
        admission = go(state, T0)
        observation = LimitObservation(
            limit_requests=10, remaining_requests=0, reset_requests_s=2.0
        )
        state.observe(observation, admission, T0)
        assert waits(state, T0, 1) == [2.0]

    def test_remaining_zero_of_a_refilling_bucket_holds_for_the_refill_not_a_minute(
        self,
    ) -> None:
        """300/min, 0 left, full again in 60 s: the hold is the refill of the reserve and one
        unit (about 2 s at 291/min), not the minute until the whole bucket is full."""
        state = controller()
        admission = go(state, T0)
        observation = LimitObservation(
            limit_requests=300, remaining_requests=0, reset_requests_s=60.0
        )
        state.observe(observation, admission, T0)
        pace = 300 * 0.97 / 60
        reserve = 0.03 * 300
        assert waits(state, T0, 1) == [pytest.approx((1 + reserve) / pace, abs=1e-6)]

    def test_spare_remaining_goes_at_once(self) -> None:
        """280 of 300 remaining: all but the reserve go without waiting."""
        state = controller()
        admission = go(state, T0)
        state.observe(LimitObservation(limit_requests=300, remaining_requests=280), admission, T0)
        assert waits(state, T0, 271) == [0.0] * 271
        assert waits(state, T0, 1)[0] > 0

    def test_calls_booked_after_the_observed_one_count_against_remaining(self) -> None:
        """Remaining 10 seen for a call followed by 5 more, less a reserve of 1: 4 spare."""
        state = controller(safety_margin=0.0)
        observed = go(state, T0)
        for _ in range(5):
            go(state, T0)
        state.observe(LimitObservation(limit_requests=60, remaining_requests=10), observed, T0)
        assert waits(state, T0, 5) == [0.0, 0.0, 0.0, 0.0, 1.0]

    def test_calls_still_waiting_for_their_turn_do_not_count_against_remaining(self) -> None:
        """Booked calls not yet sent leave the provider's spare units to new calls: only
        calls admitted after the observed one are subtracted (remaining 10, reserve 1)."""
        state = controller(rpm=60, safety_margin=0.0)
        observed = go(state, T0)
        waiting = [state.book(0, T0) for _ in range(3)]
        assert [booking.ready_at - T0 for booking in waiting] == [1.0, 2.0, 3.0]
        state.observe(LimitObservation(limit_requests=60, remaining_requests=10), observed, T0)
        assert waits(state, T0, 10)[:9] == [0.0] * 9
        assert state.requests.pacer.credit == 0.0

    def test_a_new_limit_makes_waiting_calls_book_again_at_the_new_pace(self) -> None:
        """Three calls waiting at 60/min when headers raise the limit to 120/min: their
        bookings stop holding, and booked again they go half a second apart."""
        state = controller(rpm=60, safety_margin=0.0)
        observed = go(state, T0)
        waiting = [state.book(0, T0) for _ in range(3)]
        state.observe(LimitObservation(limit_requests=120), observed, T0)
        assert not any(state.is_current(booking) for booking in waiting)
        for booking in waiting:
            state.cancel(booking)
        assert waits(state, T0, 3) == [0.5, 1.0, 1.5]

    def test_an_older_response_does_not_override_a_newer_one(self) -> None:
        """Remaining from a call admitted before the last observed one is ignored."""
        state = controller()
        older, newer = go(state, T0), go(state, T0)
        state.observe(LimitObservation(remaining_requests=40), newer, T0)
        state.observe(LimitObservation(remaining_requests=90), older, T0)
        assert state.requests.remaining == 40


class TestTokens:
    def test_unused_estimate_is_refunded(self) -> None:
        """Reporting 100 used of 1000 booked lets the next 900 go sooner."""
        state = controller(tpm=60_000, safety_margin=0.0, burst_seconds=0.001)
        admission = go(state, T0, tokens=1000)
        state.succeeded_with(admission, 100, T0)
        booking = state.book(1000, T0)
        assert booking.ready_at - T0 == pytest.approx(0.1)
        assert state.tokens_used == 100

    def test_unused_estimate_is_kept_when_the_token_limit_comes_from_headers(self) -> None:
        """With a header token limit the provider's remaining decides: a call that used 100
        of 1000 booked tokens still holds the next call for the whole 1000."""
        state = controller(safety_margin=0.0, burst_seconds=0.001)
        state.observe(LimitObservation(limit_tokens=60_000), go(state, T0), T0)
        admission = go(state, T0, tokens=1000)
        state.succeeded_with(admission, 100, T0)
        booking = state.book(1000, T0)
        assert booking.ready_at - T0 == pytest.approx(1.0)
        assert state.tokens_used == 100

    def test_usage_above_the_estimate_is_charged(self) -> None:
        """Reporting 3000 used of 1000 booked delays the next call by the extra 2000."""
        state = controller(tpm=60_000, safety_margin=0.0, burst_seconds=0.001)
        admission = go(state, T0, tokens=1000)
        state.succeeded_with(admission, 3000, T0)
        booking = state.book(1000, T0)
        assert booking.ready_at - T0 == pytest.approx(3.0)

    def test_a_rate_limited_call_gives_its_tokens_back(self) -> None:
        """A 429 used no tokens: its booking is refunded."""
        state = controller(tpm=60_000, safety_margin=0.0, burst_seconds=0.001)
        state.rate_limited(go(state, T0, tokens=5000), 0.0, T0)
        booking = state.book(1000, T0)
        assert booking.ready_at - T0 == pytest.approx(0.0)

    def test_header_token_budget_is_synced(self) -> None:
        """Tokens remaining from headers bound the next call's token booking."""
        state = controller(safety_margin=0.0)
        admission = go(state, T0, tokens=10)
        state.observe(
            LimitObservation(limit_tokens=6000, remaining_tokens=0, reset_tokens_s=60.0),
            admission,
            T0,
        )
        assert state.tokens.source == "header"
        booking = state.book(200, T0)
        # The bucket is empty and 1 token is kept in reserve: a call larger than the burst
        # (100 tokens) goes once the burst and the reserve have refilled at 100 tokens/s.
        assert booking.ready_at - T0 == pytest.approx(1.01)


class TestQuota:
    def test_exhausted_scope_refuses_every_booking(self) -> None:
        """After a quota error the scope raises at once, naming the scope and the reason."""
        state = controller()
        state.quota_exhausted("insufficient_quota")
        with pytest.raises(QuotaExhaustedError, match=r"openai/k1/gpt-test: insufficient_quota"):
            state.book(0, T0)
        assert state.snapshot(T0).quota_exhausted


class TestSnapshot:
    def test_snapshot_reports_limits_counters_and_pause(self) -> None:
        """A snapshot carries the limit and its source, remaining, usage and outcomes."""
        state = controller(tpm=90_000)
        first = go(state, T0, tokens=100)
        state.observe(LimitObservation(limit_requests=300, remaining_requests=299), first, T0 + 0.2)
        state.succeeded_with(first, 80, T0 + 0.2)
        state.failed_with(go(state, T0 + 0.3, tokens=100), 5)
        in_flight = go(state, T0 + 0.4, tokens=100)
        state.rate_limited(go(state, T0 + 0.5), 3.0, T0 + 0.5)
        snapshot = state.snapshot(T0 + 1.0)
        assert snapshot.scope == SCOPE
        assert snapshot.requests_per_minute == pytest.approx(300)
        assert snapshot.request_limit_source == "header"
        assert snapshot.tokens_per_minute == pytest.approx(90_000)
        assert snapshot.token_limit_source == "configured"
        assert snapshot.remaining_requests == 299
        assert snapshot.remaining_tokens is None
        assert snapshot.utilisation == pytest.approx(4 / 300)
        assert (snapshot.admitted, snapshot.succeeded, snapshot.failed) == (4, 1, 1)
        assert snapshot.rate_limited == 1
        assert snapshot.in_flight == 1
        assert snapshot.tokens_used == 85
        assert snapshot.paused_for == pytest.approx(2.5)
        assert not snapshot.quota_exhausted
        state.release()
        assert in_flight.tokens == 100
        assert state.snapshot(T0 + 1.0).in_flight == 0

    def test_utilisation_counts_only_the_last_window(self) -> None:
        """Admissions older than the window drop out of the utilisation."""
        state = controller(rpm=60)
        go(state, T0)
        assert state.snapshot(T0 + 61.0).utilisation == 0.0
        assert controller().snapshot(T0).utilisation is None
