"""The one place where deprecated constructor arguments are warned about and applied."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from async_batch_llm.core.config import ProcessorConfig, RateLimitConfig

__all__ = ["config_from_legacy_args", "warn_deprecated"]


def warn_deprecated(name: str, replacement: str, *, stacklevel: int = 3) -> None:
    """Warn that argument ``name`` is deprecated in favour of ``replacement``."""
    warnings.warn(
        f"The {name!r} argument is deprecated; set {replacement} instead "
        f"(e.g. ParallelBatchProcessor(config=ProcessorConfig(...)))",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def config_from_legacy_args(
    config: ProcessorConfig | None,
    *,
    max_workers: int | None,
    timeout_per_item: float | None,
    rate_limit_cooldown: float | None,
) -> ProcessorConfig:
    """The config to use when deprecated arguments may be given beside (or instead of) one.

    Each deprecated argument that is not ``None`` warns and overrides its config field on a
    *copy*: the caller's config object is never modified. The copy is validated like any
    config, so ``0`` or negative values raise instead of silently falling back to defaults.
    """
    legacy = {
        "max_workers": (max_workers, "ProcessorConfig.max_workers"),
        "timeout_per_item": (timeout_per_item, "ProcessorConfig.timeout_per_item"),
        "rate_limit_cooldown": (
            rate_limit_cooldown,
            "ProcessorConfig.rate_limit.cooldown_seconds",
        ),
    }
    given = {name: value for name, (value, _) in legacy.items() if value is not None}
    for name in given:
        warn_deprecated(name, legacy[name][1], stacklevel=4)
    if config is None:
        config = ProcessorConfig()
    elif not given:
        return config
    rate_limit: RateLimitConfig = config.rate_limit
    if "rate_limit_cooldown" in given:
        rate_limit = dataclasses.replace(rate_limit, cooldown_seconds=given["rate_limit_cooldown"])
    else:
        rate_limit = dataclasses.replace(rate_limit)
    overrides: dict[str, Any] = {k: v for k, v in given.items() if k != "rate_limit_cooldown"}
    return dataclasses.replace(
        config, retry=dataclasses.replace(config.retry), rate_limit=rate_limit, **overrides
    )
