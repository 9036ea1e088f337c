"""GeminiModel and GeminiCachedModel against fakes of google-genai's ``client.aio`` surface.

A few tests use a real ``google.genai.Client`` over an in-process ``httpx2.MockTransport``
(``httpx`` with google-genai 2) to check what the SDK actually sends (request bodies, number
of attempts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from async_batch_llm import LLMModel, LLMResponse, ManagedLLMModel, models
from async_batch_llm._internal.retry_hints import retry_after_seconds
from async_batch_llm.models import (
    _TAG_DISPLAY_NAME_PREFIX,
    GeminiCachedModel,
    GeminiModel,
    _decode_tags_from_display_name,
    _encode_tags_to_display_name,
    _extract_metadata,
    _extract_tokens,
)

genai = pytest.importorskip("google.genai")
# The httpx package the installed google-genai sends with (httpx2 from google-genai 3).
httpx2 = models._genai_httpx(genai)
from google.genai import errors as genai_errors  # noqa: E402
from google.genai import types as genai_types  # noqa: E402

MODEL = "gemini-test"
LOGGER = "async_batch_llm.models"


# --- fakes -------------------------------------------------------------------------------


def make_response(
    text: str | None = "hello",
    *,
    prompt: int = 100,
    candidates: int = 50,
    total: int = 150,
    cached: int | None = None,
    finish_reason: str = "STOP",
    safety: list[dict[str, str]] | None = None,
) -> genai_types.GenerateContentResponse:
    """A real google-genai response object, as the SDK parses it from JSON."""
    candidate: dict[str, Any] = {"finishReason": finish_reason}
    if text is not None:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    if safety is not None:
        candidate["safetyRatings"] = safety
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": total,
    }
    if cached is not None:
        usage["cachedContentTokenCount"] = cached
    return genai_types.GenerateContentResponse.model_validate(
        {"candidates": [candidate], "usageMetadata": usage}
    )


class FakeModels:
    """``client.aio.models``: records ``generate_content`` calls, returns scripted responses."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.response: Any = make_response()
        self.error: Exception | None = None

    async def generate_content(self, *, model: str, contents: Any, config: Any) -> Any:
        self.calls.append({"model": model, "contents": contents, "config": config})
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return self.response


class FakePager:
    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        for item in self._items:
            await asyncio.sleep(0)
            yield item


class FakeCaches:
    """``client.aio.caches``: an in-memory cache store with call records."""

    def __init__(self) -> None:
        self.listed: list[Any] = []
        self.list_calls = 0
        self.list_error: Exception | None = None
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.delete_error: Exception | None = None

    async def list(self) -> FakePager:
        self.list_calls += 1
        await asyncio.sleep(0)
        if self.list_error is not None:
            raise self.list_error
        return FakePager(list(self.listed))

    async def create(self, *, model: str, config: Any) -> Any:
        self.created.append({"model": model, "config": config})
        await asyncio.sleep(0)
        return SimpleNamespace(
            name=f"cachedContents/new-{len(self.created)}",
            model=f"models/{model}",
            display_name=config.display_name,
            create_time=datetime.now(UTC),
            expire_time=None,
        )

    async def delete(self, *, name: str) -> None:
        self.deleted.append(name)
        await asyncio.sleep(0)
        if self.delete_error is not None:
            raise self.delete_error


class FakeClient:
    def __init__(self) -> None:
        self.models = FakeModels()
        self.caches = FakeCaches()
        self.aio = SimpleNamespace(models=self.models, caches=self.caches)


def listed_cache(
    name: str = "cachedContents/old",
    *,
    model: str = f"models/{MODEL}",
    display_name: str | None = None,
    create_time: datetime | None = None,
    expire_time: datetime | None = None,
) -> SimpleNamespace:
    return SimpleNamespace(
        name=name,
        model=model,
        display_name=display_name,
        create_time=create_time,
        expire_time=expire_time,
    )


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def from_now(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


def cached_model(client: FakeClient, **kwargs: Any) -> GeminiCachedModel:
    return GeminiCachedModel(MODEL, client, [], **kwargs)  # type: ignore[arg-type]


# --- real SDK over a mock transport ------------------------------------------------------


class Recorder:
    """An ``httpx2.MockTransport`` handler that answers from a script and records requests."""

    def __init__(self, *responses: Any) -> None:
        self.requests: list[Any] = []
        self._responses = list(responses)

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        reply = self._responses.pop(0) if len(self._responses) > 1 else self._responses[0]
        return reply(request) if callable(reply) else reply

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content or b"{}") for request in self.requests]


def ok_reply(text: str = "hello") -> Any:
    return httpx2.Response(
        200,
        json={
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
            ],
            "usageMetadata": {
                "promptTokenCount": 3,
                "candidatesTokenCount": 2,
                "totalTokenCount": 5,
            },
        },
    )


