"""`render_html`: a `RunReport` as one self-contained HTML document.

Built this way because a report is read long after the run, often offline, from a file
attached to a ticket or copied off a server:

* Everything is in the one file: plotly.js is inlined once in ``<head>`` and each chart is an
  empty ``<div class="chart">`` plus a ``Plotly.newPlot`` call with its figure's JSON. Nothing
  is fetched: no CDN, no MathJax, no fonts, no map tiles.
* The facts that matter without a browser's JavaScript (totals, notes, slowest and failed
  items, failures by category) are plain HTML; a chart with no data says so in text instead
  of drawing empty axes.
* Text in a report comes from a store that records whatever providers answered (error
  messages, ids, model names): it is HTML-escaped in the page and in plotly's labels, which
  plotly renders as a subset of HTML; such text never goes into a ``hovertemplate`` (where
  ``%{...}`` would be interpreted). Plotly's JSON escapes ``<``, ``>`` and ``/``, so no string
  can close a ``<script>``.
* The size follows the report's bounded lists (a downsampled timeline, capped item lists),
  never the number of items in the run; the long series (timeline, scopes) go to plotly.js
  as base64 typed arrays, a third of the size of JSON lists.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from async_batch_llm.report._model import IntervalPoint, ItemRow, RunReport, ScopePoint

__all__ = ["render_html"]

# No logo link, and charts follow the window's width. Nothing here makes plotly.js fetch.
_CONFIG_JSON = json.dumps({"displaylogo": False, "responsive": True})

# As plotly's own to_html, before plotly.js loads: it tells plotly.js to leave MathJax's
# settings alone (there is no MathJax here, and none is loaded).
_PLOTLY_WINDOW_CONFIG = "window.PlotlyConfig = {MathJaxConfig: 'local'};"

_COLOURS = {
    "succeeded": "#2ca02c",
    "failed": "#d62728",
    "replayed": "#7f7f7f",
    "interrupted": "#9467bd",
    "429": "#ff7f0e",
}
_SCOPE_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

# An error message can be a whole provider response: the table shows its start.
_MAX_ERROR_CHARS = 2000

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dl.facts dt { color: #666; }
dl.facts dd { margin: 0; }
ul.totals { display: flex; flex-wrap: wrap; gap: 0.5rem; list-style: none; padding: 0; }
ul.totals li { background: #f4f4f4; border-radius: 4px; padding: 0.4rem 0.8rem; }
ul.totals b { display: block; font-size: 1.2rem; }
.chart { width: 100%; min-height: 420px; }
.no-data { color: #666; font-style: italic; }
.note { color: #666; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.3rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, monospace;
           font-size: 0.8rem; }
"""


def render_html(report: RunReport) -> str:
    """The report as one HTML document that opens offline (plotly.js inlined)."""
    try:
        import plotly.graph_objects as go  # type: ignore[import-untyped]
        import plotly.io as pio  # type: ignore[import-untyped]
        from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "The HTML report needs plotly: pip install plotly (or this project's report "
            "extra, pip install '.[report]' in a checkout)"
        ) from exc

    def chart(chart_id: str, fig: Any) -> str:
        # validate=True: a figure plotly.js would reject fails here, not silently in a browser.
        figure_json = pio.to_json(fig, validate=True, remove_uids=True)
        return (
            f'<div class="chart" id="{chart_id}"></div>\n'
            f"<script>(function () {{ var fig = {figure_json}; "
            f'Plotly.newPlot("{chart_id}", fig.data, fig.layout, {_CONFIG_JSON}); }})();'
            "</script>"
        )

    body = "\n".join(
        [
            _header(report),
            _section("Throughput", _throughput(report.timeline, go, chart)),
            _section("Rate-limit scopes", _scopes(report.scopes, go, chart)),
            _section("Latency by model", _latency(report, go, chart)),
            _section("Items by attempts", _attempts(report.attempts_histogram, go, chart)),
            _section("Cost over time", _cost_time(report.timeline, go, chart)),
            _section("Cost by model", _cost_model(report, go, chart)),
            _section("Slowest items", _slowest_table(report.slowest)),
            _section("Failed items", _failed_table(report.failed_items)),
            _section("Failures by category", _categories_table(report.failures_by_category)),
        ]
    )
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(report.title)}</title>\n<style>{_CSS}</style>\n"
        f"<script>{_PLOTLY_WINDOW_CONFIG}</script>\n"
        f"<script>{get_plotlyjs()}</script>\n"
        "</head>\n<body>\n"
        f"{body}\n"
        "</body>\n</html>\n"
    )


