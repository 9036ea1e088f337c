"""The Gemini generateContent and cachedContents wire formats, driven by google-genai."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest
from google import genai
from google.genai import errors, types

from async_batch_llm.testing.simulator import ProviderSimulator
from conftest import AIOHTTP_SUBCLASS_WARNING, ManualClock, StartSimulator

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

GenaiFactory = Callable[..., genai.Client]
TRANSPORTS = pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])


class Recipe(pydantic.BaseModel):
    title: str
    servings: int = pydantic.Field(ge=2)
    steps: list[str]
    difficulty: str = pydantic.Field(json_schema_extra={"enum": ["easy", "hard"]})


def detail(error: errors.APIError, type_suffix: str) -> dict[str, Any]:
    """The ``error.details`` entry of a Google error body whose ``@type`` ends with the suffix."""
    details = error.details["error"]["details"]
    matches = [d for d in details if d["@type"].endswith(type_suffix)]
    assert len(matches) == 1, details
    found: dict[str, Any] = matches[0]
    return found


@TRANSPORTS
async def test_text_reply_with_usage_safety_and_model_version(
    sim: ProviderSimulator, genai_client: GenaiFactory, transport: str
) -> None:
    """A plain request parses into text, STOP, NEGLIGIBLE safety ratings and usage metadata."""
    client = genai_client(sim, transport=transport)
    response = await client.aio.models.generate_content(
        model="gemini-2.0-flash",
        contents="hello there",
        config=types.GenerateContentConfig(system_instruction="be brief"),
    )
    assert response.text == "Echo: hello there"
    candidate = response.candidates[0] if response.candidates else None
    assert candidate is not None
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.safety_ratings
    assert {rating.probability for rating in candidate.safety_ratings} == {
        types.HarmProbability.NEGLIGIBLE
    }
    usage = response.usage_metadata
    assert usage is not None
    # "hello there" + "be brief" = 19 characters, about 4 per token.
    assert usage.prompt_token_count == 5
    assert usage.candidates_token_count == 5
    assert usage.total_token_count == 10
    assert usage.cached_content_token_count is None
    assert response.model_version == "gemini-2.0-flash"
    # google-genai 3 calls the v1 API by default, google-genai 2 v1beta.
    path = sim.stats.recent[-1].path
    assert path in {f"/{api}/models/gemini-2.0-flash:generateContent" for api in ("v1", "v1beta")}


async def test_success_sends_no_rate_limit_headers(
    start_simulator: StartSimulator, genai_client: GenaiFactory
) -> None:
    """Like the real API, Gemini successes carry no rate-limit headers."""
    sim = await start_simulator(rpm=10, tpm=1000)
    response = await genai_client(sim).aio.models.generate_content(
        model="gemini-2.0-flash", contents="hi"
    )
    assert response.sdk_http_response is not None
    headers = {name.lower() for name in response.sdk_http_response.headers or {}}
    assert not [name for name in headers if "ratelimit" in name or "retry" in name]


async def test_response_schema_returns_parsed_structured_output(
    sim: ProviderSimulator, genai_client: GenaiFactory
) -> None:
    """``response_schema`` (Gemini's upper-case schema) gets JSON the SDK parses into the model."""
    response = await genai_client(sim).aio.models.generate_content(
        model="gemini-2.0-flash",
        contents="a recipe",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=Recipe
        ),
    )
    assert isinstance(response.parsed, Recipe)
    assert response.parsed.servings >= 2
    assert response.parsed.difficulty == "easy"


async def test_response_json_schema_returns_valid_json(
    sim: ProviderSimulator, genai_client: GenaiFactory
) -> None:
    """``response_json_schema`` (plain JSON Schema with $defs) gets JSON valid for it."""

    class Book(pydantic.BaseModel):
        recipes: list[Recipe] = pydantic.Field(min_length=2)

    response = await genai_client(sim).aio.models.generate_content(
        model="gemini-2.0-flash",
        contents="a book",
        config=types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema=Book.model_json_schema(),
        ),
    )
    assert response.text is not None
    assert len(Book.model_validate_json(response.text).recipes) == 2


async def test_function_calling_mode_any_returns_function_call(
    sim: ProviderSimulator, genai_client: GenaiFactory
) -> None:
    """Mode ANY with an allowed function answers with a functionCall valid for its schema."""
    declaration = types.FunctionDeclaration(
        name="save_recipe", parameters_json_schema=Recipe.model_json_schema()
    )
    response = await genai_client(sim).aio.models.generate_content(
        model="gemini-2.0-flash",
        contents="save one",
        config=types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[declaration])],
            tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode=types.FunctionCallingConfigMode.ANY,
                    allowed_function_names=["save_recipe"],
                )
            ),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        ),
    )
    calls = response.function_calls
    assert calls is not None
    assert calls[0].name == "save_recipe"
    assert Recipe.model_validate(calls[0].args).servings == 2


