"""``python -m async_batch_llm.testing.simulator``: run the provider simulator until Ctrl-C."""

from __future__ import annotations

import sys

from async_batch_llm.testing.simulator._cli import main

if __name__ == "__main__":
    sys.exit(main())
