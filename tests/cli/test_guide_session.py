"""The shell session of the command-line guide runs as pasted (on a free port)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "cli.md"
SESSION = re.compile(r"<!-- cli-session -->\n```bash\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_block(page: Path, block: re.Pattern[str], directory: Path) -> tuple[str, list[Any]]:
    """Run the bash block `block` finds on `page` in `directory` (the simulator on a free
    port, no provider key or base URL); its output and the lines of results.jsonl."""
    match = block.search(page.read_text(encoding="utf-8"))
    assert match is not None, f"the block is gone from {page.name}"
    script = match.group("body").replace("8765", str(free_port()))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith("_API_KEY") and not key.endswith("_BASE_URL")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = (directory / "results.jsonl").read_text().splitlines()
    return done.stdout + done.stderr, [json.loads(line) for line in results]


def test_the_guide_session_runs_and_its_rerun_replays(tmp_path: Path) -> None:
    output, lines = run_block(GUIDE, SESSION, tmp_path)
    assert sorted(line["id"] for line in lines) == ["q1", "q2", "q3"]
    assert all(line["ok"] and line["replayed"] for line in lines)
    assert {line["id"]: line["metadata"] for line in lines}["q1"] == {"topic": "geo"}
    assert "3 item(s)" in output
    report = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert report.lower().startswith("<!doctype html>")
    assert "wrote report.html" in output


README_SECTION = re.compile(
    r"^## From the command line\n.*?```bash\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE
)


def test_the_readme_command_line_block_runs_as_pasted(tmp_path: Path) -> None:
    _, lines = run_block(ROOT / "README.md", README_SECTION, tmp_path)
    assert sorted(line["id"] for line in lines) == ["1", "2", "3"]
    assert all(line["ok"] and line["cost_usd"] is not None for line in lines)
