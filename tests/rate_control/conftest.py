"""Fixtures for the rate-control tests."""

from __future__ import annotations

import pytest
from rate_control_fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A jump-mode fake clock."""
    return FakeClock()


@pytest.fixture
def timed_clock() -> FakeClock:
    """A fake clock whose sleepers wait until it is advanced."""
    return FakeClock(jump=False)
