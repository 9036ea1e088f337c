"""What `abl run` prints at the end: the counts, why items failed, and dollar amounts
(small costs keep their digits)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from async_batch_llm.cli._output import usd
from async_batch_llm.cli._run import ExitCode, RunOptions, _summarize


@pytest.mark.parametrize(
    ("amount", "printed"),
    [
        (0, "$0.0000"),
        ("0", "$0.0000"),
        (Decimal("1234.5"), "$1,234.5000"),
        (0.25, "$0.2500"),
        ("0.0001", "$0.0001"),
        ("0.00000285", "$0.00000285"),  # a few short prompts: not "$0.0000"
        (2.85e-06, "$0.00000285"),
        ("0.0000000000004", "$0.000000000000400"),  # far below a cent, still not zero
        ("-0.00002", "$-0.0000200"),
        (1 / 3 * 1e-5, "$0.00000333"),  # three significant digits
    ],
)
def test_amounts(amount: object, printed: str) -> None:
    assert usd(amount) == printed


def _summary(**counts: Any) -> dict[str, Any]:
    tokens = {"input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0}
    summary: dict[str, Any] = {
        "total": 300, "done": 128, "ok": 80, "failed": 0, "replayed": 0, "not_run": 220,
        "stopped": 48, "wall_seconds": 1.0, "tokens": tokens, "rate_limits": 0,
        "cost_usd_this_run": "0.00000285", "cost_usd_all_runs": "0", "unpriced_items": 0,
        "prices": "test", "mode": "online", "failures_by_category": {}, "first_errors": {},
        "state": None,
    }  # fmt: skip
    summary.update(counts)
    return summary


def _printed(summary: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    options = RunOptions(input="in.jsonl", output="out.jsonl", model="openai:gpt-4o-mini")
    _summarize(summary, options, ExitCode.OK)
    return capsys.readouterr().err


def test_summary_tells_stopped_items_from_items_never_started(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printed = _printed(_summary(), capsys)
    assert "128 of 300 item(s) written in 1.0s: 80 ok, 0 failed" in printed
    assert "220 not run (48 stopped, 172 not started)" in printed
    assert "cost: $0.00000285 this run, $0.0000 for all results" in printed
    # Only one kind: no breakdown.
    assert "(48 stopped" not in _printed(_summary(done=300, not_run=48), capsys)


def test_summary_names_each_failure_category_with_its_first_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    long_error = "ModelHTTPError: " + "x" * 500
    printed = _printed(
        _summary(
            failed=3,
            failures_by_category={"connection": 2, "validation_error": 1},
            first_errors={
                "connection": "ModelConnectionError: refused",
                "validation_error": long_error,
            },
        ),
        capsys,
    )
    assert "failed: 2 connection, the first with ModelConnectionError: refused" in printed
    assert "failed: 1 validation_error, the first with ModelHTTPError: xxx" in printed
    assert "x" * 200 not in printed  # long errors are shortened
