"""Simulator behaviour shared by the wire formats: injection, scripting, limits and stats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import anthropic
import httpx2
import openai
import pytest
from google import genai
from openai.types.chat import ChatCompletionMessageParam

from async_batch_llm.testing.simulator import (
    ProviderRequest,
    ProviderSimulator,
    RawReply,
    SimulatorConfig,
)
from conftest import AIOHTTP_SUBCLASS_WARNING, ManualClock, StartSimulator

OpenAIFactory = Callable[..., openai.AsyncOpenAI]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
ANTHROPIC_USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello there"}]


async def statuses_of(client: openai.AsyncOpenAI, count: int) -> list[int]:
    """Send ``count`` chat completions and return the HTTP status of each."""
    statuses = []
    for _ in range(count):
        try:
            await client.chat.completions.create(model="gpt-4o", messages=USER)
        except openai.APIStatusError as error:
            statuses.append(error.status_code)
        else:
            statuses.append(200)
    return statuses


class TestInjectedErrors:
    """``error_rate`` and ``fail_next``."""

    async def test_same_seed_gives_the_same_failures(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """Two simulators with one seed fail the same requests with the same statuses."""
        first = await start_simulator(error_rate=0.4, seed=7)
        second = await start_simulator(error_rate=0.4, seed=7)
        first_statuses = await statuses_of(openai_client(first), 30)
        second_statuses = await statuses_of(openai_client(second), 30)
        assert first_statuses == second_statuses
        assert set(first_statuses) == {200, 500, 503}
        assert first.stats.injected_errors == sum(s != 200 for s in first_statuses)

    async def test_only_configured_statuses_are_injected(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """With error_rate 1 every request fails with one of ``error_statuses``."""
        sim = await start_simulator(error_rate=1.0, error_statuses=(502,), seed=1)
        assert await statuses_of(openai_client(sim), 5) == [502] * 5

    async def test_injected_failures_cost_no_quota(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """Failures are injected before the buckets, so they use none of the RPM budget."""
        sim = await start_simulator(rpm=2)
        sim.fail_next(3)
        assert await statuses_of(openai_client(sim), 5) == [503, 503, 503, 200, 200]

    async def test_fail_next_targets_one_provider_in_order(
        self,
        sim: ProviderSimulator,
        openai_client: OpenAIFactory,
        anthropic_client: Callable[..., anthropic.AsyncAnthropic],
    ) -> None:
        """Queued failures hit only their provider, first queued first used."""
        sim.fail_next(1, status=500, provider="anthropic")
        sim.fail_next(1, status=529, provider="anthropic")
        assert await statuses_of(openai_client(sim), 1) == [200]
        client = anthropic_client(sim)
        with pytest.raises(anthropic.InternalServerError) as first:
            await client.messages.create(model="c", max_tokens=5, messages=ANTHROPIC_USER)
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model="c", max_tokens=5, messages=ANTHROPIC_USER)
        await client.messages.create(model="c", max_tokens=5, messages=ANTHROPIC_USER)
        assert first.value.status_code == 500

    async def test_injected_429_carries_the_given_retry_hint(
        self, sim: ProviderSimulator, openai_client: OpenAIFactory
    ) -> None:
        """``fail_next(status=429, retry_after=...)`` sends that hint in the provider's headers."""
        sim.fail_next(status=429, retry_after=2.5)
        with pytest.raises(openai.RateLimitError) as caught:
            await openai_client(sim).chat.completions.create(model="gpt-4o", messages=USER)
        assert caught.value.response.headers["retry-after-ms"] == "2500"
        assert caught.value.response.headers["retry-after"] == "3"
        assert caught.value.code == "rate_limit_exceeded"

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"count": 0}, "count must be a positive number of requests, got 0"),
            ({"status": 200}, r"status must be an HTTP error status \(400-599\), got 200"),
            ({"retry_after": -1.0}, "retry_after must be seconds >= 0 or None, got -1.0"),
        ],
    )
    def test_fail_next_rejects_bad_arguments(self, kwargs: dict[str, float], message: str) -> None:
        """``fail_next`` names the bad argument."""
        with pytest.raises(ValueError, match=message):
            ProviderSimulator().fail_next(**kwargs)  # type: ignore[arg-type]


