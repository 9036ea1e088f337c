"""Every Python snippet in the README and the docs runs as pasted.

Each ```python / ```py block of README.md, CHANGELOG.md (rendered as docs/changelog.md) and
docs/**/*.md is a complete program: it is written to a file in a fresh temporary directory
and run there with this interpreter, in its own subprocess, with every provider API key and
base URL removed from the environment (so it can never reach, or pay for, a real provider)
and with a timeout (so a hang fails instead of blocking the suite). It must exit with status
0 and print no traceback. A snippet that needs a provider starts the bundled
``ProviderSimulator`` itself. Blocks share nothing: a page that builds a program up in steps
must show the whole program in one block.

Two kinds of block are not run here, both visible on the page:

* a block that only includes an example file (``--8<-- "examples/NAME.py"``, or a section of
  it): tests/test_examples.py runs the example. The example must be self-contained (no
  import of the examples' private helper ``_provider``), and a page that shows a section of
  it shows the whole file too, so that what the page shows can be pasted;
* a block right under ``<!-- snippet: no-run (the reason) -->``: one that cannot run
  offline. The reason is required, there may be only a few, and each is reported as a
  skipped test with its page, line and reason.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]

# A generous limit per snippet: they take a few seconds (mostly imports); a hang fails.
TIMEOUT_SECONDS = 60.0
# A snippet that starts a local Ray cluster spends most of a minute on Ray itself (the
# cluster, then actors that wait for a CPU while another snippet runs on the other core):
# seen at 60 s in CI. Its page gets longer, still bounded.
SLOW_PAGES = {"docs/guides/ray.md": 180.0}
# Snippets run two at a time (the suite runs on 2 cores); each is its own process.
PARALLEL_RUNS = 2
# Opt-outs must stay rare: raise this only with a good reason.
MAX_NO_RUN = 3

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
PYTHON = ("python", "py")
INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"\s*$')
MARKER = re.compile(r"^\s*<!--\s*snippet:(?P<text>.*?)-->\s*$")
NO_RUN = re.compile(r"^\s*no-run\s+\((?P<reason>[^()]*\w[^()]*)\)\s*$")
# Where a traceback points into the snippet's file.
TRACEBACK_LINE = re.compile(r'File "[^"]*?(?P<name>[\w-]+\.py)", line (?P<line>\d+)')


class MarkerError(ValueError):
    """A ``<!-- snippet: ... -->`` comment that the runner does not understand."""


@dataclass(frozen=True)
class Snippet:
    """One fenced Python block of a page."""

    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    body: str  # dedented
    no_run: str | None = None  # the reason given in the opt-out marker

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def includes(self) -> list[tuple[str, str | None]] | None:
        """``[(path, section)]`` when the block only includes files, else ``None``."""
        lines = [line for line in self.body.splitlines() if line.strip()]
        matches = [INCLUDE.match(line) for line in lines]
        if not lines or not all(matches):
            return None
        return [(m.group("path"), m.group("section")) for m in matches if m is not None]

    @property
    def script_name(self) -> str:
        """The snippet's file name, after its page and line (shown in tracebacks)."""
        stem = re.sub(r"\W+", "_", self.page.removesuffix(".md")).strip("_")
        return f"{stem}_line{self.line}.py"


def parse_snippets(page: str, text: str) -> list[Snippet]:
    """The Python blocks of one page, with their opt-out markers.

    Raises:
        MarkerError: A ``<!-- snippet: ... -->`` comment is malformed, or is not directly
            above a Python block (only blank lines may come between).
    """
    lines = text.splitlines()
    snippets: list[Snippet] = []
    used: set[int] = set()
    for match in FENCE.finditer(text):
        if match.group("lang") not in PYTHON:
            continue
        line = text.count("\n", 0, match.start()) + 1
        above = line - 2  # index of the line above the fence
        while above >= 0 and not lines[above].strip():
            above -= 1
        reason = None
        marker = MARKER.match(lines[above]) if above >= 0 else None
        if marker is not None:
            used.add(above)
            no_run = NO_RUN.match(marker.group("text"))
            if no_run is None:
                msg = (
                    f"{page}:{above + 1}: the only snippet marker is "
                    f"'<!-- snippet: no-run (why it cannot run offline) -->', got {lines[above]!r}"
                )
                raise MarkerError(msg)
            reason = no_run.group("reason").strip()
        body = textwrap.dedent(match.group("body"))
        snippets.append(Snippet(page, line, body, reason))
    for index, source_line in enumerate(lines):
        if MARKER.match(source_line) and index not in used:
            msg = f"{page}:{index + 1}: a snippet marker must be directly above a ```python block"
            raise MarkerError(msg)
    return snippets