@TRANSPORTS
async def test_rpm_429_carries_retry_info_and_clears_after_the_delay(
    start_simulator: StartSimulator,
    genai_client: GenaiFactory,
    clock: ManualClock,
    transport: str,
) -> None:
    """Over RPM: 429 RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo; fine after the delay."""
    sim = await start_simulator(rpm=4)
    client = genai_client(sim, transport=transport)
    for _ in range(4):
        await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")

    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")

    error = caught.value
    assert error.code == 429
    assert error.status == "RESOURCE_EXHAUSTED"
    assert error.message is not None
    assert "Please retry in 15.000s" in error.message
    assert detail(error, "google.rpc.RetryInfo") == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "15s",
    }
    violation = detail(error, "google.rpc.QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaDimensions"]["model"] == "gemini-2.0-flash"
    assert violation["quotaValue"] == "4"
    # The SDK's error keeps its transport's response (aiohttp or httpx2) with the headers.
    assert type(error.response).__module__.startswith(transport)
    assert "retry-after" not in error.response.headers

    clock.advance(15)
    response = await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert response.text == "Echo: hi"


async def test_compressed_window_gives_fractional_retry_delay(
    start_simulator: StartSimulator, genai_client: GenaiFactory
) -> None:
    """With a short window the RetryInfo delay keeps its fraction ("0.5s")."""
    sim = await start_simulator(rpm=2, window_seconds=1.0)
    client = genai_client(sim)
    for _ in range(2):
        await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert detail(caught.value, "RetryInfo")["retryDelay"] == "0.5s"