def unavailable_reply() -> Any:
    return httpx2.Response(
        503, json={"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    )


def sdk_client(recorder: Recorder, *, client_retries: int | None = 3) -> Any:
    """A real ``genai.Client`` whose HTTP goes to ``recorder``; SDK retries without delay."""
    retry_options = (
        None
        if client_retries is None
        else genai_types.HttpRetryOptions(
            attempts=client_retries, initial_delay=0.0, max_delay=0.0, jitter=0.0
        )
    )
    return genai.Client(
        api_key="test-key",
        http_options=genai_types.HttpOptions(
            base_url="http://gemini.test",
            retry_options=retry_options,
            async_client_args={"transport": httpx2.MockTransport(recorder)},
        ),
    )


# --- tags ---------------------------------------------------------------------------------


class TestTagEncoding:
    def test_prefix(self) -> None:
        """Tagged display names start with ``abl-tags:``."""
        assert _TAG_DISPLAY_NAME_PREFIX == "abl-tags:"

    def test_encoding_is_compact_sorted_json(self) -> None:
        """Tags encode as prefix + compact JSON with sorted keys."""
        assert _encode_tags_to_display_name({"prompt_version": "v1"}) == (
            'abl-tags:{"prompt_version":"v1"}'
        )

    def test_encoding_ignores_key_order(self) -> None:
        """The same tags in another order give the same display name."""
        first = _encode_tags_to_display_name({"b": "2", "a": "1"})
        second = _encode_tags_to_display_name({"a": "1", "b": "2"})
        assert first == second == 'abl-tags:{"a":"1","b":"2"}'

    def test_round_trip(self) -> None:
        """Decoding an encoded display name gives the tags back."""
        tags = {"project": "x", "version": "3"}
        assert _decode_tags_from_display_name(_encode_tags_to_display_name(tags)) == tags

    @pytest.mark.parametrize(
        "display_name",
        [None, "", "my cache", 'other:{"a":"1"}', "abl-tags:{not json", 'abl-tags:["a"]'],
    )
    def test_decode_gives_none_without_tags(self, display_name: str | None) -> None:
        """Empty, unprefixed, malformed or non-object display names hold no tags."""
        assert _decode_tags_from_display_name(display_name) is None


# --- token and metadata extraction --------------------------------------------------------


class TestExtractTokens:
    def test_reads_the_four_counts(self) -> None:
        """Prompt, candidates, total and cached counts come from ``usage_metadata``."""
        response = make_response(prompt=120, candidates=30, total=150, cached=100)
        assert _extract_tokens(response) == (120, 30, 150, 100)

    def test_missing_counts_are_zero(self) -> None:
        """Counts the response leaves out (``None``) are 0."""
        response = SimpleNamespace(
            usage_metadata=SimpleNamespace(prompt_token_count=7, total_token_count=None)
        )
        assert _extract_tokens(response) == (7, 0, 0, 0)

    def test_non_integer_counts_are_zero(self) -> None:
        """Attributes a test double invents are not counted as tokens."""
        from unittest.mock import Mock

        response = Mock()
        response.usage_metadata = Mock(prompt_token_count=5)
        assert _extract_tokens(response) == (5, 0, 0, 0)

    def test_no_usage_metadata_logs_debug(self, caplog: pytest.LogCaptureFixture) -> None:
        """Without ``usage_metadata`` all counts are 0 and a DEBUG line names it."""
        caplog.set_level(logging.DEBUG, logger=LOGGER)
        assert _extract_tokens(SimpleNamespace()) == (0, 0, 0, 0)
        records = [r for r in caplog.records if r.name == LOGGER]
        assert records
        assert records[0].levelno == logging.DEBUG
        assert "usage_metadata" in records[0].getMessage()


class TestExtractMetadata:
    def test_safety_ratings_and_finish_reason(self) -> None:
        """The first candidate's ratings map category to probability; the finish reason is kept."""
        response = make_response(
            finish_reason="SAFETY",
            safety=[{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}],
        )
        metadata = _extract_metadata(response)
        assert metadata is not None
        category = genai_types.HarmCategory.HARM_CATEGORY_HARASSMENT
        assert metadata["safety_ratings"] == {str(category): str(genai_types.HarmProbability.HIGH)}
        assert metadata["finish_reason"] == str(genai_types.FinishReason.SAFETY)

    def test_missing_rating_attributes_are_unknown(self) -> None:
        """A rating without category or probability is recorded as ``UNKNOWN``."""
        candidate = SimpleNamespace(safety_ratings=[SimpleNamespace()], finish_reason=None)
        metadata = _extract_metadata(SimpleNamespace(candidates=[candidate]))
        assert metadata == {"safety_ratings": {"UNKNOWN": "UNKNOWN"}}

    def test_nothing_to_report_gives_none(self) -> None:
        """No candidates (or none with ratings or a finish reason) gives ``None``."""
        assert _extract_metadata(SimpleNamespace(candidates=[])) is None
        assert _extract_metadata(SimpleNamespace(candidates=None)) is None

    def test_failure_reading_candidates_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """An error while reading the response is logged at WARNING and gives ``None``."""

        class Broken:
            @property
            def candidates(self) -> Any:
                raise RuntimeError("boom")

        caplog.set_level(logging.WARNING, logger=LOGGER)
        assert _extract_metadata(Broken()) is None
        warning = next(r for r in caplog.records if r.name == LOGGER)
        assert warning.levelno == logging.WARNING
        assert warning.exc_info is not None

    def test_keys_read_before_a_failure_survive(self, caplog: pytest.LogCaptureFixture) -> None:
        """Ratings read before a failing finish reason are still returned."""

        class Candidate:
            def __init__(self) -> None:
                self.safety_ratings = [SimpleNamespace(category="C", probability="LOW")]

            @property
            def finish_reason(self) -> Any:
                raise RuntimeError("boom")

        caplog.set_level(logging.WARNING, logger=LOGGER)
        metadata = _extract_metadata(SimpleNamespace(candidates=[Candidate()]))
        assert metadata == {"safety_ratings": {"C": "LOW"}}
        assert any(r.levelno == logging.WARNING for r in caplog.records)

    def test_failure_inside_the_ratings_loses_all_ratings(self) -> None:
        """A rating that fails part-way through the loop drops the whole ratings mapping."""

        class BadRating:
            @property
            def category(self) -> Any:
                raise RuntimeError("boom")

        candidate = SimpleNamespace(
            safety_ratings=[SimpleNamespace(category="A", probability="LOW"), BadRating()],
            finish_reason="STOP",
        )
        assert _extract_metadata(SimpleNamespace(candidates=[candidate])) is None


# --- GeminiModel ----------------------------------------------------------------------------


class TestGeminiModelConstruction:
    def test_requires_google_genai(
        self, client: FakeClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without google-genai (``models.genai`` is None) construction raises ImportError."""
        monkeypatch.setattr(models, "genai", None)
        with pytest.raises(ImportError, match="google-genai is required"):
            GeminiModel(MODEL, client)  # type: ignore[arg-type]

    def test_module_exposes_genai_and_content(self) -> None:
        """``models.genai`` is the google.genai module and ``models.Content`` its Content type."""
        assert models.genai is genai
        assert models.Content is genai_types.Content

    def test_private_state(self, client: FakeClient) -> None:
        """The constructor keeps its arguments in the documented private attributes."""
        safety = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
        model = GeminiModel(MODEL, client, safety_settings=safety, system_instruction="Be brief")  # type: ignore[arg-type]
        assert model._model == MODEL
        assert model._client is client
        assert model._safety_settings is safety
        assert model._default_system_instruction == "Be brief"

    def test_is_an_llm_model_but_not_managed(self, client: FakeClient) -> None:
        """GeminiModel satisfies LLMModel and has no prepare/cleanup."""
        model = GeminiModel(MODEL, client)  # type: ignore[arg-type]
        assert isinstance(model, LLMModel)
        assert not isinstance(model, ManagedLLMModel)


class TestGeminiModelGenerate:
    async def test_call_shape(self, client: FakeClient) -> None:
        """``generate_content`` gets model, contents and a plain config dict, as keywords."""
        model = GeminiModel(MODEL, client)  # type: ignore[arg-type]
        await model.generate("What is 2+2?", temperature=0.3)
        assert client.models.calls == [
            {"model": MODEL, "contents": "What is 2+2?", "config": {"temperature": 0.3}}
        ]

    async def test_default_system_instruction_and_safety_settings(self, client: FakeClient) -> None:
        """The default system instruction and the safety settings go with every call."""
        safety = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
        model = GeminiModel(MODEL, client, safety_settings=safety, system_instruction="Be brief")  # type: ignore[arg-type]
        await model.generate("hi")
        assert client.models.calls[0]["config"] == {
            "temperature": 0.0,
            "system_instruction": "Be brief",
            "safety_settings": safety,
        }

    async def test_per_call_system_instruction_wins(self, client: FakeClient) -> None:
        """A system instruction passed to ``generate`` replaces the default."""
        model = GeminiModel(MODEL, client, system_instruction="default")  # type: ignore[arg-type]
        await model.generate("hi", system_instruction="override")
        assert client.models.calls[0]["config"]["system_instruction"] == "override"

    async def test_caller_config_is_applied_last(self, client: FakeClient) -> None:
        """Entries of ``config`` are added and override the model's own keys."""
        model = GeminiModel(MODEL, client)  # type: ignore[arg-type]
        await model.generate("hi", temperature=0.1, config={"temperature": 0.9, "top_k": 3})
        assert client.models.calls[0]["config"] == {"temperature": 0.9, "top_k": 3}

    async def test_list_prompt_is_passed_through(self, client: FakeClient) -> None:
        """A list of contents is sent unchanged."""
        contents = [genai_types.Content(role="user", parts=[genai_types.Part(text="hi")])]
        model = GeminiModel(MODEL, client)  # type: ignore[arg-type]
        await model.generate(contents)
        assert client.models.calls[0]["contents"] is contents

    async def test_response(self, client: FakeClient) -> None:
        """The response carries text, the four counts, metadata and the raw object."""
        client.models.response = make_response("four", prompt=10, candidates=2, total=12, cached=4)
        model = GeminiModel(MODEL, client)  # type: ignore[arg-type]
        response = await model.generate("What is 2+2?")
        assert isinstance(response, LLMResponse)
        assert (response.text, response.input_tokens, response.output_tokens) == ("four", 10, 2)
        assert (response.total_tokens, response.cached_input_tokens) == (12, 4)
        assert response.metadata == {"finish_reason": str(genai_types.FinishReason.STOP)}
        assert response.raw is client.models.response

    async def test_empty_response_raises_with_safety_ratings(self, client: FakeClient) -> None:
        """A response without text raises ValueError naming the safety ratings, with its tokens."""
        client.models.response = make_response(
            None,
            prompt=40,
            candidates=0,
            total=40,
            finish_reason="SAFETY",
            safety=[{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}],
        )
        model = GeminiModel(MODEL, client)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="Empty response from model") as caught:
            await model.generate("hi")
        assert "HARM_CATEGORY_DANGEROUS_CONTENT" in str(caught.value)
        assert caught.value.__dict__["_failed_token_usage"] == {
            "input_tokens": 40,
            "output_tokens": 0,
            "total_tokens": 40,
        }

    async def test_errors_propagate_unchanged(self, client: FakeClient) -> None:
        """An SDK error from ``generate_content`` reaches the caller as is."""
        error = genai_errors.ClientError(
            429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}
        )
        client.models.error = error
        model = GeminiModel(MODEL, client)  # type: ignore[arg-type]
        with pytest.raises(genai_errors.ClientError) as caught:
            await model.generate("hi")
        assert caught.value is error


class TestHttpxOfTheSDK:
    """`gemini_client` hands google-genai a transport of the httpx package it sends with:
    pydantic-ai may install google-genai 2 (on ``httpx``) where the ``gemini`` extra asks
    for 3 (on ``httpx2``); the other package's transport fails deep inside the SDK."""

    @pytest.mark.parametrize(
        ("version", "package"),
        [("2.34.0", "httpx"), ("1.9", "httpx"), ("3.0.0", "httpx2"), ("3.6.1", "httpx2")],
    )
    def test_package_follows_the_major_version(
        self, monkeypatch: pytest.MonkeyPatch, version: str, package: str
    ) -> None:
        asked: list[str] = []
        monkeypatch.setattr(models.importlib, "import_module", lambda name: asked.append(name))
        models._genai_httpx(SimpleNamespace(__version__=version))  # type: ignore[arg-type]
        assert asked == [package]

    async def test_installed_sdk_sends_through_the_client_it_gets(self) -> None:
        # A request that reaches the transport proves the SDK took it (a transport of the
        # other package fails an isinstance assertion first); nothing listens on port 9.
        client = models.gemini_client("gm-test", base_url="http://127.0.0.1:9")
        try:
            with pytest.raises(httpx2.ConnectError):
                await client.aio.models.generate_content(model=MODEL, contents="hi")
        finally:
            await client.aio.aclose()


class TestGeminiModelOverTheSDK:
    async def test_request_body(self) -> None:
        """The real SDK accepts the config dict: temperature, system instruction, safety."""
        recorder = Recorder(ok_reply("hi there"))
        safety = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
        model = GeminiModel(
            MODEL, sdk_client(recorder), safety_settings=safety, system_instruction="Be brief"
        )
        response = await model.generate("hello", temperature=0.5)
        assert response.text == "hi there"
        assert (response.input_tokens, response.output_tokens, response.total_tokens) == (3, 2, 5)
        body = recorder.bodies()[0]
        assert body["generationConfig"]["temperature"] == 0.5
        assert body["systemInstruction"]["parts"][0]["text"] == "Be brief"
        assert body["safetySettings"] == [
            {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}
        ]
        assert recorder.requests[0].url.path.endswith(f"models/{MODEL}:generateContent")

    async def test_sdk_retries_are_off_by_default(self) -> None:
        """A client built to retry still sends one request: the processor owns retrying."""
        recorder = Recorder(unavailable_reply(), ok_reply())
        model = GeminiModel(MODEL, sdk_client(recorder, client_retries=3))
        with pytest.raises(genai_errors.ServerError):
            await model.generate("hi")
        assert len(recorder.requests) == 1

    async def test_sdk_retries_can_be_turned_back_on(self) -> None:
        """With ``sdk_retries=True`` the client's own retry options apply."""
        recorder = Recorder(unavailable_reply(), ok_reply("recovered"))
        model = GeminiModel(MODEL, sdk_client(recorder, client_retries=3), sdk_retries=True)
        response = await model.generate("hi")
        assert response.text == "recovered"
        assert len(recorder.requests) == 2

    async def test_rate_limit_hint_is_reachable(self) -> None:
        """A 429's RetryInfo and Retry-After header reach ``retry_after_seconds``."""
        body = {
            "error": {
                "code": 429,
                "message": "Resource exhausted",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
                ],
            }
        }
        for headers, expected in (({}, 17.0), ({"retry-after": "4"}, 4.0)):
            recorder = Recorder(httpx2.Response(429, headers=headers, json=body))
            model = GeminiModel(MODEL, sdk_client(recorder))
            with pytest.raises(genai_errors.ClientError) as caught:
                await model.generate("hi")
            assert retry_after_seconds(caught.value) == expected
            assert len(recorder.requests) == 1

    async def test_caller_http_options_win(self) -> None:
        """``http_options`` in the per-call config replace the single-attempt default."""
        recorder = Recorder(unavailable_reply(), ok_reply("recovered"))
        model = GeminiModel(MODEL, sdk_client(recorder, client_retries=None))
        retry = {"attempts": 2, "initial_delay": 0.0, "max_delay": 0.0, "jitter": 0.0}
        response = await model.generate("hi", config={"http_options": {"retry_options": retry}})
        assert response.text == "recovered"
        assert len(recorder.requests) == 2