# --- text -------------------------------------------------------------------------------------


def _e(text: object) -> str:
    """Text for the page (element content and quoted attributes)."""
    return html.escape(str(text), quote=True)


def _plot_text(text: object) -> str:
    """Text for a plotly label: plotly draws its labels from a subset of HTML.

    Quotes stay as they are: plotly decodes ``&amp; &lt; &gt;`` and numeric entities but
    would show ``&quot;`` literally, and without a ``<`` there is no tag to quote in.
    """
    return html.escape(str(text), quote=False)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(ts: float) -> float:
    """A time for a plotly date axis: plotly.js reads epoch milliseconds as UTC."""
    return round(ts * 1000.0)


def _packed(values: Sequence[float | None], dtype: str = "f8") -> dict[str, str]:
    """A long series as a plotly.js typed array: a third of the size of a JSON list.

    ``None`` becomes NaN, which plotly.js leaves as a gap like a JSON ``null``; ``f4``
    (7 significant digits) is plenty for a rate, not for a time in milliseconds.
    """
    code = {"f8": "d", "f4": "f"}[dtype]
    numbers = [math.nan if v is None else v for v in values]
    data = struct.pack(f"<{len(numbers)}{code}", *numbers)
    return {"dtype": dtype, "bdata": base64.b64encode(data).decode("ascii")}


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _no_data(element_id: str, why: str) -> str:
    """Said instead of the chart or table `element_id` (named for the tests and for CSS)."""
    return f'<p class="no-data" data-for="{element_id}">No data: {_e(why)}</p>'


def _section(title: str, content: str) -> str:
    return f"<section>\n<h2>{_e(title)}</h2>\n{content}\n</section>"


# --- header -----------------------------------------------------------------------------------


def _header(report: RunReport) -> str:
    facts = [
        ("Source", _e(report.source)),
        ("Generated", _e(_iso(report.generated_at))),
        (
            "First interval",
            "unknown" if report.started_at is None else _e(_iso(report.started_at)),
        ),
        ("Sessions", str(report.sessions)),
        ("Models", _e(", ".join(report.models)) if report.models else "none recorded"),
    ]
    totals = [
        ("Items", str(report.total)),
        ("Succeeded", str(report.succeeded)),
        ("Failed", str(report.failed)),
        ("Unfinished", str(report.unfinished)),
        ("Attempts", str(report.attempts)),
        ("429s", str(report.rate_limited)),
        ("Cost", _e(_money(report.cost_usd))),
    ]
    parts = [
        f"<header>\n<h1>{_e(report.title)}</h1>",
        '<dl class="facts">'
        + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
        + "</dl>",
        '<ul class="totals" id="totals">'
        + "".join(f"<li>{name}<b>{value}</b></li>" for name, value in totals)
        + "</ul>",
    ]
    if report.notes:
        parts.append(
            '<ul class="notes" id="notes">'
            + "".join(f"<li>{_e(note)}</li>" for note in report.notes)
            + "</ul>"
        )
    parts.append("<noscript><p>The charts need JavaScript; the tables do not.</p></noscript>")
    parts.append("</header>")
    return "\n".join(parts)


# --- charts -----------------------------------------------------------------------------------

_Chart = Callable[[str, Any], str]