async def test_tpm_429_names_the_token_quota(
    start_simulator: StartSimulator, genai_client: GenaiFactory
) -> None:
    """A request over the TPM budget is refused with the input-token quota id."""
    sim = await start_simulator(tpm=60)
    client = genai_client(sim)
    config = types.GenerateContentConfig(max_output_tokens=25)
    for _ in range(2):  # 1 prompt + 25 reserved tokens each
        await client.aio.models.generate_content(model="m", contents="hi", config=config)
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model="m", contents="hi", config=config)
    violation = detail(caught.value, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateContentPaidTierInputTokensPerModelPerMinute"
    # 8 tokens left, 26 needed, 1 token per second.
    assert detail(caught.value, "RetryInfo")["retryDelay"] == "18s"


async def test_exhausted_daily_quota_names_a_per_day_quota_without_retry_info(
    start_simulator: StartSimulator, genai_client: GenaiFactory
) -> None:
    """After the daily quota: 429 RESOURCE_EXHAUSTED whose quotaId is per day, no RetryInfo."""
    sim = await start_simulator(daily_request_quota=1)
    client = genai_client(sim)
    await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    violation = detail(caught.value, "QuotaFailure")["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel"
    types_sent = [d["@type"] for d in caught.value.details["error"]["details"]]
    assert not [t for t in types_sent if t.endswith("RetryInfo")]


@pytest.mark.parametrize(("status", "error_status"), [(500, "INTERNAL"), (503, "UNAVAILABLE")])
async def test_injected_server_errors_use_google_status_names(
    sim: ProviderSimulator, genai_client: GenaiFactory, status: int, error_status: str
) -> None:
    """``fail_next`` answers 5xx as ServerError with Google's status name."""
    sim.fail_next(status=status, provider="gemini")
    with pytest.raises(errors.ServerError) as caught:
        await genai_client(sim).aio.models.generate_content(model="m", contents="hi")
    assert caught.value.code == status
    assert caught.value.status == error_status


async def test_api_key_in_query_string_identifies_the_caller(
    start_simulator: StartSimulator,
) -> None:
    """``?key=`` authenticates like ``x-goog-api-key``."""
    import httpx2

    sim = await start_simulator()
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{sim.base_url}/v1beta/models/gemini-pro:generateContent?key=query-key",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    assert response.status_code == 200
    assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == "Echo: hi"
    assert sim.stats.by_key == {"query-key": 1}


class TestCachedContents:
    """``client.aio.caches`` create, get, list (paged), update and delete."""

    async def test_create_then_get_returns_the_stored_resource(
        self, sim: ProviderSimulator, genai_client: GenaiFactory, wall_clock: ManualClock
    ) -> None:
        """Create stores name, model, display name, times from the TTL and the token count."""
        client = genai_client(sim)
        created = await client.aio.caches.create(
            model="gemini-2.0-flash",
            config=types.CreateCachedContentConfig(
                contents=["x" * 400], system_instruction="rules", display_name="doc", ttl="300s"
            ),
        )
        assert created.name is not None
        assert created.name.startswith("cachedContents/")
        assert created.model == "models/gemini-2.0-flash"
        assert created.display_name == "doc"
        assert created.create_time == datetime.fromtimestamp(wall_clock.now, tz=UTC)
        assert created.expire_time == datetime.fromtimestamp(wall_clock.now + 300, tz=UTC)
        assert created.usage_metadata is not None
        assert created.usage_metadata.total_token_count == 102  # 405 characters

        fetched = await client.aio.caches.get(name=created.name)
        assert fetched == created

    async def test_generate_with_cached_content_reports_cached_tokens(
        self, sim: ProviderSimulator, genai_client: GenaiFactory
    ) -> None:
        """A request naming a cache counts its tokens as cached prompt tokens."""
        client = genai_client(sim)
        cache = await client.aio.caches.create(
            model="gemini-2.0-flash",
            config=types.CreateCachedContentConfig(contents=["y" * 200]),
        )
        response = await client.aio.models.generate_content(
            model="gemini-2.0-flash",
            contents="question",
            config=types.GenerateContentConfig(cached_content=cache.name),
        )
        usage = response.usage_metadata
        assert usage is not None
        assert usage.cached_content_token_count == 50
        assert usage.prompt_token_count == 52

    async def test_list_pages_through_every_cache(
        self, sim: ProviderSimulator, genai_client: GenaiFactory
    ) -> None:
        """``list`` returns pages of page_size with nextPageToken until all are seen."""
        client = genai_client(sim)
        names = []
        for index in range(5):
            cache = await client.aio.caches.create(
                model="gemini-2.0-flash",
                config=types.CreateCachedContentConfig(
                    contents=["c"], display_name=f"cache-{index}"
                ),
            )
            names.append(cache.name)
        pager = await client.aio.caches.list(config=types.ListCachedContentsConfig(page_size=2))
        assert len(pager.page) == 2
        listed = [cache.name async for cache in pager]
        assert listed == names
        list_calls = [r for r in sim.stats.recent if r.method == "GET"]
        assert len(list_calls) == 3

    async def test_update_moves_expiry_and_delete_removes(
        self, sim: ProviderSimulator, genai_client: GenaiFactory, wall_clock: ManualClock
    ) -> None:
        """``update`` with a new TTL moves expireTime; after ``delete`` get is refused."""
        client = genai_client(sim)
        cache = await client.aio.caches.create(
            model="gemini-2.0-flash",
            config=types.CreateCachedContentConfig(contents=["c"], ttl="60s"),
        )
        assert cache.name is not None
        wall_clock.advance(30)
        updated = await client.aio.caches.update(
            name=cache.name, config=types.UpdateCachedContentConfig(ttl="600s")
        )
        assert updated.expire_time == datetime.fromtimestamp(wall_clock.now + 600, tz=UTC)

        await client.aio.caches.delete(name=cache.name)
        with pytest.raises(errors.ClientError, match="CachedContent not found") as caught:
            await client.aio.caches.get(name=cache.name)
        assert caught.value.code == 403

    async def test_expired_cache_is_gone_for_get_and_generate(
        self, sim: ProviderSimulator, genai_client: GenaiFactory, wall_clock: ManualClock
    ) -> None:
        """Once the wall clock passes expireTime the cache is no longer usable."""
        client = genai_client(sim)
        cache = await client.aio.caches.create(
            model="gemini-2.0-flash",
            config=types.CreateCachedContentConfig(contents=["c"], ttl="60s"),
        )
        assert cache.name is not None
        wall_clock.advance(60)
        with pytest.raises(errors.ClientError, match="CachedContent not found"):
            await client.aio.caches.get(name=cache.name)
        with pytest.raises(errors.ClientError, match="CachedContent not found"):
            await client.aio.models.generate_content(
                model="gemini-2.0-flash",
                contents="q",
                config=types.GenerateContentConfig(cached_content=cache.name),
            )
        pager = await client.aio.caches.list()
        assert [c async for c in pager] == []


@TRANSPORTS
async def test_streamed_generation_yields_the_reply(
    sim: ProviderSimulator, genai_client: GenaiFactory, transport: str
) -> None:
    """``generate_content_stream`` (``:streamGenerateContent?alt=sse``) yields the reply."""
    client = genai_client(sim, transport=transport)
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.0-flash", contents="hello there"
        )
    ]
    assert "".join(chunk.text or "" for chunk in chunks) == "Echo: hello there"
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata.candidates_token_count == 5
