"""The public surface: package exports, module ``__all__`` lists, version, aliases, constants."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import inspect
import pkgutil
import sys
import typing
from types import ModuleType
from typing import Any

import pytest

import async_batch_llm
from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    SimpleBatchProcessor,
    SimpleResult,
    SimpleWorkItem,
    WorkItemResult,
)
from support import EchoStrategy

#: Every name of the package root's ``__all__`` and the module that defines it.
DEFINED_IN: dict[str, str] = {
    "BatchProcessor": "async_batch_llm.base",
    "BatchResult": "async_batch_llm.base",
    "LLMWorkItem": "async_batch_llm.base",
    "PostProcessorFunc": "async_batch_llm.base",
    "ProcessingStats": "async_batch_llm.base",
    "ProgressCallbackFunc": "async_batch_llm.base",
    "RetryState": "async_batch_llm.base",
    "TokenUsage": "async_batch_llm.base",
    "WorkItemResult": "async_batch_llm.base",
    "LLMResponse": "async_batch_llm.base",
    "ProcessorConfig": "async_batch_llm.core.config",
    "RateLimitConfig": "async_batch_llm.core.config",
    "RetryConfig": "async_batch_llm.core.config",
    "LLMModel": "async_batch_llm.core.protocols",
    "ManagedLLMModel": "async_batch_llm.core.protocols",
    "LLMCallStrategy": "async_batch_llm.llm_strategies",
    "GeminiStrategy": "async_batch_llm.llm_strategies",
    "PydanticAIStrategy": "async_batch_llm.llm_strategies",
    "GeminiModel": "async_batch_llm.models",
    "GeminiCachedModel": "async_batch_llm.models",
    "GeminiErrorClassifier": "async_batch_llm.classifiers.gemini",
    "ErrorClassifier": "async_batch_llm.strategies.errors",
    "ErrorInfo": "async_batch_llm.strategies.errors",
    "DefaultErrorClassifier": "async_batch_llm.strategies.errors",
    "FrameworkTimeoutError": "async_batch_llm.strategies.errors",
    "TokenTrackingError": "async_batch_llm.strategies.errors",
    "RateLimitStrategy": "async_batch_llm.strategies.rate_limit",
    "ExponentialBackoffStrategy": "async_batch_llm.strategies.rate_limit",
    "FixedDelayStrategy": "async_batch_llm.strategies.rate_limit",
    "Middleware": "async_batch_llm.middleware.base",
    "BaseMiddleware": "async_batch_llm.middleware.base",
    "ProcessorObserver": "async_batch_llm.observers.base",
    "BaseObserver": "async_batch_llm.observers.base",
    "ProcessingEvent": "async_batch_llm.observers.base",
    "MetricsObserver": "async_batch_llm.observers.metrics",
    "ParallelBatchProcessor": "async_batch_llm.parallel",
}
ALIASES = ("SimpleBatchProcessor", "SimpleWorkItem", "SimpleResult")

#: Names API.md 1.2 requires of each module.
MODULE_NAMES: dict[str, tuple[str, ...]] = {
    "async_batch_llm.base": (
        "RetryState",
        "TokenUsage",
        "LLMResponse",
        "LLMWorkItem",
        "WorkItemResult",
        "BatchResult",
        "ProcessingStats",
        "PostProcessorFunc",
        "ProgressCallbackFunc",
        "BatchProcessor",
        "TInput",
        "TOutput",
        "TContext",
        "WORKER_CANCELLATION_TIMEOUT",
        "WORKER_SHUTDOWN_TIMEOUT",
        "POST_PROCESSOR_EXECUTION_TIMEOUT",
        "PROGRESS_TASK_CANCELLATION_TIMEOUT",
    ),
    "async_batch_llm.core.config": ("RetryConfig", "RateLimitConfig", "ProcessorConfig"),
    "async_batch_llm.core.protocols": (
        "TOutput",
        "AgentLike",
        "ResultLike",
        "UsageLike",
        "LLMModel",
        "ManagedLLMModel",
    ),
    "async_batch_llm.llm_strategies": (
        "LLMCallStrategy",
        "GeminiStrategy",
        "PydanticAIStrategy",
        "Agent",
        "TOutput",
    ),
    "async_batch_llm.models": (
        "GeminiModel",
        "GeminiCachedModel",
        "genai",
        "Content",
        "_TAG_DISPLAY_NAME_PREFIX",
        "_encode_tags_to_display_name",
        "_decode_tags_from_display_name",
        "_extract_metadata",
        "_extract_tokens",
    ),
    "async_batch_llm.classifiers.gemini": (
        "GeminiErrorClassifier",
        "RATE_LIMIT_PATTERNS",
        "TIMEOUT_PATTERNS",
        "DEFAULT_RATE_LIMIT_WAIT",
    ),
    "async_batch_llm.testing.strategies": ("mock_strategy",),
    "async_batch_llm.parallel": (
        "ParallelBatchProcessor",
        "ERROR_MESSAGE_MAX_LENGTH",
        "ERROR_MESSAGE_DETAILED_LENGTH",
    ),
    "async_batch_llm.strategies.errors": (
        "TokenTrackingError",
        "FrameworkTimeoutError",
        "ErrorInfo",
        "ErrorClassifier",
        "DefaultErrorClassifier",
        "RATE_LIMIT_PATTERNS",
        "DEFAULT_RATE_LIMIT_WAIT",
    ),
    "async_batch_llm.strategies.rate_limit": (
        "RateLimitStrategy",
        "ExponentialBackoffStrategy",
        "FixedDelayStrategy",
    ),
    "async_batch_llm.middleware.base": ("Middleware", "BaseMiddleware"),
    "async_batch_llm.observers.base": ("ProcessingEvent", "ProcessorObserver", "BaseObserver"),
    "async_batch_llm.observers.metrics": ("MetricsObserver",),
    "async_batch_llm.testing.mocks": ("MockUsage", "MockResult", "MockAgent"),
    "async_batch_llm.token_extractor": ("TokenExtractor", "_EMPTY_USAGE", "_coerce_usage", "_int"),
}

#: ``__all__`` that API.md 1.2 pins exactly.
EXACT_ALL: dict[str, set[str]] = {
    "async_batch_llm.core": {
        "ProcessorConfig",
        "RateLimitConfig",
        "RetryConfig",
        "AgentLike",
        "LLMModel",
        "ManagedLLMModel",
        "ResultLike",
        "TOutput",
        "UsageLike",
    },
    "async_batch_llm.strategies": {
        "ErrorClassifier",
        "ErrorInfo",
        "DefaultErrorClassifier",
        "FrameworkTimeoutError",
        "TokenTrackingError",
        "RateLimitStrategy",
        "ExponentialBackoffStrategy",
        "FixedDelayStrategy",
    },
    "async_batch_llm.middleware": {"Middleware", "BaseMiddleware"},
    "async_batch_llm.classifiers": {"GeminiErrorClassifier"},
    "async_batch_llm.testing": {"MockAgent", "MockResult", "mock_strategy"},
    "async_batch_llm.observers": {
        "ProcessorObserver",
        "BaseObserver",
        "ProcessingEvent",
        "MetricsObserver",
    },
}


def _public_modules() -> list[str]:
    names = ["async_batch_llm"]
    for info in pkgutil.walk_packages(async_batch_llm.__path__, "async_batch_llm."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return names


PUBLIC_MODULES = _public_modules()


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


class TestPackageRoot:
    def test_all_is_exactly_the_current_names(self) -> None:
        """The root ``__all__`` holds exactly the 39 names of API.md 1.2."""
        exported = async_batch_llm.__all__
        assert len(exported) == 39
        assert len(set(exported)) == len(exported)
        assert set(exported) == set(DEFINED_IN) | set(ALIASES)

    @pytest.mark.parametrize("name", sorted(DEFINED_IN))
    def test_reexport_is_the_defined_object(self, name: str) -> None:
        """Each root export is the very object its defining module holds."""
        definition = getattr(_module(DEFINED_IN[name]), name)
        assert getattr(async_batch_llm, name) is definition

    def test_version_matches_installed_metadata(self) -> None:
        """``__version__`` is the installed distribution version, three numeric parts."""
        version = async_batch_llm.__version__
        assert version == importlib.metadata.version("async-batch-llm")
        parts = version.split(".")
        assert len(parts) == 3
        assert all(part.isdigit() for part in parts)
        assert "__version__" not in async_batch_llm.__all__

    @pytest.mark.parametrize(
        "name",
        [
            "base",
            "classifiers",
            "core",
            "llm_strategies",
            "middleware",
            "models",
            "observers",
            "parallel",
            "strategies",
            "testing",
            "token_extractor",
        ],
    )
    def test_submodule_is_attribute_of_package(self, name: str) -> None:
        """``import async_batch_llm`` makes each submodule an attribute of the package."""
        submodule = getattr(async_batch_llm, name)
        assert isinstance(submodule, ModuleType)
        assert submodule is sys.modules[f"async_batch_llm.{name}"]

    def test_py_typed_is_shipped(self) -> None:
        """The package carries the PEP 561 ``py.typed`` marker."""
        marker = importlib.resources.files("async_batch_llm").joinpath("py.typed")
        assert marker.is_file()


class TestModuleAll:
    @pytest.mark.parametrize("module_name", PUBLIC_MODULES)
    def test_all_lists_only_existing_names(self, module_name: str) -> None:
        """Every public module defines ``__all__`` and each listed name exists in it."""
        module = _module(module_name)
        exported = getattr(module, "__all__", None)
        assert isinstance(exported, list | tuple), f"{module_name} has no __all__"
        assert exported, f"{module_name}.__all__ is empty"
        assert len(set(exported)) == len(exported)
        missing = [name for name in exported if not hasattr(module, name)]
        assert missing == []

    @pytest.mark.parametrize("module_name", PUBLIC_MODULES)
    def test_classes_and_functions_are_their_definitions(self, module_name: str) -> None:
        """A class or function exported by a module is the same object as where it is defined."""
        module = _module(module_name)
        for name in module.__all__:
            obj: Any = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            home = sys.modules[obj.__module__]
            assert getattr(home, obj.__name__) is obj, f"{module_name}.{name}"

    @pytest.mark.parametrize("module_name", sorted(EXACT_ALL))
    def test_pinned_all_is_exact(self, module_name: str) -> None:
        """Sub-packages whose ``__all__`` API.md pins export exactly those names."""
        assert set(_module(module_name).__all__) == EXACT_ALL[module_name]

    @pytest.mark.parametrize("module_name", sorted(MODULE_NAMES))
    def test_module_provides_required_names(self, module_name: str) -> None:
        """Each module provides the names API.md 1.2 lists for it."""
        module = _module(module_name)
        missing = [name for name in MODULE_NAMES[module_name] if not hasattr(module, name)]
        assert missing == []


class TestAliases:
    def test_simple_batch_processor_is_a_parametrised_processor(self) -> None:
        """``SimpleBatchProcessor[Out](config=...)`` builds a ParallelBatchProcessor."""
        assert typing.get_origin(SimpleBatchProcessor) is ParallelBatchProcessor
        config = ProcessorConfig(max_workers=2)
        processor = SimpleBatchProcessor[int](config=config)
        assert isinstance(processor, ParallelBatchProcessor)
        assert processor.config is config

    def test_simple_work_item_builds_a_work_item(self) -> None:
        """``SimpleWorkItem[Out](item_id=..., strategy=..., prompt=...)`` builds an LLMWorkItem."""
        strategy = EchoStrategy()
        item = SimpleWorkItem[str](item_id="a", strategy=strategy, prompt="hello")
        assert isinstance(item, LLMWorkItem)
        assert (item.item_id, item.strategy, item.prompt, item.context) == (
            "a",
            strategy,
            "hello",
            None,
        )
        assert typing.get_args(SimpleWorkItem)[0] is str

    def test_simple_result_builds_a_result(self) -> None:
        """``SimpleResult[Out](...)`` builds a WorkItemResult with the usual defaults."""
        result = SimpleResult[int](item_id="a", success=True, output=3)
        assert isinstance(result, WorkItemResult)
        assert (result.output, result.error, result.context) == (3, None, None)
        assert typing.get_origin(SimpleResult) is WorkItemResult


class TestConstants:
    def test_base_timing_constants(self) -> None:
        """The base module's timing constants have their documented values."""
        base = async_batch_llm.base
        assert base.WORKER_CANCELLATION_TIMEOUT == 2.0
        assert base.WORKER_SHUTDOWN_TIMEOUT == 30.0
        assert base.POST_PROCESSOR_EXECUTION_TIMEOUT == 75.0
        assert base.PROGRESS_TASK_CANCELLATION_TIMEOUT == 2.0

    def test_parallel_error_message_lengths(self) -> None:
        """``parallel`` exposes the two error-text truncation lengths."""
        parallel = async_batch_llm.parallel
        assert parallel.ERROR_MESSAGE_MAX_LENGTH == 200
        assert parallel.ERROR_MESSAGE_DETAILED_LENGTH == 500

    def test_examples_import_processor_from_parallel(self) -> None:
        """``from async_batch_llm.parallel import ParallelBatchProcessor`` is the root's class."""
        from async_batch_llm.parallel import ParallelBatchProcessor as FromParallel

        assert FromParallel is async_batch_llm.ParallelBatchProcessor
