"""The GCRA pacer: spacing, bursts, rate changes, refunds, restarts and header sync."""

from __future__ import annotations

import math

import pytest

from async_batch_llm._internal.rate_control.pacer import Pacer, default_burst

T0 = 100.0


def delays(pacer: Pacer, count: int, now: float = T0, cost: float = 1.0) -> list[float]:
    return [round(pacer.reserve(cost, now), 9) for _ in range(count)]


class TestSpacing:
    def test_unlimited_pacer_never_delays(self) -> None:
        """With no rate every booking goes at once, whatever its cost."""
        pacer = Pacer(None, now=T0)
        assert delays(pacer, 5, cost=1000) == [0.0] * 5
        assert pacer.available(T0) == math.inf

    def test_bookings_at_one_instant_are_spaced_by_the_interval(self) -> None:
        """Two units per second with a burst of one: 0, 0.5, 1.0, 1.5 seconds."""
        pacer = Pacer(2.0, burst=1.0, now=T0)
        assert delays(pacer, 4) == [0.0, 0.5, 1.0, 1.5]

    def test_burst_goes_at_once_then_pacing_applies(self) -> None:
        """A burst of five at ten per second: five immediately, then one every 0.1 s."""
        pacer = Pacer(10.0, burst=5.0, now=T0)
        assert delays(pacer, 7) == [0.0] * 5 + [0.1, 0.2]

    def test_idle_time_refills_the_burst_but_not_beyond_it(self) -> None:
        """After a long quiet period only ``burst`` units go at once, not the idle time's worth."""
        pacer = Pacer(10.0, burst=3.0, now=T0)
        delays(pacer, 3)
        assert delays(pacer, 4, now=T0 + 60.0) == [0.0, 0.0, 0.0, 0.1]

    def test_partial_refill_allows_what_was_paid_off(self) -> None:
        """Half a second at four per second pays off two units of a used-up burst."""
        pacer = Pacer(4.0, burst=2.0, now=T0)
        delays(pacer, 2)
        assert delays(pacer, 3, now=T0 + 0.5) == [0.0, 0.0, 0.25]

    def test_cost_above_burst_goes_when_idle_and_the_next_waits_for_it(self) -> None:
        """A 10-unit booking with a burst of 2 goes at once; the next waits for it to pay off."""
        pacer = Pacer(5.0, burst=2.0, now=T0)
        assert pacer.reserve(10, T0) == 0.0
        assert pacer.reserve(1, T0) == pytest.approx(2.0 - 0.2)

    def test_default_burst_is_one_second_of_rate_and_at_least_one_unit(self) -> None:
        """The default burst: a second's worth of the rate, never below one unit."""
        assert Pacer(50.0, now=T0).burst == 50.0
        assert Pacer(0.2, now=T0).burst == 1.0
        assert default_burst(10.0, 0.5) == 5.0
        assert default_burst(None) == 1.0


class TestRateChanges:
    def test_raising_the_rate_mid_stream_speeds_up_the_remaining_bookings(self) -> None:
        """Three units booked at 1/s, then 2/s: the debt is paid off twice as fast."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        assert delays(pacer, 3) == [0.0, 1.0, 2.0]
        pacer.set_rate(2.0, T0, burst=1.0)
        # The three booked units now take 1.5 s; the next one starts after them.
        assert pacer.reserve(1, T0) == pytest.approx(1.5)
        assert pacer.reserve(1, T0) == pytest.approx(2.0)

    def test_lowering_the_rate_keeps_the_bookings(self) -> None:
        """Bookings survive a slower rate: their debt is re-expressed at the new pace."""
        pacer = Pacer(4.0, burst=1.0, now=T0)
        delays(pacer, 4)  # one second of work booked
        pacer.set_rate(1.0, T0, burst=1.0)
        assert pacer.reserve(1, T0) == pytest.approx(4.0)

    def test_a_larger_burst_fills_up_at_the_new_rate(self) -> None:
        """1/s with a burst of 1 raised to 2/s with a burst of 4: one unit may go now, the
        others follow at the new rate instead of three extra at once."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        pacer.set_rate(2.0, T0, burst=4.0)
        assert delays(pacer, 3) == [0.0, 0.5, 1.0]
        assert pacer.available(T0 + 3.0) == 4.0

    def test_lowering_the_rate_after_a_burst_waits_one_new_interval(self) -> None:
        """A burst of 4 at 4/s used up, then 1/s: the next unit waits one second (the empty
        burst refilling at the new rate), not four (the burst re-priced at the new rate)."""
        pacer = Pacer(4.0, burst=4.0, now=T0)
        assert delays(pacer, 4) == [0.0] * 4
        pacer.set_rate(1.0, T0, burst=1.0)
        assert pacer.reserve(1, T0) == pytest.approx(1.0)

    def test_becoming_limited_starts_with_a_full_burst(self) -> None:
        """From unlimited to a rate: the burst is available at once."""
        pacer = Pacer(None, now=T0)
        pacer.set_rate(10.0, T0, burst=2.0)
        assert delays(pacer, 3) == [0.0, 0.0, 0.1]

    def test_becoming_unlimited_drops_all_pacing(self) -> None:
        """Setting the rate to None lets everything through at once."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        delays(pacer, 5)
        pacer.set_rate(None, T0)
        assert delays(pacer, 3) == [0.0, 0.0, 0.0]

    @pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf])
    def test_bad_rate_is_rejected_with_the_value_and_the_fix(self, rate: float) -> None:
        """A rate must be a positive finite number; the message names the value and None."""
        with pytest.raises(ValueError, match=r"rate must be a positive finite number.*None"):
            Pacer(rate, now=T0)

    def test_bad_burst_is_rejected(self) -> None:
        """A burst of zero units is refused."""
        with pytest.raises(ValueError, match=r"burst must be a positive finite number, got 0"):
            Pacer(1.0, burst=0.0, now=T0)


class TestRefunds:
    def test_refund_moves_the_next_booking_up(self) -> None:
        """Refunding a booked unit lets the next booking take its place."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        delays(pacer, 3)
        pacer.refund(1)
        assert pacer.reserve(1, T0) == pytest.approx(2.0)

    def test_refund_of_an_idle_pacer_builds_no_extra_burst(self) -> None:
        """Refunds after the work was paid off cannot raise the burst above its size."""
        pacer = Pacer(1.0, burst=2.0, now=T0)
        delays(pacer, 2)
        pacer.refund(50)
        assert delays(pacer, 3, now=T0 + 10.0) == [0.0, 0.0, 1.0]

    def test_restart_resumes_gently(self) -> None:
        """After ``restart(at)`` one unit goes at ``at`` and the rest follow at the rate."""
        pacer = Pacer(2.0, burst=4.0, now=T0)
        delays(pacer, 4)
        pacer.restart(T0 + 3.0)
        assert delays(pacer, 3) == [3.0, 3.5, 4.0]

    def test_restart_keeps_what_was_booked(self) -> None:
        """Units booked beyond the pause stay booked: a pause never grants extra units."""
        pacer = Pacer(2.0, burst=4.0, now=T0)
        delays(pacer, 10)  # booked until T0 + 3.5
        pacer.restart(T0 + 1.0)
        assert delays(pacer, 2) == [3.5, 4.0]
        pacer.refund(2)
        pacer.restart(T0 + 1.0)
        assert delays(pacer, 1) == [3.5]


