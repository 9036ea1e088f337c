"""`SimulatorConfig` validation, the command line, and the optional aiohttp dependency."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import Any

import httpx2
import pytest

from async_batch_llm.testing.simulator import SimulatorConfig
from async_batch_llm.testing.simulator._cli import (
    build_parser,
    config_from_args,
    main,
    parse_latency,
)

MODULE = "async_batch_llm.testing.simulator"


class TestConfig:
    """Settings are validated when built, with messages naming the value and the fix."""

    @pytest.mark.parametrize(
        ("options", "error", "message"),
        [
            ({"rpm": 0}, ValueError, "rpm must be a positive number per window or None"),
            ({"tpm": -5}, ValueError, r"tpm must be .* got -5; for example tpm=600"),
            ({"rpm": True}, ValueError, "rpm must be a positive number"),
            ({"window_seconds": 0}, ValueError, "window_seconds must be a positive number"),
            ({"latency": -0.1}, ValueError, "latency must be seconds >= 0"),
            ({"latency": (0.5, 0.1)}, ValueError, r"latency range must be \(low, high\)"),
            ({"latency": (1.0,)}, ValueError, r"latency range must be \(low, high\)"),
            ({"error_rate": 1.5}, ValueError, "error_rate must be a probability"),
            ({"error_statuses": ()}, ValueError, "error_statuses must be a non-empty tuple"),
            ({"error_statuses": (200,)}, ValueError, r"HTTP error statuses \(400-599\)"),
            ({"daily_request_quota": 0}, ValueError, "daily_request_quota must be a positive"),
            ({"seed": "seven"}, TypeError, "seed must be an integer or None, got 'seven'"),
            ({"clock": 5}, TypeError, "clock must be a callable returning seconds"),
            ({"recent_requests": -1}, ValueError, "recent_requests must be a non-negative"),
        ],
    )
    def test_bad_values_are_rejected(
        self, options: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        """Each invalid setting raises with a message naming it."""
        with pytest.raises(error, match=message):
            SimulatorConfig(**options)

    def test_defaults_are_unlimited_and_immediate(self) -> None:
        """By default nothing is limited, delayed or injected; hints are on."""
        config = SimulatorConfig()
        assert (config.rpm, config.tpm, config.latency, config.error_rate) == (None, None, 0, 0)
        assert config.window_seconds == 60.0
        assert config.send_rate_limit_headers
        assert config.send_retry_after

    def test_error_statuses_become_a_tuple(self) -> None:
        """A list of statuses is stored as a tuple, keeping the config immutable."""
        config = SimulatorConfig(error_statuses=[502, 504])  # type: ignore[arg-type]
        assert config.error_statuses == (502, 504)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class TestCommandLine:
    """``python -m async_batch_llm.testing.simulator``."""

    @pytest.mark.parametrize(
        ("text", "latency"), [("0.2", 0.2), ("0.1-0.8", (0.1, 0.8)), ("1e-3", 0.001)]
    )
    def test_latency_is_a_value_or_a_range(self, text: str, latency: object) -> None:
        """``--latency`` takes seconds or ``low-high``."""
        assert parse_latency(text) == latency

    def test_bad_latency_names_the_forms(self) -> None:
        """An unreadable latency says which forms are accepted."""
        with pytest.raises(
            argparse.ArgumentTypeError, match=r"like 0\.2 or a range like 0\.1-0\.8"
        ):
            parse_latency("fast")

    def test_arguments_build_the_config(self) -> None:
        """Every flag lands in the matching `SimulatorConfig` field."""
        args = build_parser().parse_args(
            [
                "--rpm", "600", "--tpm", "100000", "--window", "6", "--latency", "0.1-0.8",
                "--error-rate", "0.02", "--error-statuses", "500,529", "--daily-quota", "50",
                "--seed", "3", "--no-rate-limit-headers", "--no-retry-after", "--per-model",
            ]
        )  # fmt: skip
        config = config_from_args(args)
        assert (config.rpm, config.tpm, config.window_seconds) == (600, 100_000, 6)
        assert config.latency == (0.1, 0.8)
        assert (config.error_rate, config.error_statuses) == (0.02, (500, 529))
        assert (config.daily_request_quota, config.seed) == (50, 3)
        assert not config.send_rate_limit_headers
        assert not config.send_retry_after
        assert config.limits_per_model

    def test_invalid_setting_exits_with_the_config_message(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A value the config rejects is a usage error (exit 2) quoting the config's message."""
        with pytest.raises(SystemExit) as exited:
            main(["--rpm", "-1"])
        assert exited.value.code == 2
        assert "rpm must be a positive number per window" in capsys.readouterr().err

    def test_help_runs(self) -> None:
        """``--help`` prints the options and exits 0."""
        done = subprocess.run(
            [sys.executable, "-m", MODULE, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0
        assert "--rpm" in done.stdout
        assert "--latency" in done.stdout

    def test_serves_until_interrupted(self) -> None:
        """The server prints its URLs, enforces the limits and exits 0 on Ctrl-C."""
        process = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--port", "0", "--rpm", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As a terminal would start it: a suite run in the background (`cmd &` in a
            # script) passes SIGINT on ignored, and Python then never raises
            # KeyboardInterrupt.
            preexec_fn=_default_sigint,
        )
        try:
            assert process.stdout is not None
            first_line = process.stdout.readline()
            assert first_line.startswith("Provider simulator listening on http://127.0.0.1:")
            base_url = first_line.rsplit(" ", 1)[-1].strip()
            request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            with httpx2.Client(base_url=base_url) as client:
                ok = client.post("/v1/chat/completions", json=request)
                limited = client.post("/v1/chat/completions", json=request)
            assert ok.json()["choices"][0]["message"]["content"] == "Echo: hi"
            assert limited.status_code == 429
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def test_testing_package_imports_without_aiohttp() -> None:
    """``async_batch_llm.testing`` works without aiohttp; the simulator says what to install."""
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None\n"
        "import async_batch_llm.testing\n"
        "try:\n"
        "    import async_batch_llm.testing.simulator\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 0, done.stderr
    assert "install it with: pip install aiohttp" in done.stdout


def test_a_taken_port_is_a_clear_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    from async_batch_llm.testing.simulator._cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)], prog="abl simulate") == 2
    err = capsys.readouterr().err
    assert f"abl simulate: error: cannot listen on 127.0.0.1:{port}" in err
