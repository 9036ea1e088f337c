"""Command line: serve the simulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from async_batch_llm.testing.simulator._config import Latency, SimulatorConfig
from async_batch_llm.testing.simulator._server import ProviderSimulator

__all__ = ["build_parser", "config_from_args", "main", "parse_latency"]

_DESCRIPTION = """\
Serve OpenAI chat completions and responses, Anthropic messages and Gemini generateContent,
and the three providers' batch and file APIs, on a local port, with per-key RPM/TPM buckets,
429s with retry hints, rate-limit headers, latency and injected server errors. Point the SDKs
at the printed URLs."""


def parse_latency(text: str) -> Latency:
    """``"0.2"`` is a fixed delay, ``"0.1-0.8"`` a uniform range (seconds)."""
    with contextlib.suppress(ValueError):
        return float(text)
    try:
        low, high = text.split("-", 1)
        return (float(low), float(high))
    except ValueError:
        msg = f"invalid latency {text!r}: use seconds like 0.2 or a range like 0.1-0.8"
        raise argparse.ArgumentTypeError(msg) from None


def _statuses(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        msg = f"invalid statuses {text!r}: use comma-separated HTTP statuses like 500,503"
        raise argparse.ArgumentTypeError(msg) from None


def build_parser(
    prog: str = "python -m async_batch_llm.testing.simulator",
) -> argparse.ArgumentParser:
    """The argument parser of ``python -m async_batch_llm.testing.simulator``."""
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind, 0 for any (8000)")
    parser.add_argument("--rpm", type=float, help="requests per window per API key (unlimited)")
    parser.add_argument("--tpm", type=float, help="tokens per window per API key (unlimited)")
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="length of the rate-limit window; shrink it to compress time (60)",
    )
    parser.add_argument(
        "--latency",
        type=parse_latency,
        default=0.0,
        help="reply delay in seconds, fixed (0.2) or a uniform range (0.1-0.8) (0)",
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="probability of an injected error (0)"
    )
    parser.add_argument(
        "--error-statuses",
        type=_statuses,
        default=(500, 503),
        help="comma-separated statuses to inject (500,503)",
    )
    parser.add_argument(
        "--daily-quota",
        type=int,
        metavar="REQUESTS",
        help="requests per API key before hard quota exhaustion (none)",
    )
    parser.add_argument(
        "--per-model", action="store_true", help="separate limits for each model of a key"
    )
    parser.add_argument("--seed", type=int, help="seed for injected errors and latency")
    parser.add_argument(
        "--no-rate-limit-headers", action="store_true", help="do not send x-ratelimit-* headers"
    )
    parser.add_argument("--no-retry-after", action="store_true", help="send no retry hints on 429s")
    parser.add_argument(
        "--batch-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds a batch job takes; its requests finish evenly over them (0)",
    )
    parser.add_argument(
        "--batch-error-rate",
        type=float,
        default=0.0,
        help="probability that a request inside a batch job fails with a 500 (0)",
    )
    parser.add_argument(
        "--batch-expiry",
        type=float,
        metavar="SECONDS",
        help="seconds after which an unfinished batch job expires (86400, as the providers)",
    )
    parser.add_argument(
        "--batch-max-requests",
        type=int,
        metavar="REQUESTS",
        help="most requests per batch job, below the provider's own cap (provider's cap)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The `SimulatorConfig` the parsed arguments describe (raises ``ValueError`` if invalid)."""
    return SimulatorConfig(
        rpm=args.rpm,
        tpm=args.tpm,
        window_seconds=args.window,
        latency=args.latency,
        error_rate=args.error_rate,
        error_statuses=args.error_statuses,
        send_rate_limit_headers=not args.no_rate_limit_headers,
        send_retry_after=not args.no_retry_after,
        daily_request_quota=args.daily_quota,
        limits_per_model=args.per_model,
        seed=args.seed,
        batch_latency=args.batch_latency,
        batch_error_rate=args.batch_error_rate,
        batch_expiry=args.batch_expiry,
        batch_max_requests=args.batch_max_requests,
    )


async def _serve(simulator: ProviderSimulator) -> None:
    async with simulator:
        print(f"Provider simulator listening on {simulator.base_url}", flush=True)
        print(f"  Gemini    base_url: {simulator.gemini_base_url}", flush=True)
        print(f"  OpenAI    base_url: {simulator.openai_base_url}", flush=True)
        print(f"  Anthropic base_url: {simulator.anthropic_base_url}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse ``argv``, serve until Ctrl-C and return the exit status."""
    parser = build_parser() if prog is None else build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    simulator = ProviderSimulator(config, host=args.host, port=args.port)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(simulator))
    except OSError as exc:  # the port is taken, or the host is not this machine's
        reason = exc.strerror or exc
        where = f"{args.host}:{args.port}"
        print(f"{parser.prog}: error: cannot listen on {where}: {reason}", file=sys.stderr)
        return 2
    return 0
