"""Provider-specific error classifiers."""

from __future__ import annotations

from async_batch_llm.classifiers.gemini import GeminiErrorClassifier

__all__ = ["GeminiErrorClassifier"]
