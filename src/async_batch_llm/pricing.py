"""What token usage costs in US dollars, from [genai-prices](https://github.com/pydantic/genai-prices).

`price_usage` prices the token counts of one call (the `TokenUsage` keys this library
reports) for a model named the way pydantic-ai names it (`"openai:gpt-4o-mini"`,
`"anthropic:claude-sonnet-4-5"`, `"google-gla:gemini-2.5-flash"`, or a bare
`"gpt-4o-mini"`). `Pricer` does the same for one model, resolving the name once.
`price_data_version` names the price data, for run summaries.

```python
from async_batch_llm.pricing import Pricer, price_data_version, price_usage

cost = price_usage("openai:gpt-4o-mini", {"input_tokens": 1200, "output_tokens": 300})
pricer = Pricer("anthropic:claude-sonnet-4-5", batch=True)
batch_cost = pricer.price({"input_tokens": 1200, "output_tokens": 300})
print(f"${cost} / ${batch_cost} (prices: {price_data_version()})")
```

Costs are `decimal.Decimal` amounts in USD, never floats, so sums of many small costs stay
exact. A model genai-prices does not know is *unpriced*: the result is `None`, not an error
and not zero.

Only the price data bundled with the installed genai-prices package is used, so nothing here
touches the network. (genai-prices can fetch newer prices in the background with its
`UpdatePrices`; prices from such an update are not used here even if another part of the
process starts one, so that the version `price_data_version` reports is the data in use.)

Price each call's usage and add the costs up: do not price usage summed over many calls.
Some prices depend on the size of one call's prompt (for example a higher rate for every
token of a prompt over 200k tokens), and those would be applied to the sum.

genai-prices is an optional dependency (the `pricing` extra); without it, `Pricer`,
`price_usage` and `price_data_version` raise `ImportError`.
"""

from __future__ import annotations

import base64
import functools
import importlib.metadata
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, ModelPrice, PriceVariant, Provider

__all__ = ["Pricer", "price_usage", "price_data_version", "BatchBasis"]

BatchBasis: TypeAlias = Literal["batch-rates", "half-online", "online"]
"""How a batch-API call was priced (see `Pricer.batch_basis`).

- `"batch-rates"`: genai-prices' own batch prices for the model.
- `"half-online"`: 50% of the online price, the provider's documented batch discount, because
  genai-prices has no batch prices for this model.
- `"online"`: the online price, because no batch discount is known for the provider.
"""

_INSTALL_HINT: Final = (
    "async_batch_llm.pricing needs the optional dependency genai-prices: install the "
    "'pricing' extra of async-batch-llm (pip install '.[pricing]' from a checkout of this "
    "repository) or install genai-prices itself (pip install genai-prices)."
)

# pydantic-ai provider names (the part before the first ':' of a model string) and the
# genai-prices provider ids they bill under. Older pydantic-ai names are kept
# (google-gla, google-vertex, grok). "gateway/<provider>" is looked up as "<provider>".
_PROVIDER_IDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "openai": "openai",
        "openai-chat": "openai",
        "openai-responses": "openai",
        "openai-decisions": "openai-decisions",
        "azure": "azure",
        "azure-responses": "azure",
        "anthropic": "anthropic",
        "google": "google",
        "google-gla": "google",
        "google-vertex": "google",
        "google-cloud": "google",
        "bedrock": "aws",
        "bedrock-mantle": "aws",
        "groq": "groq",
        "mistral": "mistral",
        "cohere": "cohere",
        "deepseek": "deepseek",
        "xai": "x-ai",
        "grok": "x-ai",
        "moonshotai": "moonshotai",
        "cerebras": "cerebras",
        "fireworks": "fireworks",
        "together": "together",
        "openrouter": "openrouter",
        "meta": "meta",
        "ovhcloud": "ovhcloud",
        "github-copilot": "github-copilot",
        "elevenlabs": "elevenlabs",
        "typesafe": "typesafe",
        "voyageai": "voyageai",
        "zai": "zai",
        # genai-prices reads the upstream provider from a "provider/model" name.
        "litellm": "litellm",
    }
)

