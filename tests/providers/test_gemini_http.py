"""GeminiStrategy, GeminiModel and GeminiCachedModel through google-genai over HTTP.

Every request goes from the real ``google.genai.Client`` to a `ProviderSimulator` on
127.0.0.1; nothing in the SDK is patched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from async_batch_llm import (
    GeminiCachedModel,
    GeminiErrorClassifier,
    GeminiModel,
    GeminiStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    models,
)
from async_batch_llm.models import _genai_httpx, gemini_client
from async_batch_llm.testing.simulator import ProviderRequest, ProviderSimulator, RawReply

from .http_support import (
    GEMINI_MODEL,
    EventLog,
    GeminiClientFactory,
    LaunchSimulator,
    ManualClock,
)

FAST = ProcessorConfig(
    max_workers=4,
    timeout_per_item=10.0,
    retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False),
    rate_limit=RateLimitConfig(
        cooldown_seconds=0.001,
        slow_start_items=0,
        slow_start_initial_delay=0.0,
        slow_start_final_delay=0.0,
    ),
)

DOCUMENT = [
    genai_types.Content(
        role="user", parts=[genai_types.Part(text="A long shared reference document. " * 40)]
    )
]

BLOCKED = RawReply(
    {
        "candidates": [
            {
                "finishReason": "SAFETY",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}
                ],
            }
        ],
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
    }
)
PROMPT_BLOCKED = RawReply(
    {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
    }
)


def text_of(response: LLMResponse) -> str:
    return response.text


def keep(response: LLMResponse) -> LLMResponse:
    return response


def generation_requests(sim: ProviderSimulator) -> list[str]:
    return [record.path for record in sim.stats.recent if record.path.endswith(":generateContent")]


def cache_creations(sim: ProviderSimulator) -> int:
    return sum(
        1
        for record in sim.stats.recent
        if record.method == "POST" and record.path.endswith("/cachedContents")
    )


async def listed_caches(client: Any) -> list[Any]:
    return [cache async for cache in await client.aio.caches.list()]


async def run_batch(strategy: Any, prompts: list[str], *, observer: EventLog | None = None) -> Any:
    processor = ParallelBatchProcessor[str, Any, None](
        config=FAST,
        error_classifier=GeminiErrorClassifier(),
        observers=[observer] if observer is not None else None,
    )
    async with processor:
        for index, prompt in enumerate(prompts):
            await processor.add_work(
                LLMWorkItem(item_id=f"item-{index}", strategy=strategy, prompt=prompt)
            )
        return await processor.process_all()


class TestGeminiClientHelper:
    async def test_sends_to_the_base_url_without_warnings(
        self, provider_sim: ProviderSimulator
    ) -> None:
        """``gemini_client`` reaches the given base URL (warnings are errors here)."""
        client = gemini_client("gm-test", base_url=provider_sim.gemini_base_url)
        try:
            response = await client.aio.models.generate_content(model=GEMINI_MODEL, contents="hi")
        finally:
            await client.aio.aclose()
        assert response.text == "Echo: hi"
        assert provider_sim.stats.by_key == {"gm-test": 1}

    async def test_client_makes_one_attempt_per_request(
        self, provider_sim: ProviderSimulator
    ) -> None:
        """A 503 reaches the caller of the client itself after a single request."""
        client = gemini_client("gm-test", base_url=provider_sim.gemini_base_url)
        provider_sim.fail_next(1, status=503)
        try:
            with pytest.raises(genai_errors.ServerError):
                await client.aio.models.generate_content(model=GEMINI_MODEL, contents="hi")
        finally:
            await client.aio.aclose()
        assert provider_sim.stats.requests_total == 1

    async def test_uses_and_leaves_open_a_given_http_client(
        self, provider_sim: ProviderSimulator
    ) -> None:
        """Requests go through the caller's httpx client, which closing the SDK leaves open."""
        sent: list[str] = []

        async def record(request: Any) -> None:
            sent.append(request.url.path)

        async with _genai_httpx(genai).AsyncClient(
            event_hooks={"request": [record]}
        ) as http_client:
            client = gemini_client(
                "gm-test", base_url=provider_sim.gemini_base_url, http_client=http_client
            )
            await client.aio.models.generate_content(model=GEMINI_MODEL, contents="hi")
            await client.aio.aclose()
            assert not http_client.is_closed
            assert len(sent) == 1
        assert sent[0].endswith(f"/models/{GEMINI_MODEL}:generateContent")

    async def test_reads_the_api_key_from_the_environment(
        self, provider_sim: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without ``api_key`` google-genai's own environment variables supply it."""
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
        monkeypatch.setenv("GOOGLE_API_KEY", "env-key")
        client = gemini_client(base_url=provider_sim.gemini_base_url)
        try:
            await client.aio.models.generate_content(model=GEMINI_MODEL, contents="hi")
        finally:
            await client.aio.aclose()
        assert provider_sim.stats.by_key == {"env-key": 1}

    def test_requires_google_genai(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without google-genai installed the helper says which extra to install."""
        monkeypatch.setattr(models, "genai", None)
        with pytest.raises(ImportError, match=r"google-genai is required for gemini_client"):
            gemini_client("gm-test")


class TestGeminiStrategy:
    async def test_output_text_and_usage(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """The reply text is the output; usage is the server's input/output/total counts."""
        model = GeminiModel(GEMINI_MODEL, gemini_sdk_client(provider_sim))
        strategy = GeminiStrategy(model, text_of)
        output, usage = await strategy.execute("hello there", 1, 10.0)
        assert output == "Echo: hello there"
        # "hello there" is 11 characters and the reply 17: about four characters a token.
        assert usage == {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
        assert provider_sim.stats.prompt_tokens == 3
        assert provider_sim.stats.output_tokens == 5

    async def test_safety_metadata_and_finish_reason(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """``LLMResponse.metadata`` carries the candidate's safety ratings and finish reason."""
        strategy = GeminiStrategy(GeminiModel(GEMINI_MODEL, gemini_sdk_client(provider_sim)), keep)
        response, _ = await strategy.execute("hi", 1, 10.0)
        assert response.metadata is not None
        assert response.metadata["finish_reason"] == str(genai_types.FinishReason.STOP)
        negligible = str(genai_types.HarmProbability.NEGLIGIBLE)
        assert response.metadata["safety_ratings"] == {
            str(category): negligible
            for category in (
                genai_types.HarmCategory.HARM_CATEGORY_HATE_SPEECH,
                genai_types.HarmCategory.HARM_CATEGORY_DANGEROUS_CONTENT,
                genai_types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                genai_types.HarmCategory.HARM_CATEGORY_SEXUALLY_EXPLICIT,
            )
        }
        assert isinstance(response.raw, genai_types.GenerateContentResponse)

    async def test_system_instruction_and_temperature_reach_the_server(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """The strategy's temperature and the model's system instruction are sent."""
        seen: list[ProviderRequest] = []
        provider_sim.reply_hook = lambda request: seen.append(request)  # type: ignore[func-returns-value]
        model = GeminiModel(
            GEMINI_MODEL, gemini_sdk_client(provider_sim), system_instruction="Be brief."
        )
        await GeminiStrategy(model, text_of, temperature=0.4).execute("hi", 1, 10.0)
        body = seen[0].body
        assert body["generationConfig"]["temperature"] == 0.4
        assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."

    @pytest.mark.parametrize(
        ("reply", "tokens", "reason"),
        [(BLOCKED, 7, "SAFETY"), (PROMPT_BLOCKED, 4, None)],
        ids=["blocked-candidate", "no-candidates"],
    )
    async def test_empty_response_raises_with_its_tokens(
        self,
        provider_sim: ProviderSimulator,
        gemini_sdk_client: GeminiClientFactory,
        reply: RawReply,
        tokens: int,
        reason: str | None,
    ) -> None:
        """A reply without text raises ValueError carrying the billed prompt tokens."""
        provider_sim.script(reply)
        model = GeminiModel(GEMINI_MODEL, gemini_sdk_client(provider_sim))
        with pytest.raises(ValueError, match="Empty response from model") as caught:
            await GeminiStrategy(model, text_of).execute("hi", 1, 10.0)
        if reason is not None:
            assert str(genai_types.FinishReason.SAFETY) in str(caught.value)
            assert str(genai_types.HarmProbability.HIGH) in str(caught.value)
        assert caught.value.__dict__["_failed_token_usage"] == {
            "input_tokens": tokens,
            "output_tokens": 0,
            "total_tokens": tokens,
        }

    async def test_blocked_item_fails_once_with_its_tokens_counted(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """In a batch, a blocked reply fails its item at once; its tokens stay in the totals."""
        provider_sim.reply_hook = lambda request: BLOCKED if request.prompt == "bad" else None
        model = GeminiModel(GEMINI_MODEL, gemini_sdk_client(provider_sim))
        strategy = GeminiStrategy(model, text_of)
        result = await run_batch(strategy, ["good", "bad", "fine"])
        by_id = {item.item_id: item for item in result.results}
        assert [by_id[f"item-{i}"].success for i in range(3)] == [True, False, True]
        failed = by_id["item-1"]
        assert failed.error is not None
        assert failed.error.startswith("ValueError: Empty response from model")
        assert failed.token_usage["input_tokens"] == 7
        assert failed.token_usage["output_tokens"] == 0
        assert failed.token_usage["total_tokens"] == 7
        # Permanent: one request for the blocked item, no retry.
        assert len(generation_requests(provider_sim)) == 3
        assert result.total_input_tokens == provider_sim.stats.prompt_tokens + 7

    async def test_rate_limit_hint_reaches_the_classifier(
        self,
        launch_simulator: LaunchSimulator,
        sim_clock: ManualClock,
        gemini_sdk_client: GeminiClientFactory,
    ) -> None:
        """A 429's ``RetryInfo`` becomes the classifier's suggested wait."""
        sim = await launch_simulator(rpm=1, window_seconds=30.0, clock=sim_clock)
        model = GeminiModel(GEMINI_MODEL, gemini_sdk_client(sim))
        await model.generate("first")
        with pytest.raises(genai_errors.ClientError) as caught:
            await model.generate("second")
        info = GeminiErrorClassifier().classify(caught.value)
        assert info.is_rate_limit
        assert info.suggested_wait == pytest.approx(30.0)


class TestSdkRetries:
    @pytest.mark.parametrize("status", [503, 429])
    async def test_one_request_per_attempt_by_default(
        self,
        provider_sim: ProviderSimulator,
        gemini_sdk_client: GeminiClientFactory,
        status: int,
    ) -> None:
        """On a client built to retry, GeminiModel still sends one request per attempt."""
        provider_sim.fail_next(1, status=status, retry_after=0.001 if status == 429 else None)
        model = GeminiModel(GEMINI_MODEL, gemini_sdk_client(provider_sim, client_retries=3))
        with pytest.raises(genai_errors.APIError) as caught:
            await model.generate("hi")
        assert caught.value.code == status
        assert provider_sim.stats.requests_total == 1

    async def test_failure_reaches_the_processor_after_one_request(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """Each processor attempt is exactly one HTTP request: the 429 and 503 are its own."""
        provider_sim.fail_next(1, status=429, retry_after=0.001)
        provider_sim.fail_next(1, status=503)
        log = EventLog()
        model = GeminiModel(GEMINI_MODEL, gemini_sdk_client(provider_sim, client_retries=3))
        result = await run_batch(GeminiStrategy(model, text_of), ["hi"], observer=log)
        assert result.succeeded == 1
        assert log.count(ProcessingEvent.ITEM_STARTED) == 3
        assert log.count(ProcessingEvent.RATE_LIMIT_HIT) == 1
        assert provider_sim.stats.requests_total == 3

    @pytest.mark.parametrize("status", [503, 429])
    async def test_sdk_retries_true_lets_the_client_retry(
        self,
        provider_sim: ProviderSimulator,
        gemini_sdk_client: GeminiClientFactory,
        status: int,
    ) -> None:
        """With ``sdk_retries=True`` the client's retry options apply: two requests, success."""
        provider_sim.fail_next(1, status=status, retry_after=0.001 if status == 429 else None)
        client = gemini_sdk_client(provider_sim, client_retries=3)
        model = GeminiModel(GEMINI_MODEL, client, sdk_retries=True)
        response = await model.generate("hi")
        assert response.text == "Echo: hi"
        assert provider_sim.stats.requests_total == 2

    async def test_cached_model_sends_one_request_per_attempt(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """GeminiCachedModel's generate calls also bypass the client's retries."""
        client = gemini_sdk_client(provider_sim, client_retries=3)
        model = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT)
        await model.prepare()
        provider_sim.fail_next(1, status=503)
        with pytest.raises(genai_errors.ServerError):
            await model.generate("hi")
        assert len(generation_requests(provider_sim)) == 1


class TestGeminiCachedModel:
    async def test_prepare_creates_a_cache_on_the_server(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """``prepare()`` creates one cache, listed with the model, the tags and the TTL."""
        client = gemini_sdk_client(provider_sim)
        model = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v1"})
        await model.prepare()
        await model.prepare()
        caches = await listed_caches(client)
        assert [cache.name for cache in caches] == [model.cache_name]
        assert caches[0].model == f"models/{GEMINI_MODEL}"
        assert caches[0].display_name == 'abl-tags:{"doc":"v1"}'
        assert caches[0].expire_time is not None
        assert caches[0].create_time is not None
        lifetime = caches[0].expire_time - caches[0].create_time
        assert lifetime.total_seconds() == pytest.approx(3600, abs=1)
        assert cache_creations(provider_sim) == 1

    async def test_same_tags_reuse_and_other_tags_create(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """A second model with the same tags reuses the cache; other tags get their own."""
        client = gemini_sdk_client(provider_sim)
        first = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v1"})
        await first.prepare()
        same = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v1"})
        await same.prepare()
        assert same.cache_name == first.cache_name
        assert cache_creations(provider_sim) == 1

        other = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v2"})
        await other.prepare()
        assert other.cache_name not in (None, first.cache_name)
        assert cache_creations(provider_sim) == 2
        assert {cache.name for cache in await listed_caches(client)} == {
            first.cache_name,
            other.cache_name,
        }

    async def test_generate_uses_the_cache_and_reports_cached_tokens(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """Every call names the cache; the cached tokens are counted as cached input."""
        seen: list[ProviderRequest] = []
        provider_sim.reply_hook = lambda request: seen.append(request)  # type: ignore[func-returns-value]
        client = gemini_sdk_client(provider_sim)
        model = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT)
        await model.prepare()
        responses = await asyncio.gather(*(model.generate(f"q{i}") for i in range(3)))
        assert [request.cached_content for request in seen] == [model.cache_name] * 3
        cached = (await listed_caches(client))[0].usage_metadata.total_token_count
        assert cached > 0
        for response in responses:
            assert response.cached_input_tokens == cached
            assert response.input_tokens > cached

    async def test_renewal_near_expiry_creates_one_replacement(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """Concurrent calls on a cache inside the renewal buffer create exactly one new cache.

        The cache is aged on both sides instead of waiting: the server is told it has 200 s
        left, and the model that it was created 3400 s ago (TTL 3600 s, buffer 300 s).
        """
        seen: list[ProviderRequest] = []
        provider_sim.reply_hook = lambda request: seen.append(request)  # type: ignore[func-returns-value]
        client = gemini_sdk_client(provider_sim)
        model = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v1"})
        await model.prepare()
        old_name = model.cache_name
        assert old_name is not None
        await client.aio.caches.update(
            name=old_name, config=genai_types.UpdateCachedContentConfig(ttl="200s")
        )
        assert model._cache_created_at is not None
        model._cache_created_at -= 3400

        await asyncio.gather(*(model.generate(f"q{i}") for i in range(8)))

        assert cache_creations(provider_sim) == 2
        new_name = model.cache_name
        assert new_name not in (None, old_name)
        assert [request.cached_content for request in seen] == [new_name] * 8
        assert not model._is_cache_expired()

    async def test_listed_cache_inside_the_buffer_is_not_reused(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """A tagged cache the server says expires within the buffer is replaced, not adopted."""
        client = gemini_sdk_client(provider_sim)
        first = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v1"})
        await first.prepare()
        assert first.cache_name is not None
        await client.aio.caches.update(
            name=first.cache_name, config=genai_types.UpdateCachedContentConfig(ttl="120s")
        )
        second = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v1"})
        await second.prepare()
        assert second.cache_name not in (None, first.cache_name)
        assert cache_creations(provider_sim) == 2

    async def test_delete_cache_deletes_it_on_the_server(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """``delete_cache()`` removes the cache at the provider; the next call makes another."""
        client = gemini_sdk_client(provider_sim)
        model = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT)
        await model.prepare()
        name = model.cache_name
        assert name is not None
        await model.delete_cache()
        assert model.cache_name is None
        assert await listed_caches(client) == []
        with pytest.raises(genai_errors.ClientError):
            await client.aio.caches.get(name=name)
        await model.generate("again")
        assert model.cache_name not in (None, name)
        assert cache_creations(provider_sim) == 2

    async def test_batch_prepares_once_and_keeps_the_cache(
        self, provider_sim: ProviderSimulator, gemini_sdk_client: GeminiClientFactory
    ) -> None:
        """A batch creates one cache for all items and leaves it for later runs."""
        seen: list[ProviderRequest] = []
        provider_sim.reply_hook = lambda request: seen.append(request)  # type: ignore[func-returns-value]
        client = gemini_sdk_client(provider_sim)
        model = GeminiCachedModel(GEMINI_MODEL, client, DOCUMENT, cache_tags={"doc": "v1"})
        result = await run_batch(GeminiStrategy(model, text_of), [f"q{i}" for i in range(10)])
        assert result.succeeded == 10
        assert cache_creations(provider_sim) == 1
        assert {request.cached_content for request in seen} == {model.cache_name}
        assert result.total_cached_tokens > 0
        assert [cache.name for cache in await listed_caches(client)] == [model.cache_name]
