"""The ``abl`` command line: a JSONL file of requests in, a JSONL file of results out.

Installed as ``abl`` and ``async-batch-llm`` (extra ``cli``); ``python -m async_batch_llm.cli``
runs it too. See the command-line guide for every option.
"""

from __future__ import annotations

from async_batch_llm.cli._app import main

__all__ = ["main"]
