"""Walking an exception and the errors it was raised from."""

from __future__ import annotations

from typing import Final

__all__ = ["exception_chain"]

# Wrapping layers seldom go beyond three; the bound keeps a pathological chain cheap.
MAX_CHAIN_LENGTH: Final = 16


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` first, then its ``__cause__``/``__context__`` links, breadth first.

    SDK wrappers keep the provider's error (with its headers and body) one or two links
    down. Each exception appears once, so a cyclic chain ends, and at most
    ``MAX_CHAIN_LENGTH`` are returned.
    """
    chain: list[BaseException] = []
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(chain) < MAX_CHAIN_LENGTH:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        for linked in (current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return chain