# --- GeminiCachedModel: construction ------------------------------------------------------


class TestGeminiCachedModelConstruction:
    def test_requires_google_genai(
        self, client: FakeClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without google-genai construction raises ImportError."""
        monkeypatch.setattr(models, "genai", None)
        with pytest.raises(ImportError, match="google-genai is required"):
            cached_model(client)

    @pytest.mark.parametrize(("ttl", "buffer"), [(3600, 3600), (600, 900)])
    def test_buffer_must_be_below_ttl(self, client: FakeClient, ttl: int, buffer: int) -> None:
        """A renewal buffer not below the TTL is rejected, naming both values."""
        with pytest.raises(ValueError, match="must be less than cache_ttl_seconds") as caught:
            cached_model(client, cache_ttl_seconds=ttl, cache_renewal_buffer_seconds=buffer)
        assert str(buffer) in str(caught.value)

    def test_genai_check_comes_first(
        self, client: FakeClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A missing google-genai is reported before a bad buffer."""
        monkeypatch.setattr(models, "genai", None)
        with pytest.raises(ImportError):
            cached_model(client, cache_ttl_seconds=60, cache_renewal_buffer_seconds=60)

    def test_short_ttl_warns(self, client: FakeClient) -> None:
        """A TTL from 10 to 59 seconds warns, naming ``cache_ttl_seconds`` and 60 seconds."""
        with pytest.warns(UserWarning, match="60 seconds") as record:
            cached_model(client, cache_ttl_seconds=30, cache_renewal_buffer_seconds=5)
        messages = [str(w.message) for w in record]
        assert any("cache_ttl_seconds" in m and "60 seconds" in m for m in messages)

    def test_tiny_ttl_does_not_warn_about_the_ttl(self, client: FakeClient) -> None:
        """TTLs below 10 seconds (test setups) do not warn about the TTL."""
        with pytest.warns(UserWarning, match="cache_renewal_buffer_seconds") as record:
            cached_model(client, cache_ttl_seconds=5, cache_renewal_buffer_seconds=1)
        messages = [str(w.message) for w in record]
        assert not any("cache_ttl_seconds=" in m for m in messages)
        assert any("cache_renewal_buffer_seconds" in m for m in messages)

    def test_short_buffer_warns(self, client: FakeClient) -> None:
        """A renewal buffer below 60 seconds warns, naming the parameter and 60 seconds."""
        with pytest.warns(UserWarning, match="cache_renewal_buffer_seconds") as record:
            cached_model(client, cache_renewal_buffer_seconds=30)
        assert "60 seconds" in str(record[0].message)

    def test_defaults_do_not_warn(self, client: FakeClient) -> None:
        """The default TTL and buffer raise no warning."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cached_model(client)

    def test_initial_state(self, client: FakeClient) -> None:
        """A new model holds no cache, no lock and is not prepared."""
        model = cached_model(client, cache_tags=None)
        assert model._cache is None
        assert model._cache_created_at is None
        assert model._cache_lock is None
        assert model._prepared is False
        assert model._cache_tags == {}
        assert model.cache_name is None
        assert model._client is client
        assert isinstance(model, ManagedLLMModel)


# --- GeminiCachedModel: prepare, find or create -------------------------------------------


class TestPrepare:
    async def test_creates_a_cache_when_none_is_listed(self, client: FakeClient) -> None:
        """With nothing to reuse, prepare creates a cache with the contents and TTL."""
        contents = [genai_types.Content(role="user", parts=[genai_types.Part(text="doc")])]
        model = GeminiCachedModel(MODEL, client, contents, cache_ttl_seconds=1800)  # type: ignore[arg-type]
        await model.prepare()
        assert len(client.caches.created) == 1
        call = client.caches.created[0]
        assert call["model"] == MODEL
        config = call["config"]
        assert isinstance(config, genai_types.CreateCachedContentConfig)
        assert config.contents == contents
        assert config.ttl == "1800s"
        assert config.display_name is None
        assert model._prepared is True
        assert model.cache_name == "cachedContents/new-1"

    async def test_tags_become_the_display_name(self, client: FakeClient) -> None:
        """A created cache carries the encoded tags as its display name."""
        model = cached_model(client, cache_tags={"prompt_version": "v1"})
        await model.prepare()
        config = client.caches.created[0]["config"]
        assert config.display_name == 'abl-tags:{"prompt_version":"v1"}'

    async def test_prepare_is_idempotent(self, client: FakeClient) -> None:
        """A second prepare neither lists nor creates again."""
        model = cached_model(client)
        await model.prepare()
        await model.prepare()
        assert client.caches.list_calls == 1
        assert len(client.caches.created) == 1

    async def test_concurrent_prepare_creates_one_cache(self, client: FakeClient) -> None:
        """Ten concurrent prepare calls create exactly one cache."""
        model = cached_model(client)
        await asyncio.gather(*(model.prepare() for _ in range(10)))
        assert len(client.caches.created) == 1

    async def test_reuses_a_listed_cache_of_the_model(self, client: FakeClient) -> None:
        """A live cache of the same model (full resource path) is reused, not recreated."""
        created = ago(60)
        client.caches.listed = [
            listed_cache("cachedContents/other", model="models/another-model"),
            listed_cache(
                "cachedContents/mine", model=f"projects/p/models/{MODEL}", create_time=created
            ),
        ]
        model = cached_model(client)
        await model.prepare()
        assert client.caches.created == []
        assert model.cache_name == "cachedContents/mine"
        assert model._cache_created_at == pytest.approx(created.timestamp())
        assert not model._is_cache_expired()

    async def test_cache_without_model_is_skipped(self, client: FakeClient) -> None:
        """A listed cache with no model name is never reused."""
        client.caches.listed = [listed_cache(model="", create_time=ago(1))]
        model = cached_model(client)
        await model.prepare()
        assert len(client.caches.created) == 1

    async def test_wanted_tags_must_match(self, client: FakeClient) -> None:
        """Only a cache whose tags include every wanted tag (extras allowed) is reused."""
        client.caches.listed = [
            listed_cache("cachedContents/untagged", create_time=ago(1)),
            listed_cache(
                "cachedContents/wrong",
                display_name=_encode_tags_to_display_name({"v": "2"}),
                create_time=ago(1),
            ),
            listed_cache(
                "cachedContents/right",
                display_name=_encode_tags_to_display_name({"v": "1", "extra": "x"}),
                create_time=ago(1),
            ),
        ]
        model = cached_model(client, cache_tags={"v": "1"})
        await model.prepare()
        assert model.cache_name == "cachedContents/right"
        assert client.caches.created == []

    async def test_tag_values_compare_exactly(self, client: FakeClient) -> None:
        """Tag matching is case-sensitive: ``V1`` does not match ``v1``."""
        client.caches.listed = [
            listed_cache(display_name=_encode_tags_to_display_name({"v": "V1"}), create_time=ago(1))
        ]
        model = cached_model(client, cache_tags={"v": "v1"})
        await model.prepare()
        assert len(client.caches.created) == 1

    async def test_untagged_model_accepts_a_tagged_cache(self, client: FakeClient) -> None:
        """A model without tags reuses any cache of its model."""
        client.caches.listed = [
            listed_cache(display_name=_encode_tags_to_display_name({"v": "1"}), create_time=ago(1))
        ]
        model = cached_model(client)
        await model.prepare()
        assert model.cache_name == "cachedContents/old"

    async def test_listed_cache_expiring_within_the_buffer_is_not_reused(
        self, client: FakeClient
    ) -> None:
        """A cache whose ``expire_time`` falls inside the renewal buffer is skipped."""
        client.caches.listed = [listed_cache(create_time=ago(10), expire_time=from_now(120))]
        model = cached_model(client, cache_renewal_buffer_seconds=300)
        await model.prepare()
        assert len(client.caches.created) == 1
        assert model.cache_name == "cachedContents/new-1"

    async def test_expiry_from_create_time_and_ttl(self, client: FakeClient) -> None:
        """Without ``expire_time``, creation time plus the TTL decides; an old cache is skipped."""
        client.caches.listed = [listed_cache(create_time=ago(3500))]
        model = cached_model(client, cache_ttl_seconds=3600, cache_renewal_buffer_seconds=300)
        await model.prepare()
        assert len(client.caches.created) == 1

    async def test_expire_time_beats_create_time(self, client: FakeClient) -> None:
        """A long-lived cache (expiry far off) is reused even if created long ago."""
        expires = from_now(7200)
        client.caches.listed = [listed_cache(create_time=ago(86_400), expire_time=expires)]
        model = cached_model(client, cache_ttl_seconds=3600)
        await model.prepare()
        assert client.caches.created == []
        assert model._cache_created_at == pytest.approx(expires.timestamp() - 3600)
        assert not model._is_cache_expired()

    async def test_cache_of_unknown_age_is_reused_as_due(self, client: FakeClient) -> None:
        """A listed cache with neither time is reused but counts as due for renewal."""
        client.caches.listed = [listed_cache()]
        model = cached_model(client)
        await model.prepare()
        assert client.caches.created == []
        assert model.cache_name == "cachedContents/old"
        assert model._is_cache_expired()

    async def test_listing_failure_falls_back_to_creating(
        self, client: FakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An error while listing is logged at WARNING and a cache is created instead."""
        client.caches.list_error = RuntimeError("list failed")
        caplog.set_level(logging.WARNING, logger=LOGGER)
        model = cached_model(client)
        await model.prepare()
        assert len(client.caches.created) == 1
        assert any(r.levelno == logging.WARNING and r.name == LOGGER for r in caplog.records)

    async def test_create_failure_propagates_and_leaves_model_unprepared(
        self, client: FakeClient
    ) -> None:
        """A failed create raises from prepare, and a later prepare tries again."""
        model = cached_model(client)

        async def failing_create(*, model: str, config: Any) -> Any:
            raise RuntimeError("create failed")

        original = client.caches.create
        client.caches.create = failing_create  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="create failed"):
            await model.prepare()
        assert model._prepared is False
        client.caches.create = original  # type: ignore[method-assign]
        await model.prepare()
        assert model.cache_name == "cachedContents/new-1"


