"""Every example runs offline to completion, and the README shows the right commands and code.

Examples run as subprocesses with every provider API key removed from the environment, so a
key on the developer's machine can never make the test suite call (and pay for) a real API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"
# Modules starting with "_" are shared helpers, not examples.
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))
KEY_VARIABLES = ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "ANTHROPIC_API_KEY")

# The examples the documentation promises, each switching between simulator and real provider.
PROVIDER_EXAMPLES = (
    "quickstart.py",
    "async_with.py",
    "custom_strategy.py",
    "structured_output.py",
    "gemini_cached.py",
    "middleware_observers.py",
    "progress_postprocessing.py",
    "dry_run.py",
)

# Every example ends with a summary line such as "998 succeeded, 2 failed"; the quick start
# prints a table whose rows must all be there.
SUMMARY = re.compile(r"^\d+ succeeded, \d+ failed$", re.MULTILINE)
QUICKSTART_ROWS = (
    "items",
    "succeeded",
    "failed",
    "retries",
    "rate-limit hits",
    "cooldowns",
    "tokens in / out",
    "throughput",
    "wall time",
    "rate control",
)
# The full quick start paces 1,000 prompts to a 600-per-minute quota (about 45 s); the test
# sends fewer, which the quota admits at once.
QUICKSTART_TEST_COUNT = 100


# Docs pages show some examples' exact output under "<!-- output: examples/NAME.py -->".
OUTPUT_BLOCK = re.compile(r"<!-- output: (examples/[\w.]+) -->\n```text\n(.*?)```", re.DOTALL)
SIMULATOR_URL = re.compile(r"http://127\.0\.0\.1:\d+")


def documented_outputs() -> dict[str, list[tuple[str, str]]]:
    """``example file name -> [(docs page, output shown there)]``."""
    found: dict[str, list[tuple[str, str]]] = {}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for match in OUTPUT_BLOCK.finditer(page.read_text(encoding="utf-8")):
            name = Path(match.group(1)).name
            found.setdefault(name, []).append((str(page.relative_to(ROOT)), match.group(2)))
    return found


def normalise(output: str) -> str:
    """The simulator's port differs from run to run; trailing spaces do not matter."""
    lines = SIMULATOR_URL.sub("http://127.0.0.1:PORT", output).splitlines()
    return "\n".join(line.rstrip() for line in lines).strip()


def offline_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in KEY_VARIABLES}


def run_example(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
        stdin=subprocess.DEVNULL,
        env=offline_env(),
    )


@pytest.fixture
def provider_helper(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/_provider.py, imported the way the examples import it."""
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    import _provider

    yield _provider
    sys.modules.pop("_provider", None)


def test_examples_exist() -> None:
    """The examples folder holds the quick start, the README's example and every documented one."""
    names = {path.name for path in EXAMPLES}
    assert {"quickstart.py", "minimal.py", *PROVIDER_EXAMPLES} <= names


@pytest.mark.parametrize("name", PROVIDER_EXAMPLES)
def test_provider_examples_share_the_switch(name: str) -> None:
    """Each provider example takes --real from the shared helper instead of its own copy."""
    source = (EXAMPLES_DIR / name).read_text(encoding="utf-8")
    assert "from _provider import" in source
    assert "parse_args(" in source


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if p.name != "quickstart.py"], ids=lambda path: path.name
)
def test_example_runs_offline_and_prints_a_summary(path: Path) -> None:
    """The example exits with status 0 and ends with its "N succeeded, M failed" line."""
    completed = run_example(path)
    assert completed.returncode == 0, completed.stderr
    assert SUMMARY.search(completed.stdout), completed.stdout
    assert "Traceback" not in completed.stderr, completed.stderr
    for page, shown in documented_outputs().get(path.name, []):
        assert normalise(shown) == normalise(completed.stdout), f"{page} shows other output"


def test_documented_outputs_name_examples() -> None:
    """Each output block in the docs belongs to an example that exists (and so is run)."""
    outputs = documented_outputs()
    assert len(outputs) >= 4
    assert set(outputs) <= {path.name for path in EXAMPLES}