def _layout(go: Any, **extra: Any) -> Any:
    layout = {
        "template": "plotly_white",
        "height": 420,
        "margin": {"l": 60, "r": 60, "t": 30, "b": 50},
        # Above the plot: below it, a long legend would cover the x axis title.
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        "font": {"family": "system-ui, sans-serif"},
    }
    layout.update(extra)
    return go.Layout(**layout)


def _per_minute(count: int, seconds: float) -> float | None:
    return count / seconds * 60 if seconds > 0 else None


def _rate_of(field: str) -> Callable[[IntervalPoint], float | None]:
    """The per-minute rate of one of an interval's counts."""

    def rate(point: IntervalPoint) -> float | None:
        count: int = getattr(point, field)
        return _per_minute(count, point.seconds)

    return rate


def _with_session_gaps(
    points: Sequence[IntervalPoint], value: Callable[[IntervalPoint], float | None]
) -> tuple[dict[str, str], dict[str, str]]:
    """x and y with a gap between sessions, so no line is drawn across the pause."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for i, point in enumerate(points):
        if i and point.session != points[i - 1].session:
            xs.append(None)
            ys.append(None)
        xs.append(_ms(point.at))
        ys.append(value(point))
    return _packed(xs), _packed(ys, "f4")


def _throughput(timeline: list[IntervalPoint], go: Any, chart: _Chart) -> str:
    chart_id = "chart-throughput"
    if not timeline:
        return _no_data(chart_id, "the store recorded no timeline.")
    traces = []
    labels = ["succeeded", "failed", "replayed"]
    if any(point.interrupted for point in timeline):  # a drain or a stop: shown when it happened
        labels.append("interrupted")
    for label in labels:
        xs, ys = _with_session_gaps(timeline, _rate_of(label))
        traces.append(
            go.Scatter(
                x=xs,
                y=ys,
                name=f"{label} / min",
                mode="lines",
                line={"color": _COLOURS[label]},
                hovertemplate="%{y:.1f} / min",
            )
        )
    xs, ys = _with_session_gaps(timeline, _rate_of("rate_limited"))
    traces.append(
        go.Scatter(
            x=xs,
            y=ys,
            name="429s / min",
            mode="lines",
            yaxis="y2",
            line={"color": _COLOURS["429"], "dash": "dot"},
            hovertemplate="%{y:.1f} / min",
        )
    )
    layout = _layout(
        go,
        hovermode="x unified",
        xaxis={"type": "date", "title": {"text": "time (UTC)"}},
        yaxis={"title": {"text": "items finished / min"}, "rangemode": "tozero"},
        yaxis2={
            "title": {"text": "429s / min"},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "showgrid": False,
        },
    )
    return chart(chart_id, go.Figure(data=traces, layout=layout))


def _scopes(points: list[ScopePoint], go: Any, chart: _Chart) -> str:
    chart_id = "chart-scopes"
    if not points:
        return _no_data(chart_id, "no rate-limit scope was recorded.")
    by_scope: dict[str, list[ScopePoint]] = {}
    for point in points:
        by_scope.setdefault(point.scope, []).append(point)
    traces = []
    for (scope, series), colour in zip(
        by_scope.items(), itertools.cycle(_SCOPE_COLOURS), strict=False
    ):
        name = _plot_text(scope)
        xs = _packed([_ms(p.at) for p in series])
        traces.append(
            go.Scatter(
                x=xs,
                y=_packed([p.achieved_rpm for p in series], "f4"),
                name=f"{name} achieved",
                legendgroup=name,
                mode="lines",
                line={"color": colour},
                # What the line alone does not show; empty on most points, to stay small.
                text=[_scope_flags(p) for p in series],
                hovertemplate="%{y:.1f} rpm %{text}",
            )
        )
        if any(p.limit_rpm is not None for p in series):
            traces.append(_limit_trace(go, name, colour, xs, series))
    layout = _layout(
        go,
        hovermode="x unified",
        xaxis={"type": "date", "title": {"text": "time (UTC)"}},
        yaxis={"title": {"text": "requests / min"}, "rangemode": "tozero"},
    )
    return chart(chart_id, go.Figure(data=traces, layout=layout))


def _scope_flags(point: ScopePoint) -> str:
    flags = [f"{point.rate_limited} 429s"] if point.rate_limited else []
    if point.paused:
        flags.append("paused")
    return ", ".join(flags)


def _limit_trace(
    go: Any, name: str, colour: str, xs: dict[str, str], series: list[ScopePoint]
) -> Any:
    """The limit in force, dashed; where it came from in the name when it never changed."""
    sources = {p.limit_source for p in series if p.limit_rpm is not None}
    label = f"{name} limit"
    text: list[str] | None = None
    if len(sources) == 1:
        label += f" ({_plot_text(sources.pop() or 'source unknown')})"
    else:
        text = [_plot_text(p.limit_source or "source unknown") for p in series]
    return go.Scatter(
        x=xs,
        y=_packed([p.limit_rpm for p in series], "f4"),
        name=label,
        legendgroup=name,
        mode="lines",
        line={"color": colour, "dash": "dash", "shape": "hv"},
        text=text,
        hovertemplate="%{y:.1f} rpm" if text is None else "%{y:.1f} rpm (%{text})",
    )


def _latency(report: RunReport, go: Any, chart: _Chart) -> str:
    chart_id = "chart-latency"
    if not report.latency:
        return _no_data(chart_id, "no call latency was recorded.")
    models = [_plot_text(stats.model) for stats in report.latency]
    extra = [[round(stats.max, 3), stats.calls] for stats in report.latency]
    traces = [
        go.Bar(
            x=models,
            y=[round(getattr(stats, pct), 3) for stats in report.latency],
            name=pct,
            customdata=extra,
            hovertemplate=(
                f"%{{x}}<br>{pct}: %{{y:.2f}} s<br>max: %{{customdata[0]:.2f}} s"
                "<br>calls: %{customdata[1]}<extra></extra>"
            ),
        )
        for pct in ("p50", "p90", "p99")
    ]
    layout = _layout(
        go,
        barmode="group",
        xaxis={"type": "category", "title": {"text": "model"}},
        yaxis={"title": {"text": "seconds"}, "rangemode": "tozero"},
    )
    return chart(chart_id, go.Figure(data=traces, layout=layout))


def _attempts(histogram: dict[int, int], go: Any, chart: _Chart) -> str:
    chart_id = "chart-attempts"
    if not histogram:
        return _no_data(chart_id, "no item has a recorded number of attempts.")
    keys = sorted(histogram)
    trace = go.Bar(
        x=[str(k) for k in keys],
        y=[histogram[k] for k in keys],
        marker={"color": "#1f77b4"},
        hovertemplate="%{y} items took %{x} calls<extra></extra>",
    )
    layout = _layout(
        go,
        xaxis={"type": "category", "title": {"text": "calls per item (0: replayed or not run)"}},
        yaxis={"title": {"text": "items"}, "rangemode": "tozero"},
    )
    return chart(chart_id, go.Figure(data=[trace], layout=layout))


def _cost_time(timeline: list[IntervalPoint], go: Any, chart: _Chart) -> str:
    chart_id = "chart-cost-time"
    priced = [p for p in timeline if p.cost_usd is not None]
    if not priced:
        return _no_data(chart_id, "no interval has a known cost.")
    running = 0.0
    ys: list[float | None] = []
    for point in priced:
        running += point.cost_usd or 0.0
        ys.append(running)
    trace = go.Scatter(
        x=_packed([_ms(p.at) for p in priced]),
        y=_packed(ys),
        name="cumulative cost",
        mode="lines",
        line={"color": "#9467bd", "shape": "hv"},
        hovertemplate="$%{y:.4f}<extra></extra>",
    )
    layout = _layout(
        go,
        xaxis={"type": "date", "title": {"text": "time (UTC)"}},
        yaxis={"title": {"text": "USD"}, "rangemode": "tozero"},
    )
    note = ""
    if len(priced) < len(timeline):
        note = (
            f'<p class="note">{len(timeline) - len(priced)} of {len(timeline)} intervals '
            "have no known cost and are left out.</p>"
        )
    return chart(chart_id, go.Figure(data=[trace], layout=layout)) + note


def _cost_model(report: RunReport, go: Any, chart: _Chart) -> str:
    chart_id = "chart-cost-model"
    priced = [m for m in report.cost_by_model if m.cost_usd is not None]
    unpriced = [m.model for m in report.cost_by_model if m.cost_usd is None]
    note = ""
    if unpriced:
        note = (
            f'<p class="note" id="unpriced-models">No known price for: {_e(", ".join(unpriced))}'
            ".</p>"
        )
    if not priced:
        return _no_data(chart_id, "no model has a known cost.") + note
    trace = go.Bar(
        x=[_plot_text(m.model) for m in priced],
        y=[round(m.cost_usd or 0.0, 6) for m in priced],
        marker={"color": "#9467bd"},
        customdata=[[m.items, m.input_tokens, m.output_tokens] for m in priced],
        hovertemplate=(
            "%{x}<br>$%{y:.4f}<br>%{customdata[0]} items<br>"
            "%{customdata[1]:,} input / %{customdata[2]:,} output tokens<extra></extra>"
        ),
    )
    layout = _layout(
        go,
        xaxis={"type": "category", "title": {"text": "model"}},
        yaxis={"title": {"text": "USD"}, "rangemode": "tozero"},
    )
    return chart(chart_id, go.Figure(data=[trace], layout=layout)) + note


# --- tables -----------------------------------------------------------------------------------


def _table(table_id: str, columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]]) -> str:
    """``columns``: (header, CSS class) pairs; cells are HTML already (escaped by the caller)."""
    head = "".join(f'<th class="{cls}">{header}</th>' for header, cls in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{cls}">{cell}</td>' for (_, cls), cell in zip(columns, row, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _opt(value: object | None) -> str:
    return "" if value is None else _e(value)


def _slowest_table(items: list[ItemRow]) -> str:
    if not items:
        return _no_data("table-slowest", "no item has a recorded duration.")
    rows = [
        (
            _e(item.item_id),
            _opt(item.model),
            "" if item.seconds is None else f"{item.seconds:.2f}",
            str(item.attempts),
        )
        for item in items
    ]
    columns = [("Item", "id"), ("Model", "model"), ("Seconds", "num"), ("Attempts", "num")]
    return _table("table-slowest", columns, rows)


def _error_text(error: str | None) -> str:
    if error is None:
        return ""
    if len(error) > _MAX_ERROR_CHARS:
        error = error[:_MAX_ERROR_CHARS] + f"… ({len(error) - _MAX_ERROR_CHARS} more characters)"
    return _e(error)


def _failed_table(items: list[ItemRow]) -> str:
    if not items:
        return _no_data("table-failed", "no item failed.")
    rows = [
        (
            _e(item.item_id),
            _opt(item.model),
            str(item.attempts),
            _opt(item.category),
            _error_text(item.error),
        )
        for item in items
    ]
    columns = [
        ("Item", "id"),
        ("Model", "model"),
        ("Attempts", "num"),
        ("Category", "category"),
        ("Error", "error"),
    ]
    return _table("table-failed", columns, rows)


def _categories_table(categories: dict[str, int]) -> str:
    if not categories:
        return _no_data("table-categories", "no failure was recorded.")
    rows = [
        (_e(category), str(count))
        for category, count in sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return _table("table-categories", [("Category", "category"), ("Items", "num")], rows)