# --- GeminiCachedModel: expiry and generate -----------------------------------------------


class TestIsCacheExpired:
    def test_no_cache_is_expired(self, client: FakeClient) -> None:
        """Without a cache (or its creation time) the model counts as expired."""
        model = cached_model(client)
        assert model._is_cache_expired()
        model._cache = listed_cache()
        assert model._is_cache_expired()

    def test_expiry_uses_the_renewal_buffer(self, client: FakeClient) -> None:
        """A cache is expired once at most the renewal buffer is left."""
        model = cached_model(client, cache_ttl_seconds=3600, cache_renewal_buffer_seconds=300)
        model._cache = listed_cache()
        model._cache_created_at = time.time() - 3000
        assert not model._is_cache_expired()
        model._cache_created_at = time.time() - 3301
        assert model._is_cache_expired()


class TestCachedGenerate:
    async def test_call_shape(self, client: FakeClient) -> None:
        """Calls carry the cache name and temperature, never a system instruction."""
        safety = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
        model = cached_model(client, safety_settings=safety)
        await model.prepare()
        response = await model.generate("question", temperature=0.2, config={"top_p": 0.5})
        assert client.models.calls == [
            {
                "model": MODEL,
                "contents": "question",
                "config": {
                    "cached_content": "cachedContents/new-1",
                    "temperature": 0.2,
                    "safety_settings": safety,
                    "top_p": 0.5,
                },
            }
        ]
        assert response.text == "hello"
        assert response.total_tokens == 150

    async def test_system_instruction_is_rejected(self, client: FakeClient) -> None:
        """A per-call system instruction raises ValueError before any request."""
        model = cached_model(client)
        with pytest.raises(ValueError, match="system_instruction cannot be overridden"):
            await model.generate("hi", system_instruction="nope")
        assert client.models.calls == []
        assert client.caches.list_calls == 0

    async def test_without_cache_and_auto_renew_needs_prepare(self, client: FakeClient) -> None:
        """With ``auto_renew=False`` and no cache, generate raises RuntimeError naming prepare()."""
        model = cached_model(client, auto_renew=False)
        with pytest.raises(RuntimeError, match=r"prepare\(\)"):
            await model.generate("hi")
        assert client.caches.created == []

    async def test_auto_renew_creates_a_cache_lazily(self, client: FakeClient) -> None:
        """With ``auto_renew`` generate finds or creates a cache when prepare was not called."""
        model = cached_model(client)
        await model.generate("hi")
        assert len(client.caches.created) == 1
        assert model._prepared is True
        assert client.models.calls[0]["config"]["cached_content"] == "cachedContents/new-1"

    async def test_empty_response_raises(self, client: FakeClient) -> None:
        """A response without text raises ValueError (``Empty response from model``)."""
        model = cached_model(client)
        await model.prepare()
        client.models.response = make_response(None)
        with pytest.raises(ValueError, match="Empty response from model"):
            await model.generate("hi")

    async def test_renews_a_cache_near_expiry(self, client: FakeClient) -> None:
        """A cache inside the renewal buffer is replaced before the call, which uses the new one."""
        model = cached_model(client, cache_ttl_seconds=3600, cache_renewal_buffer_seconds=300)
        await model.prepare()
        old_name = model.cache_name
        # The provider still lists the old cache; its expiry is inside the buffer.
        client.caches.listed = [
            listed_cache(old_name or "", create_time=ago(3400), expire_time=from_now(200))
        ]
        model._cache_created_at = time.time() - 3400
        await model.generate("hi")
        assert len(client.caches.created) == 2
        assert model.cache_name == "cachedContents/new-2"
        assert client.models.calls[-1]["config"]["cached_content"] == "cachedContents/new-2"

    async def test_renewal_logs_the_age(
        self, client: FakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Renewal is logged at INFO with the age of the old cache."""
        model = cached_model(client)
        await model.prepare()
        model._cache_created_at = time.time() - 3500
        caplog.set_level(logging.INFO, logger=LOGGER)
        await model.generate("hi")
        assert any("Renewing" in r.getMessage() for r in caplog.records)

    async def test_concurrent_renewal_creates_one_cache(self, client: FakeClient) -> None:
        """Ten concurrent calls on an expired cache create exactly one replacement, used by all."""
        model = cached_model(client)
        model._cache = listed_cache("cachedContents/stale")
        model._cache_created_at = time.time() - 7200
        model._prepared = True
        model._cache_lock = asyncio.Lock()
        await asyncio.gather(*(model.generate(f"q{i}") for i in range(10)))
        assert len(client.caches.created) == 1
        names = {call["config"]["cached_content"] for call in client.models.calls}
        assert names == {"cachedContents/new-1"}
        assert len(client.models.calls) == 10

    async def test_no_renewal_without_auto_renew(self, client: FakeClient) -> None:
        """With ``auto_renew=False`` an expired cache is used as is."""
        model = cached_model(client, auto_renew=False)
        model._cache = listed_cache("cachedContents/stale")
        model._cache_created_at = time.time() - 7200
        await model.generate("hi")
        assert client.caches.created == []
        assert client.models.calls[0]["config"]["cached_content"] == "cachedContents/stale"


# --- GeminiCachedModel: cleanup and delete ------------------------------------------------


class TestCleanupAndDelete:
    async def test_cleanup_keeps_the_cache(
        self, client: FakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """cleanup() never deletes; it logs that the cache is kept, and can run twice."""
        model = cached_model(client)
        await model.prepare()
        caplog.set_level(logging.INFO, logger=LOGGER)
        await model.cleanup()
        await model.cleanup()
        assert client.caches.deleted == []
        assert model.cache_name == "cachedContents/new-1"
        assert any("cachedContents/new-1" in r.getMessage() for r in caplog.records)

    async def test_delete_cache(self, client: FakeClient, caplog: pytest.LogCaptureFixture) -> None:
        """delete_cache deletes by name, forgets the cache and logs at INFO."""
        model = cached_model(client)
        await model.prepare()
        caplog.set_level(logging.INFO, logger=LOGGER)
        await model.delete_cache()
        assert client.caches.deleted == ["cachedContents/new-1"]
        assert (model._cache, model._cache_created_at, model._prepared) == (None, None, False)
        assert any("Deleted" in r.getMessage() for r in caplog.records)

    async def test_delete_without_cache_does_nothing(self, client: FakeClient) -> None:
        """Without a cache no delete request is made."""
        model = cached_model(client)
        await model.delete_cache()
        assert client.caches.deleted == []

    async def test_delete_failure_is_logged_not_raised(
        self, client: FakeClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A failed delete logs a WARNING naming the cache, with the traceback, and returns."""
        model = cached_model(client)
        await model.prepare()
        client.caches.delete_error = RuntimeError("delete failed")
        caplog.set_level(logging.WARNING, logger=LOGGER)
        await model.delete_cache()
        warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
        assert warning.name == LOGGER
        assert "cachedContents/new-1" in warning.getMessage()
        assert warning.exc_info is not None
        assert model._cache is None

    async def test_concurrent_deletes_make_one_request(self, client: FakeClient) -> None:
        """Ten concurrent delete_cache calls delete once and raise nothing."""
        model = cached_model(client)
        await model.prepare()
        await asyncio.gather(*(model.delete_cache() for _ in range(10)))
        assert client.caches.deleted == ["cachedContents/new-1"]

    async def test_delete_on_an_instance_built_with_new(self, client: FakeClient) -> None:
        """An instance made with ``__new__`` and four attributes can delete its cache."""
        model = GeminiCachedModel.__new__(GeminiCachedModel)
        model._client = client
        model._cache = listed_cache("cachedContents/raw")
        model._cache_created_at = time.time()
        model._prepared = True
        await model.delete_cache()
        assert client.caches.deleted == ["cachedContents/raw"]
        assert model._cache is None
        assert model._prepared is False

    async def test_prepare_after_delete_creates_again(self, client: FakeClient) -> None:
        """After delete_cache, prepare finds or creates a new cache."""
        model = cached_model(client)
        await model.prepare()
        await model.delete_cache()
        await model.prepare()
        assert model.cache_name == "cachedContents/new-2"


# --- GeminiCachedModel over the real SDK --------------------------------------------------


def cache_resource(name: str, *, display_name: str | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    resource: dict[str, Any] = {
        "name": name,
        "model": f"models/{MODEL}",
        "createTime": now.isoformat().replace("+00:00", "Z"),
        "expireTime": (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }
    if display_name is not None:
        resource["displayName"] = display_name
    return resource


class CacheServer:
    """Just enough of the ``cachedContents`` and ``generateContent`` endpoints."""

    def __init__(self, listed: list[dict[str, Any]] | None = None) -> None:
        self.listed = listed or []
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.generated: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        path = request.url.path
        if request.method == "GET" and path.endswith("/cachedContents"):
            return httpx2.Response(200, json={"cachedContents": self.listed})
        if request.method == "POST" and path.endswith("/cachedContents"):
            body = json.loads(request.content)
            self.created.append(body)
            return httpx2.Response(
                200,
                json=cache_resource(
                    f"cachedContents/c{len(self.created)}", display_name=body.get("displayName")
                ),
            )
        if request.method == "DELETE":
            self.deleted.append(path.split("/", 2)[-1])
            return httpx2.Response(200, json={})
        self.generated.append(json.loads(request.content))
        return ok_reply()


def client_for(handler: Callable[[Any], Any]) -> Any:
    return genai.Client(
        api_key="test-key",
        http_options=genai_types.HttpOptions(
            base_url="http://gemini.test",
            async_client_args={"transport": httpx2.MockTransport(handler)},
        ),
    )


class TestCachedModelOverTheSDK:
    async def test_create_use_and_delete(self) -> None:
        """The SDK sends the create body, the cache name on each call, and the delete."""
        server = CacheServer()
        contents = [genai_types.Content(role="user", parts=[genai_types.Part(text="doc")])]
        model = GeminiCachedModel(MODEL, client_for(server), contents, cache_tags={"v": "1"})
        await model.prepare()
        assert server.created[0]["ttl"] == "3600s"
        assert server.created[0]["displayName"] == 'abl-tags:{"v":"1"}'
        assert server.created[0]["contents"][0]["parts"][0]["text"] == "doc"
        response = await model.generate("question")
        assert response.text == "hello"
        assert server.generated[0]["cachedContent"] == "cachedContents/c1"
        assert "systemInstruction" not in server.generated[0]
        await model.delete_cache()
        assert server.deleted == ["cachedContents/c1"]

    async def test_reuse_by_tags(self) -> None:
        """A listed cache with the wanted tags is reused without a create request."""
        server = CacheServer(
            [cache_resource("cachedContents/tagged", display_name='abl-tags:{"v":"1"}')]
        )
        model = GeminiCachedModel(MODEL, client_for(server), [], cache_tags={"v": "1"})
        await model.prepare()
        assert server.created == []
        assert model.cache_name == "cachedContents/tagged"
        assert not model._is_cache_expired()
