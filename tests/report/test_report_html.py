"""`render_html`: one self-contained page, checked as text and in headless Chromium."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

import browser
from async_batch_llm.report import (
    IntervalPoint,
    ItemRow,
    LatencyStats,
    ModelCost,
    RunReport,
    ScopePoint,
    render_html,
)
from browser import open_page, png_size

CHARTS = [
    "chart-throughput",
    "chart-scopes",
    "chart-latency",
    "chart-attempts",
    "chart-cost-time",
    "chart-cost-model",
]
TABLES = ["table-slowest", "table-failed", "table-categories"]

# Every chart drawn by plotly.js (it adds the class and the SVG once a plot is drawn).
CHARTS_DRAWN = """() => {
    const charts = [...document.querySelectorAll("div.chart")];
    return charts.length > 0 && charts.every(
        (c) => c.classList.contains("js-plotly-plot") && c.querySelector("svg.main-svg")
    );
}"""

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

HOSTILE_ERROR = "</script><script>alert(1)</script>"
HOSTILE_ID = "<img src=x onerror=alert(2)>"
HOSTILE_MODEL = "<b onmouseover=alert(3)>m'\"&amp;</b>"
HOSTILE_SCOPE = '"><svg onload=alert(4)>'
HOSTILE_TITLE = "<script>alert(5)</script> & run"


def make_report(
    points: int = 60,
    scopes: int = 3,
    *,
    model: str = "gpt-4o-mini",
    scope_name: str = "openai:gpt-4o-mini",
    item_id: str = "item-7",
    error: str = "HTTP 500: upstream said no",
    title: str = "Nightly batch",
) -> RunReport:
    """A run of two sessions: `points` intervals of 10 s, `scopes` scopes sampled with them."""
    timeline = [
        IntervalPoint(
            at=T0 + 10 * (i + 1),
            elapsed=10.0 * (i + 1),
            session=1 if i < points // 2 else 2,
            seconds=10.0,
            succeeded=40 + round(10 * math.sin(i / 7)),
            failed=i % 3,
            replayed=5 if i < 3 else 0,
            attempts=50,
            rate_limited=i % 5,
            cost_usd=None if i % 13 == 0 else 0.01 + i / 1000,
        )
        for i in range(points)
    ]
    scope_points = [
        ScopePoint(
            at=T0 + 10 * (i + 1),
            elapsed=10.0 * (i + 1),
            scope=scope_name if k == 0 else f"{scope_name}-{k}",
            limit_rpm=None if i < 2 else 500.0 + 100 * k,
            limit_source="configured" if i < points // 3 else "header",
            achieved_rpm=300 + 50 * k + 40 * math.sin(i / 5),
            rate_limited=i % 4,
            utilisation=0.7,
            paused=i % 17 == 0,
        )
        for i in range(points)
        for k in range(scopes)
    ]
    return RunReport(
        source="/data/runs/nightly.sqlite",
        title=title,
        generated_at=T0 + 10 * points + 5,
        sessions=2,
        started_at=T0,
        total=2400,
        succeeded=2300,
        failed=60,
        unfinished=40,
        attempts=2600,
        rate_limited=120,
        cost_usd=3.21,
        models=[model, "claude-haiku"],
        timeline=timeline,
        scopes=scope_points,
        latency=[
            LatencyStats(model=model, calls=2000, p50=0.8, p90=2.1, p99=4.5, max=9.9),
            LatencyStats(model="claude-haiku", calls=600, p50=0.6, p90=1.5, p99=3.0, max=7.2),
        ],
        attempts_histogram={0: 15, 1: 2100, 2: 200, 3: 85},
        cost_by_model=[
            ModelCost(model, items=1800, input_tokens=900_000, output_tokens=80_000, cost_usd=3.21),
            ModelCost("claude-haiku", items=600, input_tokens=1, output_tokens=1, cost_usd=None),
        ],
        failures_by_category={"server_error": 40, "timeout": 20},
        slowest=[
            ItemRow(item_id=f"slow-{i}", model=model, seconds=60.0 - i, attempts=2)
            for i in range(20)
        ],
        failed_items=[
            ItemRow(item_id=item_id, model=model, attempts=3, error=error, category="server_error"),
            ItemRow(item_id="item-9", model=None, attempts=1, error=None, category=None),
        ],
        notes=["Session 1 recorded no scope data before its restart."],
    )


def write(tmp_path: Path, report: RunReport, name: str = "report.html") -> Path:
    path = tmp_path / name
    path.write_text(render_html(report), encoding="utf-8")
    return path


def outside_plotlyjs(page: str) -> str:
    """The document without the inlined plotly.js (whose code mentions URLs of its own)."""
    assert page.count(get_plotlyjs()) == 1
    return page.replace(get_plotlyjs(), "")


# --- as text ----------------------------------------------------------------------------------


def test_plotlyjs_is_inlined_once_and_nothing_is_fetched() -> None:
    page = render_html(make_report())

    assert page.count(get_plotlyjs()) == 1
    assert 'src="http' not in page
    rest = outside_plotlyjs(page)
    assert "<script src" not in rest
    assert "<link" not in rest
    assert "@import" not in rest
    assert "http:" not in rest
    assert "https:" not in rest
    assert "mathjax" not in rest.lower().replace("mathjaxconfig: 'local'", "")
    for chart in CHARTS:
        assert rest.count(f'<div class="chart" id="{chart}">') == 1


def test_report_text_is_escaped_in_the_page() -> None:
    page = outside_plotlyjs(
        render_html(
            make_report(
                model=HOSTILE_MODEL,
                scope_name=HOSTILE_SCOPE,
                item_id=HOSTILE_ID,
                error=HOSTILE_ERROR,
                title=HOSTILE_TITLE,
            )
        )
    )

    for hostile in (HOSTILE_ERROR, HOSTILE_ID, HOSTILE_MODEL, HOSTILE_SCOPE, HOSTILE_TITLE):
        assert hostile not in page
    assert "<script>alert" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    # In the figures' JSON, no string can end a <script> element.
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    assert len(scripts) == 2 + len(CHARTS)  # plotly's window config, plotly.js, one per chart
    for script in scripts[2:]:
        assert "<" not in script


def test_a_long_error_is_cut() -> None:
    page = render_html(make_report(error="x" * 50_000))
    assert "x" * 50_000 not in page
    assert "48000 more characters" in page


def test_unknown_cost_and_unpriced_models_are_said() -> None:
    report = make_report()
    report.cost_usd = None
    page = render_html(report)
    assert "<li>Cost<b>unknown</b></li>" in page
    assert 'id="unpriced-models">No known price for: claude-haiku.' in page


def test_the_size_follows_the_bounded_lists_not_the_items() -> None:
    small = render_html(make_report(points=10, scopes=5)).encode()
    large = render_html(make_report(points=2_000, scopes=5)).encode()
    assert len(large) < 6_000_000
    assert len(large) - len(small) < 1_000_000


def test_without_plotly_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=re.escape("pip install plotly")):
        render_html(make_report())


# --- in Chromium ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_without_chromium_a_test_skips_except_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.setattr(browser.os, "access", lambda path, mode: False)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install chromium"):
        browser.chromium_executable()


def test_every_chart_is_drawn_offline_without_errors(tmp_path: Path) -> None:
    html_file = write(tmp_path, make_report())
    shot = tmp_path / "report.png"

    with open_page(html_file, wait_for=CHARTS_DRAWN, screenshot=shot) as run:
        for chart in CHARTS:
            assert run.evaluate(
                "(id) => document.getElementById(id).classList.contains('js-plotly-plot')", chart
            ), chart
            assert run.count(f"#{chart} svg.main-svg") >= 1, chart
            assert run.evaluate("(id) => document.getElementById(id).data.length", chart) > 0
        # The packed series reached plotly.js whole: 60 intervals and one gap between sessions.
        assert (
            run.evaluate("document.getElementById('chart-throughput')._fullData[0]._length") == 61
        )
        assert run.evaluate("document.getElementById('chart-scopes').data.length") == 6
        # Epoch milliseconds on a date axis: the run's day, in UTC.
        x_range = run.evaluate(
            "document.getElementById('chart-throughput')._fullLayout.xaxis.range"
        )
        assert str(x_range[0]).startswith("2026-01-01")
        assert run.count("#table-slowest tbody tr") == 20
        assert run.count("#table-failed tbody tr") == 2
        assert run.text("#notes") == "Session 1 recorded no scope data before its restart."
        assert run.count(".no-data") == 0

        assert run.console_errors == []
        assert run.page_errors == []
        assert run.requests == []
        assert run.dialogs == []

    assert shot.stat().st_size > 10_000
    width, height = png_size(shot)
    assert width >= 800
    assert height > 900  # the whole page, not only the viewport


def test_an_empty_report_says_no_data(tmp_path: Path) -> None:
    report = RunReport(source="empty.sqlite", title="Empty", generated_at=T0)
    html_file = write(tmp_path, report)

    with open_page(html_file, screenshot=tmp_path / "empty.png") as run:
        assert run.count("div.chart") == 0
        for section in [*CHARTS, *TABLES]:
            note = run.text(f'.no-data[data-for="{section}"]')
            assert note.startswith("No data: "), section
        assert run.text("#totals").split() == [
            *("Items", "0", "Succeeded", "0", "Failed", "0", "Unfinished", "0"),
            *("Attempts", "0", "429s", "0", "Cost", "unknown"),
        ]
        assert run.console_errors == []
        assert run.page_errors == []
        assert run.requests == []


def test_hostile_text_shows_literally_and_runs_nothing(tmp_path: Path) -> None:
    report = make_report(
        model=HOSTILE_MODEL,
        scope_name=HOSTILE_SCOPE,
        item_id=HOSTILE_ID,
        error=HOSTILE_ERROR,
        title=HOSTILE_TITLE,
    )
    report.notes.append(HOSTILE_ERROR)
    report.failures_by_category[HOSTILE_ID] = 1
    html_file = write(tmp_path, report)

    with open_page(html_file, wait_for=CHARTS_DRAWN) as run:
        assert run.evaluate("document.title") == HOSTILE_TITLE
        assert run.text("h1") == HOSTILE_TITLE
        assert run.text("#table-failed tbody tr td.id") == HOSTILE_ID
        assert run.text("#table-failed tbody tr td.error") == HOSTILE_ERROR
        assert run.text("#table-failed tbody tr td.model") == HOSTILE_MODEL
        assert HOSTILE_ERROR in run.text("#notes")
        assert HOSTILE_ID in run.text("#table-categories")
        # In the charts too: plotly draws its labels from HTML, so they were escaped for it.
        legend = run.evaluate(
            "[...document.querySelectorAll('#chart-scopes .legendtext')].map(e => e.textContent)"
        )
        assert f"{HOSTILE_SCOPE} achieved" in legend
        ticks = run.evaluate(
            "[...document.querySelectorAll('#chart-latency .xtick text')].map(e => e.textContent)"
        )
        assert HOSTILE_MODEL in ticks

        assert run.count("#table-failed img") == 0
        assert run.count("svg[onload]") == 0
        assert run.dialogs == []
        assert run.page_errors == []
        assert run.console_errors == []
        assert run.requests == []  # an <img src=x> would have asked for file:///.../x


def test_a_large_report_is_drawn_whole(tmp_path: Path) -> None:
    html_file = write(tmp_path, make_report(points=2_000, scopes=5))

    with open_page(html_file, wait_for=CHARTS_DRAWN) as run:
        assert run.evaluate("document.getElementById('chart-scopes').data.length") == 10
        lengths = run.evaluate(
            "document.getElementById('chart-scopes')._fullData.map(t => t._length)"
        )
        assert lengths == [2_000] * 10
        assert run.console_errors == []
        assert run.page_errors == []
        assert run.requests == []


def test_the_tables_need_no_javascript(tmp_path: Path) -> None:
    html_file = write(tmp_path, make_report(item_id=HOSTILE_ID))

    with open_page(html_file, javascript=False) as run:
        assert run.count("#table-slowest tbody tr") == 20
        assert run.text("#table-failed tbody tr td.id") == HOSTILE_ID
        assert "The charts need JavaScript" in run.text("body")
        assert run.requests == []
