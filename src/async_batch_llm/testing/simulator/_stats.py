"""Counters of what the simulator served, for tests and benchmarks to assert on."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from async_batch_llm.testing.simulator._request import Provider

__all__ = ["RequestRecord", "SimulatorStats"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request: where it went, who sent it and how it was answered.

    ``status`` is 499 when the client went away before the reply was sent. ``time`` is the
    simulator's (monotonic) clock when it finished; ``received`` when a generation request
    came in (other requests: when they finished), which is what a provider's rate limit
    counts. The time to answer varies with the machine's load, so ``time`` less the
    configured latency is not when the request was sent.
    """

    time: float
    provider: Provider
    method: str
    path: str
    api_key: str
    model: str | None
    status: int
    received: float = 0.0


class SimulatorStats:
    """Live counters of a running simulator; `reset` clears them.

    Attributes:
        requests_total: Finished requests of every kind (generation and cache calls).
        by_status: Finished requests per HTTP status.
        by_provider: Finished requests per wire format.
        by_key: Finished requests per API key.
        rate_limited: 429s from the requests/tokens buckets.
        quota_exhausted: Requests refused because the key's hard quota is used up.
        injected_errors: Failures injected at ``error_rate`` or by ``fail_next``.
        prompt_tokens: Input tokens reported in successful generation replies.
        output_tokens: Output tokens reported in successful generation replies (online and
            inside batch jobs).
        batch_jobs_created: Batch jobs accepted per provider; tests use it to prove that a
            client did not submit a job again.
        batch_jobs_cancelled: Batch jobs whose cancellation was accepted, per provider.
        batch_requests: Requests answered inside batch jobs (succeeded or errored; not those
            a job cancelled or let expire).
        recent: The most recent `RequestRecord`s, oldest first.
    """

    __slots__ = (
        "batch_jobs_cancelled",
        "batch_jobs_created",
        "batch_requests",
        "by_key",
        "by_provider",
        "by_status",
        "injected_errors",
        "output_tokens",
        "prompt_tokens",
        "quota_exhausted",
        "rate_limited",
        "recent",
        "requests_total",
    )

    def __init__(self, recent_limit: int = 1000) -> None:
        self.recent: deque[RequestRecord] = deque(maxlen=recent_limit)
        self.by_status: Counter[int] = Counter()
        self.by_provider: Counter[str] = Counter()
        self.by_key: Counter[str] = Counter()
        self.requests_total = 0
        self.rate_limited = 0
        self.quota_exhausted = 0
        self.injected_errors = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.batch_jobs_created: Counter[str] = Counter()
        self.batch_jobs_cancelled: Counter[str] = Counter()
        self.batch_requests = 0

    @property
    def successes(self) -> int:
        """Finished requests answered 200."""
        return self.by_status[200]

    @property
    def tokens_served(self) -> int:
        """Input plus output tokens of successful generation replies."""
        return self.prompt_tokens + self.output_tokens

    def reset(self) -> None:
        """Zero every counter and forget the recent requests."""
        self.recent.clear()
        self.by_status.clear()
        self.by_provider.clear()
        self.by_key.clear()
        self.requests_total = 0
        self.rate_limited = 0
        self.quota_exhausted = 0
        self.injected_errors = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.batch_jobs_created.clear()
        self.batch_jobs_cancelled.clear()
        self.batch_requests = 0

    def record(self, record: RequestRecord) -> None:
        """Count one finished request."""
        self.requests_total += 1
        self.by_status[record.status] += 1
        self.by_provider[record.provider] += 1
        self.by_key[record.api_key] += 1
        self.recent.append(record)

    def __repr__(self) -> str:
        return (
            f"SimulatorStats(requests_total={self.requests_total}, "
            f"by_status={dict(self.by_status)}, rate_limited={self.rate_limited}, "
            f"quota_exhausted={self.quota_exhausted}, injected_errors={self.injected_errors}, "
            f"tokens_served={self.tokens_served})"
        )
