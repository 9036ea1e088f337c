"""Optional dependencies, looked at without importing them.

pydantic-ai and google-genai take a second or more each to import. An exception or an agent
of theirs can only exist once their module has been imported by whoever made it, so a type
check needs only what is already in ``sys.modules``: `loaded` never imports anything.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["loaded"]


def loaded(module: str, name: str) -> Any:
    """``module.name`` if `module` has been imported already, else ``None``."""
    imported = sys.modules.get(module)
    return None if imported is None else getattr(imported, name, None)