# pydantic-ai providers with no per-token price in genai-prices: local or test models,
# subscription-billed ones, and hosts genai-prices has no data for (or, for huggingface,
# only per inference backend, which the model string does not name). Their models are
# unpriced; looking them up by model name alone could find another provider's price.
_UNPRICED_PROVIDERS: Final = frozenset(
    {
        "test",
        "function",
        "ollama",
        "vllm",
        "sentence-transformers",
        "openai-codex",
        "openai-chatgpt",
        "huggingface",
        "heroku",
        "vercel",
        "github",
        "nebius",
        "alibaba",
        "sambanova",
        "snowflake",
        "crusoe",
        "system-one",
    }
)

# Providers that document their batch API as 50% of the online price: OpenAI
# (https://platform.openai.com/docs/guides/batch), Anthropic
# (https://platform.claude.com/docs/en/build-with-claude/batch-processing#pricing), Google
# (https://ai.google.dev/gemini-api/docs/pricing, Batch tab; the Vertex AI pricing page lists
# half-price batch rates too) and Mistral (https://docs.mistral.ai/capabilities/batch/). The
# Anthropic, Google and Mistral references are the ones genai-prices' own data cites.
# genai-prices has exact batch prices for most of their current models; this flat rate is only
# the fallback for the models it lacks them for (mostly older ones, and Claude on Vertex AI).
_HALF_PRICE_BATCH_PROVIDERS: Final = frozenset({"openai", "anthropic", "google", "mistral"})
_HALF: Final = Decimal("0.5")

# genai-prices selects a model's batch prices with this request context.
_BATCH_CONTEXT: Final[Mapping[str, str]] = MappingProxyType({"processing": "batch"})

# genai-prices' price keys for the counts this library reports, and the usage key each
# count is passed as. genai-prices' `input_tokens` include the `cache_read_tokens` (it
# prices input - cache_read at the input rate and cache_read at the cache-read rate), which
# is exactly how `input_tokens` and `cached_input_tokens` relate here.
_INPUT_KEY: Final = "input_mtok"
_OUTPUT_KEY: Final = "output_mtok"
_CACHE_READ_KEY: Final = "cache_read_mtok"
_PER_MILLION: Final = 1_000_000


