"""Whether a strategy can ever see the `RetryState` of its items.

Every item gets a fresh `RetryState`, shared by its attempts and ``on_error`` (the 0.7.2
contract). Most strategies never look at it, and at zero latency making one per item is
about a twentieth of the processor's cost. When a strategy provably cannot observe it, the
processor passes ``None`` (which ``execute``'s signature allows) instead.

"Provably" is decided once per strategy, conservatively, from the code of its ``execute``:
the state is unseen only when ``execute`` is a plain Python method that takes it as its
fifth positional parameter and never mentions that parameter (no read, no closure over
it, no ``locals()`` / ``vars()`` / frame access, no ``eval`` / ``exec``), and ``on_error``
is the base class's no-op. Anything else (a decorated or ``*args`` ``execute``, a mock, a
callable object, an ``on_error`` of its own) counts as reading it.
"""

from __future__ import annotations

import dis
from types import CodeType, FunctionType
from typing import Any, Final

__all__ = ["reads_retry_state"]

#: Names through which code can reach its own locals without naming them.
_INTROSPECTION: Final = frozenset(
    {"locals", "vars", "eval", "exec", "currentframe", "_getframe", "f_locals", "getframeinfo"}
)
#: ``execute(self, prompt, attempt, timeout, state)``: the state is local number 4.
_STATE_POSITION: Final = 4


def reads_retry_state(strategy: object, base_on_error: Any) -> bool:
    """Whether `strategy` may observe the `RetryState` it is given (see the module doc).

    `base_on_error` is the base class's ``on_error`` function: a strategy that overrides
    it gets the state there.
    """
    try:
        on_error = getattr(strategy, "on_error", None)
        if on_error is not None and getattr(on_error, "__func__", None) is not base_on_error:
            return True
        function = getattr(getattr(strategy, "execute", None), "__func__", None)
        if type(function) is not FunctionType:
            return True
        return _mentions_parameter(function.__code__, _STATE_POSITION)
    except Exception:
        return True  # an odd object (a __getattr__ that raises, unreadable code): assume so


def _mentions_parameter(code: CodeType, position: int) -> bool:
    if code.co_argcount <= position:
        return True  # the state lands in *args, or the call fails anyway
    name = code.co_varnames[position]
    if name in code.co_cellvars or not _INTROSPECTION.isdisjoint(code.co_names):
        return True
    for instruction in dis.get_instructions(code):
        value = instruction.argval
        if value == name or (type(value) is tuple and name in value):
            return True
    return False