def all_snippets() -> list[Snippet]:
    found: list[Snippet] = []
    for path in PAGES:
        found += parse_snippets(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
    return found


SNIPPETS = all_snippets()
INCLUDE_ONLY = [snippet for snippet in SNIPPETS if snippet.includes is not None]
# (page, file) for every file a page includes whole, e.g. in a "The whole example" block.
WHOLE_INCLUDES = {
    (snippet.page, target)
    for snippet in INCLUDE_ONLY
    for target, section in snippet.includes or []
    if section is None
}
PROGRAMS = [snippet for snippet in SNIPPETS if snippet.includes is None]


# -- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str
    seconds: float


def offline_env() -> dict[str, str]:
    """This environment without provider API keys or base URLs (OPENAI_BASE_URL, ...)."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.upper().endswith(("_API_KEY", "_BASE_URL"))
    }


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output or ""


def run_snippet(snippet: Snippet, workdir: Path, timeout: float = TIMEOUT_SECONDS) -> Outcome:
    """Run the snippet as a program of its own, in ``workdir``."""
    (workdir / snippet.script_name).write_text(snippet.body, encoding="utf-8")
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            [sys.executable, snippet.script_name],
            cwd=workdir,
            env=offline_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        seconds = time.perf_counter() - started
        return Outcome(None, _text(exc.stdout), _text(exc.stderr), seconds)
    seconds = time.perf_counter() - started
    return Outcome(completed.returncode, completed.stdout, completed.stderr, seconds)


def _tail(text: str, lines: int) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "(nothing)"


def failure_report(snippet: Snippet, outcome: Outcome, timeout: float) -> str | None:
    """Why the run failed, pointing at the page and line, or ``None`` if it passed."""
    if outcome.returncode == 0 and "Traceback" not in outcome.stderr:
        return None
    if outcome.returncode is None:
        what = f"did not finish within {timeout:.0f} s"
    elif outcome.returncode == 0:
        what = "exited with status 0 but printed a traceback"
    else:
        what = f"exited with status {outcome.returncode}"
    report = [
        f"{snippet.id}: the ```python block starting here {what} ({outcome.seconds:.1f} s); "
        f"it must run as pasted."
    ]
    # The snippet's frames, outermost first; line n of the block is line (fence + n) of the page.
    frames = [
        f"{snippet.page}:{snippet.line + int(m.group('line'))}"
        for m in TRACEBACK_LINE.finditer(outcome.stderr)
        if m.group("name") == snippet.script_name
    ]
    if frames:
        callers = list(dict.fromkeys(frame for frame in frames[:-1] if frame != frames[-1]))
        through = f" (called from {', '.join(reversed(callers))})" if callers else ""
        report.append(f"The error comes from {frames[-1]}{through}.")
    report += [
        "--- stdout (end) ---",
        _tail(outcome.stdout, 15),
        "--- stderr (end) ---",
        _tail(outcome.stderr, 40),
    ]
    return "\n".join(report)


@pytest.fixture(scope="module")
def snippet_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """Start every selected snippet, ``PARALLEL_RUNS`` at a time; each test awaits its own."""
    selected = [
        item.callspec.params["snippet"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_snippet_runs_as_pasted"
        and hasattr(item, "callspec")
    ]
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        runs = {
            snippet.id: pool.submit(
                run_snippet,
                snippet,
                tmp_path_factory.mktemp(snippet.script_name[:-3]),
                timeout_for(snippet),
            )
            for snippet in selected
            if isinstance(snippet, Snippet) and snippet.no_run is None
        }
        yield runs
        for future in runs.values():
            future.cancel()


def _with_time_bound(snippet: Snippet) -> Any:
    """The snippet as a test parameter; a slow page's test gets room for its wait too."""
    if snippet.page not in SLOW_PAGES:
        return snippet
    return pytest.param(snippet, marks=pytest.mark.timeout(SLOW_PAGES[snippet.page] + 60))


@pytest.mark.parametrize(
    "snippet", [_with_time_bound(s) for s in PROGRAMS], ids=lambda snippet: snippet.id
)
def test_snippet_runs_as_pasted(snippet: Snippet, snippet_runs: dict[str, Future[Outcome]]) -> None:
    """The block runs as a program of its own, offline, and exits with status 0."""
    if snippet.no_run is not None:
        pytest.skip(f"{snippet.id} is marked no-run: {snippet.no_run}")
    outcome = snippet_runs[snippet.id].result()
    report = failure_report(snippet, outcome, timeout_for(snippet))
    if report is not None:
        pytest.fail(report, pytrace=False)


def timeout_for(snippet: Snippet) -> float:
    return SLOW_PAGES.get(snippet.page, TIMEOUT_SECONDS)


# -- blocks that are not run here -------------------------------------------------------------


def local_helper_modules() -> set[str]:
    """The examples' private helpers (``_provider``): importable only from examples/."""
    return {path.stem for path in EXAMPLES_DIR.glob("_*.py")}


def imported_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("snippet", INCLUDE_ONLY, ids=lambda snippet: snippet.id)
def test_included_example_is_run_and_self_contained(snippet: Snippet) -> None:
    """An included file is an example that test_examples.py runs, and it can be pasted."""
    for target, section in snippet.includes or []:
        path = ROOT / target
        if path.parent != EXAMPLES_DIR or path.suffix != ".py" or path.name.startswith("_"):
            pytest.fail(
                f"{snippet.id}: includes {target}; a ```python block may include only an "
                f"example (examples/NAME.py, which tests/test_examples.py runs), or hold the "
                f"code itself",
                pytrace=False,
            )
        helpers = imported_modules(path.read_text(encoding="utf-8")) & local_helper_modules()
        if helpers:
            pytest.fail(
                f"{snippet.id}: includes {target}, which imports the examples' private "
                f"{', '.join(sorted(helpers))}, so what the page shows cannot be pasted. Show "
                f"a self-contained program on the page instead (one that starts the simulator "
                f"itself).",
                pytrace=False,
            )
        if section is not None and (snippet.page, target) not in WHOLE_INCLUDES:
            pytest.fail(
                f"{snippet.id}: shows a part of {target} but not the whole file; add it to "
                f"{snippet.page}, e.g. in a collapsed '??? example \"The whole example\"' block",
                pytrace=False,
            )


def test_snippets_are_found() -> None:
    """The scan finds the docs' programs and includes (guards against a broken pattern)."""
    assert len(PROGRAMS) >= 15
    assert INCLUDE_ONLY
    assert {snippet.page for snippet in PROGRAMS} >= {"README.md", "docs/getting-started.md"}


def test_opt_outs_are_few_and_give_a_reason() -> None:
    """``no-run`` is for the rare block that cannot run offline, and says why."""
    opted_out = [snippet for snippet in SNIPPETS if snippet.no_run is not None]
    listing = "\n".join(f"  {snippet.id}: {snippet.no_run}" for snippet in opted_out)
    assert len(opted_out) <= MAX_NO_RUN, f"too many no-run snippets:\n{listing}"
    assert all(snippet.no_run for snippet in opted_out), listing
    assert not any(snippet.includes is not None for snippet in opted_out), (
        f"an include needs no opt-out:\n{listing}"
    )


# -- the runner itself ------------------------------------------------------------------------

PAGE = """\
# A page

```python
print("one")
```

<!-- snippet: no-run (needs a real API key) -->

```py
import os
print(os.environ["OPENAI_API_KEY"])
```

- In a list:

    ```python
    --8<-- "examples/minimal.py"
    ```

```text
not code
```
"""


def test_parse_finds_python_blocks_lines_and_opt_outs() -> None:
    """Python blocks (``python`` and ``py``, indented too) with their line and marker."""
    first, second, third = parse_snippets("page.md", PAGE)
    assert (first.line, first.body, first.no_run) == (3, 'print("one")\n', None)
    assert (second.line, second.no_run) == (9, "needs a real API key")
    assert third.includes == [("examples/minimal.py", None)]
    assert first.includes is None
    assert first.script_name == "page_line3.py"


@pytest.mark.parametrize(
    "marker",
    [
        "<!-- snippet: no-run -->",  # no reason
        "<!-- snippet: no-run () -->",
        "<!-- snippet: skip (typo) -->",
    ],
)
def test_parse_rejects_malformed_markers(marker: str) -> None:
    with pytest.raises(MarkerError, match=r"page\.md:1:"):
        parse_snippets("page.md", f"{marker}\n```python\npass\n```\n")


def test_parse_rejects_a_marker_that_is_not_above_a_python_block() -> None:
    text = "<!-- snippet: no-run (why) -->\nSome prose.\n\n```python\npass\n```\n"
    with pytest.raises(MarkerError, match=r"page\.md:1: a snippet marker must be directly above"):
        parse_snippets("page.md", text)


def test_a_failing_snippet_is_reported_at_its_page_and_line(tmp_path: Path) -> None:
    """A broken snippet fails, and the report names the page line the traceback points at."""
    body = 'print("before")\n\n\ndef fail():\n    raise RuntimeError("broken")\n\n\nfail()\n'
    snippet = Snippet("docs/page.md", 10, body)
    outcome = run_snippet(snippet, tmp_path)
    report = failure_report(snippet, outcome, TIMEOUT_SECONDS)
    assert outcome.returncode == 1
    assert report is not None
    assert report.startswith("docs/page.md:10: the ```python block starting here exited with")
    assert "The error comes from docs/page.md:15 (called from docs/page.md:18)." in report
    assert "RuntimeError: broken" in report
    assert "before" in report


def test_a_hanging_snippet_fails_after_the_timeout(tmp_path: Path) -> None:
    snippet = Snippet(
        "docs/page.md", 1, "import time\nprint('waiting', flush=True)\ntime.sleep(60)\n"
    )
    outcome = run_snippet(snippet, tmp_path, timeout=1.0)
    report = failure_report(snippet, outcome, 1.0)
    assert outcome.returncode is None
    assert report is not None
    assert "did not finish within 1 s" in report
    assert "waiting" in report


def test_snippets_run_without_api_keys_and_outside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key reaches a snippet, and the examples' helpers are not importable from it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    body = (
        "import importlib.util, os\n"
        "assert 'OPENAI_API_KEY' not in os.environ and 'OPENAI_BASE_URL' not in os.environ\n"
        "assert importlib.util.find_spec('_provider') is None\n"
    )
    outcome = run_snippet(Snippet("docs/page.md", 1, body), tmp_path)
    assert outcome.returncode == 0, outcome.stderr
