"""Every example runs to completion, and the README shows ``examples/minimal.py`` verbatim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# Every example ends with a summary line such as "998 succeeded, 2 failed"; the quick start
# prints a table whose rows must all be there.
SUMMARY = re.compile(r"\d+ succeeded, \d+ failed")
QUICKSTART_ROWS = (
    "succeeded",
    "failed",
    "retries",
    "rate-limit hits",
    "cooldowns",
    "tokens in / out",
    "throughput",
    "wall time",
)


def run_example(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_examples_exist() -> None:
    """The examples folder holds the quick start and the README's minimal example."""
    names = {path.name for path in EXAMPLES}
    assert {"quickstart.py", "minimal.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_runs_and_prints_a_summary(path: Path) -> None:
    """The example exits with status 0 and prints its summary."""
    completed = run_example(path)
    assert completed.returncode == 0, completed.stderr
    if path.name == "quickstart.py":
        check_quickstart_summary(completed.stdout)
    else:
        assert SUMMARY.search(completed.stdout), completed.stdout


def check_quickstart_summary(stdout: str) -> None:
    assert "Summary" in stdout
    for row in QUICKSTART_ROWS:
        assert re.search(rf"^  {re.escape(row)}\s+\S", stdout, re.MULTILINE), row
    counts = {
        label: int(value.replace(",", ""))
        for label, value in re.findall(
            r"^  (items|succeeded|failed)\s+([\d,]+)", stdout, re.MULTILINE
        )
    }
    assert counts["items"] == 1_000
    assert counts["succeeded"] + counts["failed"] == 1_000


def test_readme_minimal_example_is_examples_minimal() -> None:
    """The README's "Minimal example" code block is examples/minimal.py, character for character."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Minimal example", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no python code block under '## Minimal example'"
    assert block.group(1) == (ROOT / "examples" / "minimal.py").read_text(encoding="utf-8")


def test_readme_quick_start_commands() -> None:
    """The first code block of the README's Quick start holds exactly the two script commands."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.DOTALL)
    assert block is not None
    assert block.group(1).splitlines() == ["./scripts/demo", "./scripts/test"]
    for script in ("demo", "test"):
        path = ROOT / "scripts" / script
        assert path.stat().st_mode & 0o111, f"scripts/{script} is not executable"
