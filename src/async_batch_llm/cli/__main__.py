"""``python -m async_batch_llm.cli``."""

from async_batch_llm.cli._app import main

main()
