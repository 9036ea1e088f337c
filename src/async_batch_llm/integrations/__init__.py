"""Integrations with other frameworks, each in a submodule that needs its own extra.

- `async_batch_llm.integrations.ray`: a Ray Data stage (extra ``ray``).

Importing this package imports none of them; ``async_batch_llm.integrations.ray`` is
imported on first access.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["ray"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