class TestSync:
    def test_spare_capacity_becomes_credit_spent_before_pacing(self) -> None:
        """A provider reporting 10 spare units lets 10 go at once, then pacing resumes."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        pacer.sync(10.0, T0)
        assert pacer.credit == 9.0
        assert pacer.available(T0) == 10.0
        assert delays(pacer, 11) == [0.0] * 10 + [1.0]

    def test_deficit_holds_until_the_provider_refilled_a_unit(self) -> None:
        """Two units short at 2/s: the next unit waits 1.5 s (the deficit plus itself)."""
        pacer = Pacer(2.0, burst=1.0, now=T0)
        pacer.sync(-2.0, T0)
        assert pacer.reserve(1, T0) == pytest.approx(1.5)

    def test_refill_within_caps_the_hold(self) -> None:
        """A provider full again in 0.4 s caps a 5 s hold at 0.4 s."""
        pacer = Pacer(1.0, burst=3.0, now=T0)
        pacer.sync(-2.0, T0, refill_within=0.4)
        assert pacer.reserve(1, T0) == pytest.approx(0.4)

    def test_sync_never_moves_existing_debt_earlier(self) -> None:
        """A sync that is looser than the pacer's own schedule changes nothing."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        delays(pacer, 4)
        pacer.sync(-1.0, T0)
        assert pacer.credit == 0.0
        assert pacer.reserve(1, T0) == pytest.approx(4.0)

    def test_credit_of_a_pacer_in_debt_is_only_what_the_provider_has_spare(self) -> None:
        """Credit is what the provider has spare, never that plus the pacer's queued debt."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        delays(pacer, 5)
        pacer.sync(2.0, T0)
        assert pacer.credit == 2.0
        pacer = Pacer(1.0, burst=1.0, now=T0)
        delays(pacer, 5)
        pacer.sync(-1.0, T0)
        assert pacer.credit == 0.0

    def test_credit_only_pays_for_a_booking_it_lets_go_at_once(self) -> None:
        """A booking that would wait anyway keeps its place in line and leaves the credit
        for one that can go now; a partly paid booking that then conforms uses it."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        delays(pacer, 5)
        pacer.sync(2.0, T0)
        assert pacer.reserve(3.0, T0) == pytest.approx(5.0)
        assert pacer.credit == 2.0
        assert pacer.reserve(1.0, T0) == 0.0
        assert pacer.credit == 1.0
        idle = Pacer(1.0, burst=1.0, now=T0)
        idle.sync(5.0, T0)
        assert idle.reserve(5.0, T0) == 0.0
        assert idle.credit == 0.0

    def test_clear_credit_and_restart_forget_the_credit(self) -> None:
        """Credit from headers is void after a rate limit."""
        pacer = Pacer(1.0, burst=1.0, now=T0)
        pacer.sync(5.0, T0)
        pacer.clear_credit()
        assert pacer.credit == 0.0
        pacer.sync(5.0, T0)
        pacer.restart(T0)
        assert pacer.credit == 0.0

    def test_sync_of_an_unlimited_pacer_does_nothing(self) -> None:
        """Without a rate there is nothing to align."""
        pacer = Pacer(None, now=T0)
        pacer.sync(-5.0, T0)
        assert pacer.reserve(1, T0) == 0.0

    def test_repr_shows_the_state(self) -> None:
        """The repr names rate, burst and credit for debugging."""
        assert repr(Pacer(2.0, burst=1.0, now=T0)).startswith("Pacer(rate=2.0, burst=1.0,")