class Pricer:
    """Prices the token usage of calls to one model.

    The model name is resolved against genai-prices once, when the pricer is made, so
    `price` does no name matching. `price_usage` keeps a pricer per model string;
    make your own when you price many calls of the same model.

    Args:
        model: The model, as pydantic-ai spells it: `"provider:model-name"` (for example
            `"openai:gpt-4o-mini"`, `"anthropic:claude-sonnet-4-5"`,
            `"google-gla:gemini-2.5-flash"`, `"google-vertex:gemini-2.5-pro"`,
            `"groq:llama-3.3-70b-versatile"`, `"mistral:mistral-small-latest"`), or a bare
            model name (`"gpt-4o-mini"`), for which genai-prices infers the provider.
            pydantic-ai's provider names are mapped to genai-prices' provider ids
            (`google-gla`, `google-vertex` and `google-cloud` to `google`, `bedrock` to
            `aws`, `xai` to `x-ai`, ...). Providers without per-token prices in genai-prices
            (`test`, `ollama`, `huggingface`, ...) leave the model unpriced.
        batch: Price the calls as made through the provider's batch API. genai-prices'
            batch prices for the model are used when it has them. When it does not, the
            cost is 50% of the online price for OpenAI, Anthropic, Google and Mistral models,
            the discount those providers document for their batch APIs (for Google models
            that halves cache reads too, which Google bills at the online rate, so cached
            input is slightly under-priced there), and the online price for any other
            provider. `batch_basis` tells which applied.

    Raises:
        ImportError: genai-prices is not installed.
    """

    __slots__ = ("_batch", "_batch_variants", "_model", "_model_info", "_provider")

    def __init__(self, model: str, *, batch: bool = False) -> None:
        snapshot = _bundled_snapshot()
        self._model = model
        self._batch = batch
        resolved = _resolve(snapshot, model)
        self._provider: Provider | None = None
        self._model_info: ModelInfo | None = None
        self._batch_variants: tuple[PriceVariant, ...] = ()
        if resolved is not None:
            provider, model_info = resolved
            self._provider, self._model_info = provider, model_info
            # genai-prices applies a price context (so batch prices) only to a model listed
            # under the provider itself, not to one found through the provider's fallback
            # providers (Azure's OpenAI models, for example), so only those count.
            if batch and any(listed is model_info for listed in provider.models):
                self._batch_variants = tuple(
                    variant
                    for variant in model_info.price_variants or ()
                    if variant.when == _BATCH_CONTEXT
                )

    def __repr__(self) -> str:
        return f"Pricer({self._model!r}, batch={self._batch!r})"

    @property
    def model(self) -> str:
        """The model string the pricer was made for."""
        return self._model

    @property
    def batch(self) -> bool:
        """Whether calls are priced as batch-API calls."""
        return self._batch

    @property
    def known(self) -> bool:
        """Whether genai-prices knows the model (if not, `price` returns `None`)."""
        return self._model_info is not None

    @property
    def provider_id(self) -> str | None:
        """The genai-prices provider id the model is priced under, `None` if unpriced."""
        return None if self._provider is None else self._provider.id

    @property
    def model_id(self) -> str | None:
        """genai-prices' id for the model (for example `"gpt-4o-mini"`), `None` if unpriced."""
        return None if self._model_info is None else self._model_info.id

    @property
    def batch_basis(self) -> BatchBasis | None:
        """How a call made now is priced when `batch` is set; `None` if not batch or unpriced.

        `"batch-rates"` (genai-prices' batch prices for the model), `"half-online"` (50% of
        the online price, the provider's documented batch discount) or `"online"` (no batch
        discount known for the provider).
        """
        if not self._batch or self._provider is None:
            return None
        return self._batch_basis(datetime.now(UTC))

    def price(self, usage: Mapping[str, int] | None) -> Decimal | None:
        """The cost in USD of one call's token usage, `None` if the model is unpriced.

        Args:
            usage: The call's token counts: `input_tokens` (including any read from a
                prompt cache), `output_tokens` and `cached_input_tokens` (the part of
                `input_tokens` read from the cache, priced at the model's cache-read rate
                where it has one, at the input rate otherwise). A missing count is 0;
                `None` is no usage at all. Other keys, `total_tokens` among them, are
                ignored: input and output tokens are priced separately.

        Returns:
            The cost as a `Decimal` (`Decimal(0)` for no usage), or `None` if genai-prices
            does not know the model. Prices in effect now are used.

        Raises:
            ValueError: A count is not a non-negative `int`, or `cached_input_tokens`
                exceeds `input_tokens`.
        """
        model_info = self._model_info
        provider = self._provider
        if model_info is None or provider is None:
            return None
        input_tokens, output_tokens, cached_tokens = _counts(usage)
        now = datetime.now(UTC)
        basis = self._batch_basis(now) if self._batch else None
        # Only set when the model has batch prices genai-prices will apply (see __init__).
        context = _BATCH_CONTEXT if basis == "batch-rates" else None
        model_price = model_info.get_prices(now, context)
        total = _flat_price(model_price, input_tokens, output_tokens, cached_tokens)
        if total is None:
            from genai_prices import Usage

            total = model_info.calc_price(
                Usage(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cache_read_tokens=cached_tokens,
                ),
                provider,
                genai_request_timestamp=now,
                price_context=context,
            ).total_price
        if basis == "half-online":
            total *= _HALF
        return total

    def _batch_basis(self, now: datetime) -> BatchBasis:
        for variant in self._batch_variants:
            if variant.constraint is None or variant.constraint.active(now):
                return "batch-rates"
        assert self._provider is not None
        if self._provider.id in _HALF_PRICE_BATCH_PROVIDERS:
            return "half-online"
        return "online"


