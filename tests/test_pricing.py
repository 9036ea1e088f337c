"""async_batch_llm.pricing: token usage priced with genai-prices' bundled data.

Expected costs come from genai-prices' own `calc_price`, called here with the same numbers,
or are worked out by hand from the per-token prices genai-prices reports.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import socket
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import genai_prices.data
import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import DataSnapshot, get_snapshot, set_custom_snapshot

from async_batch_llm import pricing
from async_batch_llm.pricing import Pricer, price_data_version, price_usage

BATCH = {"processing": "batch"}
MILLION = Decimal(1_000_000)


class NetworkUsedError(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here fails if anything opens a network connection."""

    def refuse(self: socket.socket, *args: object, **kwargs: object) -> None:
        raise NetworkUsedError(f"network connection attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def genai_price(
    model_ref: str,
    provider_id: str | None,
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    *,
    batch: bool = False,
) -> Decimal:
    """genai-prices' own price for the same numbers."""
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached)
    return calc_price(
        usage, model_ref, provider_id=provider_id, price_context=BATCH if batch else None
    ).total_price


def usage_of(input_tokens: int, output_tokens: int, cached: int = 0) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "cached_input_tokens": cached,
    }


# (pydantic-ai model string, genai-prices provider id, model ref passed to calc_price)
KNOWN = [
    ("openai:gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("openai:gpt-4.1", "openai", "gpt-4.1"),
    ("anthropic:claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
    ("google-gla:gemini-2.5-flash", "google", "gemini-2.5-flash"),
    ("google-vertex:gemini-2.5-pro", "google", "gemini-2.5-pro"),
    ("groq:llama-3.3-70b-versatile", "groq", "llama-3.3-70b-versatile"),
    ("mistral:mistral-small-latest", "mistral", "mistral-small-latest"),
    ("xai:grok-4.3", "x-ai", "grok-4.3"),
    ("gateway/openai:gpt-4o", "openai", "gpt-4o"),
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
    ("gemini-2.5-flash", "google", "gemini-2.5-flash"),
]


class TestKnownModels:
    @pytest.mark.parametrize(("model", "provider_id", "ref"), KNOWN)
    @pytest.mark.parametrize(
        "counts",
        [(1_234, 567, 0), (10_000, 2_000, 3_000), (250_000, 4_000, 100_000)],
        ids=["plain", "cached", "long-prompt"],
    )
    def test_price_is_genai_prices_price(
        self, model: str, provider_id: str, ref: str, counts: tuple[int, int, int]
    ) -> None:
        """The cost is what genai-prices' calc_price gives for the same counts."""
        input_tokens, output_tokens, cached = counts
        expected = genai_price(ref, provider_id, input_tokens, output_tokens, cached)
        assert expected > 0
        cost = price_usage(model, usage_of(input_tokens, output_tokens, cached))
        assert cost == expected
        assert Pricer(model).price(usage_of(input_tokens, output_tokens, cached)) == expected

    @pytest.mark.parametrize(("model", "provider_id", "ref"), KNOWN)
    def test_prefix_maps_to_genai_prices_provider(
        self, model: str, provider_id: str, ref: str
    ) -> None:
        pricer = Pricer(model)
        assert pricer.known
        assert pricer.provider_id == provider_id
        assert pricer.model_id == ref
        assert pricer.model == model

    def test_every_model_of_the_major_providers(self) -> None:
        """Online and batch prices agree with calc_price for every model genai-prices lists.

        Covers flat, tiered and per-request prices, with and without cached tokens, at
        prompt sizes on both sides of the usual tier thresholds.
        """
        checked = 0
        for provider in get_snapshot().providers:
            if provider.id not in ("openai", "anthropic", "google", "groq", "mistral", "x-ai"):
                continue
            for model in provider.models:
                try:
                    calc_price(Usage(input_tokens=1), model.id, provider_id=provider.id)
                except LookupError:
                    continue  # an id that is not itself a model name genai-prices matches
                if calc_price(Usage(), model.id, provider_id=provider.id).model.id != model.id:
                    continue
                pricer = Pricer(f"{provider.id}:{model.id}")
                batch_pricer = Pricer(f"{provider.id}:{model.id}", batch=True)
                for counts in [(0, 0, 0), (900, 100, 300), (128_001, 10, 5), (300_000, 7, 0)]:
                    expected = genai_price(model.id, provider.id, *counts)
                    assert pricer.price(usage_of(*counts)) == expected, (model.id, counts)
                    if batch_pricer.batch_basis == "batch-rates":
                        expected = genai_price(model.id, provider.id, *counts, batch=True)
                        assert batch_pricer.price(usage_of(*counts)) == expected, model.id
                    checked += 1
        assert checked > 400


class TestUnpriced:
    @pytest.mark.parametrize(
        "model",
        [
            "openai:no-such-model",
            "anthropic:claude-nonexistent-9",
            "no-such-model-xyz",
            "ollama:llama3",
            # Billed by ChatGPT subscription, not per token, though genai-prices' "openai"
            # provider matches any name containing "openai".
            "openai-codex:gpt-5",
            "openai-chatgpt:gpt-5",
            "heroku:claude-4-sonnet",
            "huggingface:meta-llama/Llama-3.3-70B-Instruct",
            "test",
            "function:my_function",
            "nope:gpt-4o",
            "openai:",
            "",
        ],
    )
    def test_unknown_model_is_none(self, model: str) -> None:
        assert price_usage(model, usage_of(1_000, 100)) is None
        assert price_usage(model, None, batch=True) is None
        pricer = Pricer(model, batch=True)
        assert not pricer.known
        assert pricer.provider_id is None
        assert pricer.model_id is None
        assert pricer.batch_basis is None
        assert pricer.price(usage_of(1_000, 100)) is None


class TestCachedTokens:
    def test_cached_tokens_are_part_of_input_at_the_cache_read_rate(self) -> None:
        """input_tokens include the cached ones; those cost the cache-read rate."""
        prices = calc_price(Usage(input_tokens=1), "gpt-4o-mini", provider_id="openai").model_price
        input_rate = prices.input_mtok
        cache_rate = prices.cache_read_mtok
        output_rate = prices.output_mtok
        assert isinstance(input_rate, Decimal)
        assert isinstance(cache_rate, Decimal)
        assert isinstance(output_rate, Decimal)
        assert cache_rate < input_rate

        cost = price_usage("openai:gpt-4o-mini", usage_of(10_000, 2_000, cached=6_000))
        expected = (4_000 * input_rate + 6_000 * cache_rate + 2_000 * output_rate) / MILLION
        assert cost == expected
        uncached = price_usage("openai:gpt-4o-mini", usage_of(10_000, 2_000))
        assert uncached is not None
        assert cost is not None
        assert cost < uncached
        assert uncached - cost == 6_000 * (input_rate - cache_rate) / MILLION

    def test_all_cached(self) -> None:
        cost = price_usage("anthropic:claude-sonnet-4-5", usage_of(5_000, 0, cached=5_000))
        assert cost == genai_price("claude-sonnet-4-5", "anthropic", 5_000, 0, 5_000)

    def test_model_without_a_cache_read_price_prices_cached_tokens_as_input(self) -> None:
        prices = calc_price(
            Usage(input_tokens=1), "llama-3.3-70b-versatile", provider_id="groq"
        ).model_price
        assert prices.cache_read_mtok is None
        model = "groq:llama-3.3-70b-versatile"
        assert price_usage(model, usage_of(10_000, 100, cached=6_000)) == price_usage(
            model, usage_of(10_000, 100)
        )

    def test_more_cached_than_input_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="cached_input_tokens"):
            price_usage("openai:gpt-4o-mini", {"input_tokens": 10, "cached_input_tokens": 11})
        with pytest.raises(ValueError, match="cached_input_tokens"):
            price_usage("openai:gpt-4o-mini", {"cached_input_tokens": 1})


class TestBatch:
    def test_batch_rates_are_genai_prices_batch_prices(self) -> None:
        pricer = Pricer("openai:gpt-4o-mini", batch=True)
        assert pricer.batch
        assert pricer.batch_basis == "batch-rates"
        usage = usage_of(10_000, 2_000, cached=3_000)
        expected = genai_price("gpt-4o-mini", "openai", 10_000, 2_000, 3_000, batch=True)
        assert pricer.price(usage) == expected
        assert price_usage("openai:gpt-4o-mini", usage, batch=True) == expected

    @pytest.mark.parametrize(
        "model",
        ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "google-gla:gemini-2.5-flash"],
    )
    def test_batch_is_half_the_online_price(self, model: str) -> None:
        """OpenAI, Anthropic and Google bill batch input and output at half the online rate."""
        online = price_usage(model, usage_of(20_000, 3_000))
        batch = price_usage(model, usage_of(20_000, 3_000), batch=True)
        assert online is not None
        assert online > 0
        assert batch == online / 2

    def test_anthropic_halves_cache_reads_too(self) -> None:
        usage = usage_of(20_000, 3_000, cached=15_000)
        online = price_usage("anthropic:claude-sonnet-4-5", usage)
        assert online is not None
        assert price_usage("anthropic:claude-sonnet-4-5", usage, batch=True) == online / 2

    def test_half_price_fallback_without_batch_data(self) -> None:
        """Claude on Vertex has no batch prices in genai-prices: Google's 50% applies."""
        pricer = Pricer("google-vertex:claude-sonnet-4-5", batch=True)
        assert pricer.provider_id == "google"
        assert pricer.batch_basis == "half-online"
        usage = usage_of(20_000, 3_000, cached=1_000)
        expected = genai_price("claude-sonnet-4-5", "google", 20_000, 3_000, 1_000) / 2
        assert expected > 0
        assert pricer.price(usage) == expected

    @pytest.mark.parametrize("model", ["groq:llama-3.3-70b-versatile", "azure:gpt-4o"])
    def test_online_price_when_no_batch_discount_is_known(self, model: str) -> None:
        pricer = Pricer(model, batch=True)
        assert pricer.batch_basis == "online"
        assert pricer.price(usage_of(20_000, 3_000)) == price_usage(model, usage_of(20_000, 3_000))

    def test_batch_basis_is_none_online(self) -> None:
        assert Pricer("openai:gpt-4o-mini").batch_basis is None
        assert not Pricer("openai:gpt-4o-mini").batch