def test_quickstart_prints_the_summary_table() -> None:
    """The quick start runs offline and prints every row of its summary table."""
    completed = run_example(EXAMPLES_DIR / "quickstart.py", "--count", str(QUICKSTART_TEST_COUNT))
    assert completed.returncode == 0, completed.stderr
    stdout = completed.stdout
    assert "provider simulator" in stdout
    assert re.search(r"^Summary\s*$", stdout, re.MULTILINE), stdout
    for row in QUICKSTART_ROWS:
        assert re.search(rf"^\s*{re.escape(row)}\s+\S", stdout, re.MULTILINE), row
    counts = {
        label: int(value.replace(",", ""))
        for label, value in re.findall(
            r"^\s*(items|succeeded|failed)\s+([\d,]+)\s*$", stdout, re.MULTILINE
        )
    }
    assert counts["items"] == QUICKSTART_TEST_COUNT
    assert counts["succeeded"] + counts["failed"] == QUICKSTART_TEST_COUNT
    # Every retry is logged, in the demo's format (in a terminal, above the bar).
    retries = re.search(r"^\s*retries\s+([\d,]+)\s*$", stdout, re.MULTILINE)
    assert retries is not None, stdout
    logged = re.findall(
        r"^\d\d:\d\d:\d\d WARNING Item doc-\d+ attempt \d/5 failed \(.*\); retrying in ",
        completed.stderr,
        re.MULTILINE,
    )
    assert len(logged) == int(retries.group(1).replace(",", "")), completed.stderr
    # The progress display printed its final state (stdout is not a terminal here).
    assert re.search(rf"{QUICKSTART_TEST_COUNT}/{QUICKSTART_TEST_COUNT}", stdout), stdout


def test_getting_started_shows_every_quickstart_row() -> None:
    """The sample output in the quick-start walk-through has every row the script prints."""
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    sample = page.split("## The quick start, step by step", 1)[1].split("```text\n", 1)[1]
    sample = sample.split("```", 1)[0]
    for row in QUICKSTART_ROWS:
        assert re.search(rf"^\s*{re.escape(row)}\s+\S", sample, re.MULTILINE), row


def test_quickstart_real_without_a_key_says_which_variable_to_set() -> None:
    """--real with no OPENAI_API_KEY exits with status 2 and a message naming the variable."""
    completed = run_example(EXAMPLES_DIR / "quickstart.py", "--real")
    assert completed.returncode == 2
    assert "OPENAI_API_KEY" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""


@pytest.mark.parametrize(
    ("provider", "variables"),
    [("openai", ["OPENAI_API_KEY"]), ("gemini", ["GEMINI_API_KEY", "GOOGLE_API_KEY"])],
)
def test_real_without_a_key_exits_before_any_work(
    provider_helper: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    provider: str,
    variables: list[str],
) -> None:
    """parse_args exits with status 2 and names every variable that would hold the key."""
    monkeypatch.setattr(sys, "argv", ["example.py", "--real"])
    with pytest.raises(SystemExit) as exit_info:
        provider_helper.parse_args("An example.", provider)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    for variable in variables:
        assert variable in message
    assert "--real" in message


def test_real_with_a_key_is_accepted(
    provider_helper: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the key set, --real parses and the key is the one the endpoint will use."""
    monkeypatch.setattr(sys, "argv", ["example.py", "--real"])
    monkeypatch.setenv("GOOGLE_API_KEY", "from-the-environment")
    args = provider_helper.parse_args("An example.", "gemini")
    assert args.real is True
    assert provider_helper.api_key("gemini") == "from-the-environment"


def test_without_real_no_key_is_needed(
    provider_helper: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default (offline) mode parses without any API key in the environment."""
    monkeypatch.setattr(sys, "argv", ["example.py"])
    args = provider_helper.parse_args("An example.", "openai")
    assert args.real is False


def test_progress_example_writes_jsonl_where_asked(tmp_path: Path) -> None:
    """--out receives one JSON line per item, failures included, each naming its source line."""
    out = tmp_path / "results.jsonl"
    completed = run_example(EXAMPLES_DIR / "progress_postprocessing.py", "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 100
    assert {record["line"] for record in records} == set(range(100))
    failed = [record for record in records if not record["ok"]]
    assert failed
    assert all(record["error"].startswith("ValueError") for record in failed)


def test_readme_minimal_example_is_examples_minimal() -> None:
    """The README's "Minimal example" code block is examples/minimal.py, character for character."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Minimal example", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no python code block under '## Minimal example'"
    assert block.group(1) == (EXAMPLES_DIR / "minimal.py").read_text(encoding="utf-8")


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


def test_demo_installs_what_the_quickstart_imports() -> None:
    """scripts/demo installs the extras the quick start needs: pydantic-ai, simulator, progress."""
    demo = (ROOT / "scripts" / "demo").read_text(encoding="utf-8")
    match = re.search(r'ensure_venv "([^"]*)"', demo)
    assert match is not None
    assert set(match.group(1).split(",")) >= {"pydantic-ai", "simulator", "progress"}