class TestReplies:
    """Scripted replies, the reply hook and raw replies."""

    async def test_scripted_replies_are_used_in_order_then_the_default(
        self, sim: ProviderSimulator, openai_client: OpenAIFactory
    ) -> None:
        """``script`` answers the next requests one each, then the echo resumes."""
        sim.script("one", {"two": 2})
        client = openai_client(sim)
        contents = []
        for _ in range(3):
            completion = await client.chat.completions.create(model="m", messages=USER)
            contents.append(completion.choices[0].message.content)
        assert contents == ["one", '{"two": 2}', "Echo: hello there"]

    async def test_reply_hook_sees_the_parsed_request(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """The hook gets provider, model, key, prompt and limits; its text becomes the reply."""
        seen: list[ProviderRequest] = []

        def hook(request: ProviderRequest) -> str:
            seen.append(request)
            return f"{request.model}:{request.prompt}"

        sim = await start_simulator(reply=hook)
        completion = await openai_client(sim, api_key="sk-hook").chat.completions.create(
            model="gpt-4o", messages=USER, max_tokens=50
        )
        assert completion.choices[0].message.content == "gpt-4o:hello there"
        request = seen[0]
        assert request.provider == "openai"
        assert request.api_key == "sk-hook"
        assert request.max_output_tokens == 50
        assert request.prompt_tokens == 3
        assert request.path == "/v1/chat/completions"
        assert request.sequence == 1
        assert request.tool_name is None
        assert request.body["model"] == "gpt-4o"

    async def test_rate_limited_requests_do_not_reach_the_hook(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """Only admitted requests consume scripted replies or call the hook."""
        calls: list[int] = []
        sim = await start_simulator(rpm=1, reply=lambda request: calls.append(1))
        assert await statuses_of(openai_client(sim), 3) == [200, 429, 429]
        assert calls == [1]

    @pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)
    async def test_raw_reply_sends_a_blocked_gemini_response(
        self, sim: ProviderSimulator, genai_client: Callable[..., genai.Client]
    ) -> None:
        """A `RawReply` goes out verbatim, e.g. a prompt blocked for safety with no candidates."""
        sim.script(
            RawReply(
                {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {}},
                headers={"x-sim": "raw"},
            )
        )
        response = await genai_client(sim).aio.models.generate_content(model="m", contents="x")
        assert response.candidates is None
        assert response.prompt_feedback is not None
        assert response.prompt_feedback.block_reason is not None
        assert response.prompt_feedback.block_reason.value == "SAFETY"
        assert response.sdk_http_response is not None
        assert response.sdk_http_response.headers is not None
        assert response.sdk_http_response.headers["x-sim"] == "raw"


class TestLimits:
    """Buckets under concurrency, run-time changes and after-the-fact token charges."""

    async def test_concurrent_burst_admits_exactly_the_limit(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """Fifty simultaneous requests against RPM 20 yield exactly twenty successes."""
        sim = await start_simulator(rpm=20)
        client = openai_client(sim)

        async def one() -> int:
            try:
                await client.chat.completions.create(model="m", messages=USER)
            except openai.RateLimitError:
                return 429
            return 200

        statuses = await asyncio.gather(*(one() for _ in range(50)))
        assert statuses.count(200) == 20
        assert statuses.count(429) == 30
        assert sim.stats.rate_limited == 30

    async def test_halving_the_limit_takes_effect_at_once(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """``set_limits`` caps what a bucket holds at the new limit; omitted limits stay."""
        sim = await start_simulator(rpm=10, tpm=10_000)
        client = openai_client(sim)
        for _ in range(3):
            await client.chat.completions.create(model="m", messages=USER)
        sim.set_limits(rpm=5)
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        assert raw.headers["x-ratelimit-remaining-requests"] == "4"
        assert raw.headers["x-ratelimit-limit-tokens"] == "10000"
        assert sim.config.rpm == 5
        assert sim.config.tpm == 10_000

        sim.set_limits(rpm=None)
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
        assert "x-ratelimit-limit-requests" not in raw.headers
        assert "x-ratelimit-limit-tokens" in raw.headers

    @pytest.mark.parametrize(("per_model", "expected"), [(False, [200, 429]), (True, [200, 200])])
    async def test_limits_can_be_scoped_per_model(
        self,
        start_simulator: StartSimulator,
        openai_client: OpenAIFactory,
        per_model: bool,
        expected: list[int],
    ) -> None:
        """With ``limits_per_model`` each model of a key has its own bucket."""
        sim = await start_simulator(rpm=1, limits_per_model=per_model)
        client = openai_client(sim)
        statuses = []
        for model in ("gpt-4o", "gpt-4o-mini"):
            try:
                await client.chat.completions.create(model=model, messages=USER)
            except openai.RateLimitError:
                statuses.append(429)
            else:
                statuses.append(200)
        assert statuses == expected

    def test_set_limits_validates_like_the_config(self) -> None:
        """A bad run-time limit is rejected with the config's message."""
        with pytest.raises(ValueError, match="rpm must be a positive number per window"):
            ProviderSimulator().set_limits(rpm=0)

    async def test_output_is_charged_after_the_reply_when_no_maximum_was_reserved(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """Without ``max_tokens`` the reply's tokens are taken from the bucket afterwards."""
        sim = await start_simulator(tpm=20)
        raw = await openai_client(sim).chat.completions.with_raw_response.create(
            model="m", messages=USER
        )
        # 3 prompt tokens up front, 5 output tokens ("Echo: hello there") after.
        assert raw.headers["x-ratelimit-remaining-tokens"] == "12"


class TestStatsAndLifecycle:
    """Counters, the recent-request log, latency and the server's lifecycle."""

    async def test_stats_count_by_status_provider_and_key(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """Every finished request is counted; tokens count only successful replies."""
        sim = await start_simulator(rpm=2, recent_requests=2)
        await statuses_of(openai_client(sim, api_key="k1"), 3)
        stats = sim.stats
        assert stats.requests_total == 3
        assert stats.by_status == {200: 2, 429: 1}
        assert stats.successes == 2
        assert stats.by_provider == {"openai": 3}
        assert stats.by_key == {"k1": 3}
        assert stats.prompt_tokens == 6
        assert stats.output_tokens == 10
        assert stats.tokens_served == 16
        assert [record.status for record in stats.recent] == [200, 429]
        assert stats.recent[-1].api_key == "k1"
        assert stats.recent[-1].model == "gpt-4o"

        sim.reset()
        assert sim.stats.requests_total == 0
        assert not sim.stats.recent
        assert await statuses_of(openai_client(sim, api_key="k1"), 1) == [200]

    async def test_a_record_says_when_the_request_came_in_not_only_when_it_finished(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory, clock: ManualClock
    ) -> None:
        """``received`` is when the request came in; ``time`` is when it was answered,
        after the latency and whatever else delayed the answer."""

        def slow_answer() -> float:
            clock.advance(5.0)  # the answer is late: the machine is busy
            return 0.0

        sim = await start_simulator(latency=slow_answer)
        came_in = clock()
        assert await statuses_of(openai_client(sim), 1) == [200]
        (record,) = sim.stats.recent
        assert record.received == came_in
        assert record.time == came_in + 5.0

    async def test_latency_is_drawn_for_successes_only(
        self, start_simulator: StartSimulator, openai_client: OpenAIFactory
    ) -> None:
        """A callable latency is asked once per successful reply; 429s answer at once."""
        draws: list[float] = []

        def latency() -> float:
            draws.append(0.001)
            return 0.001

        sim = await start_simulator(rpm=2, latency=latency)
        assert await statuses_of(openai_client(sim), 3) == [200, 200, 429]
        assert len(draws) == 2

    async def test_client_that_gives_up_is_recorded_as_499(
        self, start_simulator: StartSimulator
    ) -> None:
        """A client leaving during the latency cancels the handler, recorded as status 499."""
        sim = await start_simulator(latency=30.0)
        client = openai.AsyncOpenAI(
            base_url=sim.openai_base_url, api_key="k", max_retries=0, timeout=0.05
        )
        async with client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="m", messages=USER)
        for _ in range(2000):
            if sim.stats.by_status[499]:
                break
            await asyncio.sleep(0.001)
        assert sim.stats.by_status == {499: 1}

    async def test_invalid_json_is_a_400_in_the_provider_format(
        self, sim: ProviderSimulator
    ) -> None:
        """A body that is not a JSON object gets the provider's 400 envelope."""
        async with httpx2.AsyncClient() as client:
            response = await client.post(
                f"{sim.base_url}/v1/messages",
                content=b"{not json",
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            )
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert sim.stats.by_key == {"k": 1}

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"x-goog-api-key": "g"}, {"code": 404, "status": "NOT_FOUND"}),
            ({"x-api-key": "a", "anthropic-version": "2023-06-01"}, {"type": "not_found_error"}),
            ({"Authorization": "Bearer o"}, {"type": "invalid_request_error", "code": None}),
        ],
    )
    async def test_unknown_routes_answer_404_in_the_callers_format(
        self, sim: ProviderSimulator, headers: dict[str, str], expected: dict[str, object]
    ) -> None:
        """The 404 envelope follows the provider the request's headers point to."""
        async with httpx2.AsyncClient() as client:
            response = await client.get(f"{sim.base_url}/v9/unknown", headers=headers)
        assert response.status_code == 404
        error = response.json()["error"]
        assert {key: error[key] for key in expected} == expected
        assert "/v9/unknown" in json.dumps(error)

    async def test_base_url_needs_a_running_server(self) -> None:
        """URLs exist only while running; starting twice is refused."""
        sim = ProviderSimulator(SimulatorConfig())
        with pytest.raises(RuntimeError, match="not running"):
            _ = sim.base_url
        async with sim:
            assert sim.base_url.startswith("http://127.0.0.1:")
            assert sim.openai_base_url == f"{sim.base_url}/v1"
            assert sim.anthropic_base_url == sim.gemini_base_url == sim.base_url
            with pytest.raises(RuntimeError, match="already running"):
                await sim.start()
        with pytest.raises(RuntimeError, match="not running"):
            _ = sim.base_url