class TestUsageShapes:
    @pytest.mark.parametrize("batch", [False, True])
    @pytest.mark.parametrize(
        "usage",
        [None, {}, {"input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0}],
        ids=["none", "empty", "zeros"],
    )
    def test_no_usage_costs_zero(self, usage: dict[str, int] | None, batch: bool) -> None:
        for model in (
            "openai:gpt-4o-mini",
            "anthropic:claude-sonnet-4-5",
            "groq:llama-3.3-70b-versatile",
        ):
            cost = price_usage(model, usage, batch=batch)
            assert type(cost) is Decimal
            assert cost == 0

    def test_cost_is_a_decimal(self) -> None:
        for model, _, _ in KNOWN:
            cost = price_usage(model, usage_of(1_000, 1_000, cached=100))
            assert type(cost) is Decimal, model
            cost = price_usage(model, usage_of(1_000, 1_000), batch=True)
            assert type(cost) is Decimal, model

    def test_missing_keys_are_zero(self) -> None:
        model = "openai:gpt-4o-mini"
        assert price_usage(model, {"input_tokens": 1_000}) == genai_price(
            "gpt-4o-mini", "openai", 1_000, 0
        )
        assert price_usage(model, {"output_tokens": 1_000}) == genai_price(
            "gpt-4o-mini", "openai", 0, 1_000
        )

    def test_total_and_unknown_keys_are_ignored(self) -> None:
        model = "openai:gpt-4o-mini"
        plain = price_usage(model, {"input_tokens": 1_000, "output_tokens": 10})
        padded = price_usage(
            model,
            {"input_tokens": 1_000, "output_tokens": 10, "total_tokens": 99_999, "other": 5},
        )
        assert plain == padded
        assert price_usage(model, {"total_tokens": 5_000}) == 0

    @pytest.mark.parametrize(
        "usage",
        [
            {"input_tokens": -1},
            {"output_tokens": 1.5},
            {"input_tokens": True},
            {"input_tokens": "10"},
            {"input_tokens": 10, "cached_input_tokens": -1},
        ],
    )
    def test_invalid_counts_are_an_error(self, usage: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match="non-negative int"):
            price_usage("openai:gpt-4o-mini", usage)


class TestPricer:
    def test_price_does_no_name_matching(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The model is resolved when the pricer is made, not on each call."""
        pricer = Pricer("openai:gpt-4o-mini", batch=True)
        tiered = Pricer("anthropic:claude-sonnet-4-5")
        expected = genai_price("gpt-4o-mini", "openai", 1_000, 100, 10, batch=True)
        expected_tiered = genai_price("claude-sonnet-4-5", "anthropic", 300_000, 100, 10)

        def no_lookup(*args: object, **kwargs: object) -> None:
            raise AssertionError("model looked up again")

        monkeypatch.setattr(DataSnapshot, "find_provider_model", no_lookup)
        monkeypatch.setattr(DataSnapshot, "find_provider", no_lookup)
        for _ in range(3):
            assert pricer.price(usage_of(1_000, 100, cached=10)) == expected
            assert tiered.price(usage_of(300_000, 100, cached=10)) == expected_tiered

    def test_price_usage_reuses_the_pricer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        price_usage("openai:gpt-4.1-mini", usage_of(10, 10))
        made: list[str] = []
        original = Pricer.__init__

        def counting_init(self: Pricer, model: str, *, batch: bool = False) -> None:
            made.append(model)
            original(self, model, batch=batch)

        monkeypatch.setattr(Pricer, "__init__", counting_init)
        for _ in range(5):
            assert price_usage("openai:gpt-4.1-mini", usage_of(10, 10)) is not None
        assert made == []

    def test_repr(self) -> None:
        assert repr(Pricer("openai:gpt-4o-mini", batch=True)) == (
            "Pricer('openai:gpt-4o-mini', batch=True)"
        )


class TestPriceDataVersion:
    def test_names_the_package_version(self) -> None:
        version = price_data_version()
        package_version = importlib.metadata.version("genai-prices")
        assert package_version == genai_prices.__version__
        assert version.startswith(f"genai-prices {package_version} (")

    def test_digest_is_the_bundled_data_file(self) -> None:
        match = re.fullmatch(
            r"genai-prices \S+ \(data sha256:([0-9a-f]{12})\)", price_data_version()
        )
        assert match is not None
        data_file = Path(genai_prices.data.__file__)
        assert hashlib.sha256(data_file.read_bytes()).hexdigest()[:12] == match.group(1)


class TestNoNetwork:
    def test_the_guard_works(self) -> None:
        with socket.socket() as sock, pytest.raises(NetworkUsedError):
            sock.connect(("127.0.0.1", 9))

    def test_prices_fetched_by_update_prices_are_not_used(self) -> None:
        """A snapshot installed by genai-prices' updater (here: an empty one) is ignored."""
        expected = genai_price("gpt-4o-mini", "openai", 1_000, 100)
        set_custom_snapshot(DataSnapshot(providers=[], from_auto_update=True))
        # As if the update had come before this module's first use.
        pricing._bundled_snapshot.cache_clear()
        pricing._pricer.cache_clear()
        try:
            with pytest.raises(LookupError):
                calc_price(Usage(input_tokens=1), "gpt-4o-mini", provider_id="openai")
            assert price_usage("openai:gpt-4o-mini", usage_of(1_000, 100)) == expected
            assert Pricer("anthropic:claude-haiku-4-5").known
        finally:
            set_custom_snapshot(None)


class TestWithoutGenaiPrices:
    @pytest.fixture
    def uninstalled(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        """genai-prices cannot be imported, and nothing from it is cached."""
        for name in list(sys.modules):
            if name == "genai_prices" or name.startswith("genai_prices."):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "genai_prices", None)
        caches = [pricing._bundled_snapshot, pricing._pricer, pricing._price_data_version]
        for cache in caches:
            cache.cache_clear()
        yield
        for cache in caches:
            cache.cache_clear()

    @pytest.mark.usefixtures("uninstalled")
    def test_clear_import_error(self) -> None:
        for call in (
            lambda: Pricer("openai:gpt-4o-mini"),
            lambda: price_usage("openai:gpt-4o-mini", None),
            price_data_version,
        ):
            with pytest.raises(ImportError, match=r"genai-prices.*'pricing' extra"):
                call()

    @pytest.mark.usefixtures("uninstalled")
    def test_module_imports_without_it(self) -> None:
        spec = importlib.util.spec_from_file_location("pricing_copy", pricing.__file__)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.__all__ == pricing.__all__
