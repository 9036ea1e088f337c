"""Suite-wide settings: hypothesis profiles.

``HYPOTHESIS_PROFILE=ci`` (set by scripts/test) runs a fixed, derandomized sequence of
examples, so a failure in CI fails the same way on every machine; the default profile
explores new examples on every run.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