def price_usage(
    model: str, usage: Mapping[str, int] | None, *, batch: bool = False
) -> Decimal | None:
    """The cost in USD of one call's token usage, `None` if the model is unpriced.

    Shorthand for `Pricer(model, batch=batch).price(usage)`, with the pricer kept for the
    next call with the same model string.

    Args:
        model: The model, as pydantic-ai spells it (`"openai:gpt-4o-mini"`,
            `"google-gla:gemini-2.5-flash"`, ...) or a bare model name; see `Pricer`.
        usage: The call's `input_tokens` (including cached ones), `output_tokens` and
            `cached_input_tokens`; a missing count is 0 and `None` is no usage. See
            `Pricer.price`.
        batch: Price the call as made through the provider's batch API; see `Pricer`.

    Returns:
        The cost as a `Decimal`, `Decimal(0)` for no usage of a known model, or `None` when
        genai-prices does not know the model.

    Raises:
        ImportError: genai-prices is not installed.
        ValueError: A count is not a non-negative `int`, or `cached_input_tokens` exceeds
            `input_tokens`.
    """
    return _pricer(model, batch).price(usage)


def price_data_version() -> str:
    """Which price data is in use, for run summaries.

    The genai-prices version and a short SHA-256 of its bundled price data, as recorded in
    the installed package's file list: `"genai-prices 0.2.3 (data sha256:5f4d0e...)"` (12
    hex digits). genai-prices does not date its bundled data, so the digest tells two
    snapshots apart; without a recorded digest the form is `"genai-prices 0.2.3 (bundled
    data)"`.

    Raises:
        ImportError: genai-prices is not installed.
    """
    return _price_data_version()


@functools.lru_cache(maxsize=256)
def _pricer(model: str, batch: bool) -> Pricer:
    return Pricer(model, batch=batch)


@functools.cache
def _price_data_version() -> str:
    _require_genai_prices()
    version = importlib.metadata.version("genai-prices")
    digest = _bundled_data_digest()
    data = f"data sha256:{digest}" if digest else "bundled data"
    return f"genai-prices {version} ({data})"


def _bundled_data_digest() -> str | None:
    """The first 12 hex digits of the SHA-256 the installed package records for its data."""
    files = importlib.metadata.distribution("genai-prices").files
    for path in files or ():
        if path.as_posix() == "genai_prices/data.py" and path.hash is not None:
            if path.hash.mode != "sha256":
                return None
            # RECORD holds the digest as urlsafe base64 without padding.
            value = path.hash.value
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            return raw.hex()[:12]
    return None


def _require_genai_prices() -> None:
    try:
        import genai_prices  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc


@functools.cache
def _bundled_snapshot() -> DataSnapshot:
    """A snapshot of the bundled price data, separate from genai-prices' global one.

    `genai_prices.calc_price` uses whatever snapshot a background `UpdatePrices` last
    fetched; this one only ever holds the data shipped in the package.
    """
    _require_genai_prices()
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


def _resolve(snapshot: DataSnapshot, model: str) -> tuple[Provider, ModelInfo] | None:
    """genai-prices' provider and model for a pydantic-ai model string, `None` if unknown."""
    provider_id: str | None = None
    name = model
    prefix, colon, rest = model.partition(":")
    if colon:
        key = prefix.strip().lower().removeprefix("gateway/")
        if key in _UNPRICED_PROVIDERS:
            return None
        if key in _PROVIDER_IDS:
            provider_id, name = _PROVIDER_IDS[key], rest
        elif _is_provider(snapshot, key):
            provider_id, name = key, rest
        # Otherwise the colon belongs to a bare model name (say "ft:gpt-4o-mini:org::id").
    name = name.strip()
    if not name:
        return None
    try:
        return snapshot.find_provider_model(name, None, provider_id, None)
    except LookupError:
        return None


def _is_provider(snapshot: DataSnapshot, provider_id: str) -> bool:
    if not provider_id:
        return False
    try:
        snapshot.find_provider(None, provider_id, None)
    except LookupError:
        return False
    return True


