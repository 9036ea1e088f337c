"""Run reports: what a checkpointed batch did, read from its store.

```python
from async_batch_llm.report import write_report

write_report("run.sqlite", "report.html")
```

`load_report` reads a store (an SQLite checkpoint file, or a `CheckpointStore` such as a
`MemoryCheckpointStore`) into a `RunReport` of aggregates; `render_html` draws it as one
self-contained HTML file (plotly, inlined: no server, no network); `write_report` does
both. ``abl report STATE -o report.html`` is the same from the command line, and
``abl status STATE --watch`` shows the same numbers live in the terminal.
"""

from __future__ import annotations

from async_batch_llm.report._load import load_report, load_report_async, write_report
from async_batch_llm.report._model import (
    IntervalPoint,
    ItemRow,
    LatencyStats,
    ModelCost,
    RunReport,
    ScopePoint,
)

__all__ = [
    "IntervalPoint",
    "ItemRow",
    "LatencyStats",
    "ModelCost",
    "RunReport",
    "ScopePoint",
    "load_report",
    "load_report_async",
    "render_html",
    "write_report",
]


def render_html(report: RunReport) -> str:
    """The report as one self-contained HTML document (needs the ``report`` extra)."""
    from async_batch_llm.report._html import render_html as render

    return render(report)
