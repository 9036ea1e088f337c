"""The shell session of the command-line guide runs as pasted (on a free port)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "cli.md"
SESSION = re.compile(r"<!-- cli-session -->\n```bash\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_guide_session_runs_and_its_rerun_replays(tmp_path: Path) -> None:
    match = SESSION.search(GUIDE.read_text(encoding="utf-8"))
    assert match is not None, "the guide's session block is gone"
    script = match.group("body").replace("8765", str(free_port()))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith("_API_KEY") and not key.endswith("_BASE_URL")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["q1", "q2", "q3"]
    assert all(line["ok"] and line["replayed"] for line in lines)
    assert {line["id"]: line["metadata"] for line in lines}["q1"] == {"topic": "geo"}
    assert "3 item(s)" in done.stdout + done.stderr


README_SECTION = re.compile(
    r"^## From the command line\n.*?```bash\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE
)


def test_the_readme_command_line_block_runs_as_pasted(tmp_path: Path) -> None:
    match = README_SECTION.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert match is not None, "the README's command-line block is gone"
    script = match.group("body").replace("8765", str(free_port()))
    env = {key: value for key, value in os.environ.items() if not key.endswith("_API_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["1", "2", "3"]
    assert all(line["ok"] and line["cost_usd"] is not None for line in lines)