def _counts(usage: Mapping[str, int] | None) -> tuple[int, int, int]:
    """`(input_tokens, output_tokens, cached_input_tokens)` of `usage`, checked."""
    if usage is None:
        return 0, 0, 0
    input_tokens, output_tokens, cached_tokens = (
        _count(usage, "input_tokens"),
        _count(usage, "output_tokens"),
        _count(usage, "cached_input_tokens"),
    )
    if cached_tokens > input_tokens:
        raise ValueError(
            f"cached_input_tokens ({cached_tokens}) cannot exceed input_tokens "
            f"({input_tokens}): cached input tokens are part of the input tokens"
        )
    return input_tokens, output_tokens, cached_tokens


def _count(usage: Mapping[str, object], key: str) -> int:
    count = usage.get(key, 0)
    if type(count) is not int or count < 0:
        raise ValueError(f"{key} must be a non-negative int, got {count!r}")
    return count


@functools.cache
def _zero_count_price_keys() -> frozenset[str]:
    """Price keys of usage this library never reports, so always 0 here.

    Everything genai-prices prices except the three token counts, the units they are part
    of (their ancestors, whose count would differ), and `requests` (a flat price per call,
    which applies whatever the usage).
    """
    from genai_prices.data_units import unit_data

    reported = ("input_tokens", "output_tokens", "cache_read_tokens")
    reported_dimensions = [frozenset(unit_data[key]["dimensions"].items()) for key in reported]
    keys: set[str] = set()
    for usage_key, unit in unit_data.items():
        dimensions = frozenset(unit["dimensions"].items())
        if usage_key in reported or ("family", "requests") in dimensions:
            continue
        if any(dimensions <= other for other in reported_dimensions):
            continue  # an ancestor of a reported unit
        keys.add(str(unit.get("price_key", usage_key)))
    return frozenset(keys)


def _flat_price(
    model_price: ModelPrice, input_tokens: int, output_tokens: int, cached_tokens: int
) -> Decimal | None:
    """The cost at per-token prices, or `None` if the prices need genai-prices' calculation.

    genai-prices' general calculation takes from a few hundred microseconds to over half a
    millisecond a call. This does the same arithmetic for the common case, prices per
    million input, output and cache-read tokens, flat or tiered by the call's input tokens:
    each unit costs rate * count / 1,000,000, summed from `Decimal(0)`, where a tiered rate
    is the rate of the highest tier whose start the input tokens exceed (for all the
    tokens, genai-prices' "cliff" tiers). Prices of anything else this library does not
    report (audio, images, web searches, ...) count 0 tokens. A per-request price, or a
    price key not known here, goes to genai-prices instead.
    """
    from genai_prices.types import TieredPrices

    zero_keys = _zero_count_price_keys()
    priced: list[tuple[str, Decimal]] = []
    for key, value in vars(model_price).items():
        if value is None or key.startswith("_") or key in zero_keys:
            continue
        if key not in (_INPUT_KEY, _OUTPUT_KEY, _CACHE_READ_KEY):
            return None
        if type(value) is Decimal:
            priced.append((key, value))
        elif isinstance(value, TieredPrices):
            rate = value.base
            for tier in reversed(value.tiers):  # sorted by start
                if input_tokens > tier.start:
                    rate = tier.price
                    break
            priced.append((key, rate))
        else:
            return None
    keys = {key for key, _ in priced}
    cache_priced = _CACHE_READ_KEY in keys
    if cache_priced and _INPUT_KEY not in keys:
        return None  # genai-prices rejects such a price; let it say why
    counts = {
        # Cached input tokens are priced at the cache-read rate if there is one, else as input.
        _INPUT_KEY: input_tokens - cached_tokens if cache_priced else input_tokens,
        _OUTPUT_KEY: output_tokens,
        _CACHE_READ_KEY: cached_tokens,
    }
    total = Decimal(0)
    for key, rate in priced:
        total += rate * Decimal(counts[key]) / _PER_MILLION
    return total
