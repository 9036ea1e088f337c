"""Middleware that wraps every attempt of a work item."""

from __future__ import annotations

from async_batch_llm.middleware.base import BaseMiddleware, Middleware

__all__ = ["Middleware", "BaseMiddleware"]
