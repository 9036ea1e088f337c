"""``abl status``, ``abl export`` and ``abl cost``: reading a run's state file.

They read with `SQLiteCheckpointReader`, so they work while a run is writing the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from async_batch_llm._internal.values import BATCH_USAGE_KEY
from async_batch_llm.checkpoint import CheckpointEntry, EntryState, SQLiteCheckpointReader
from async_batch_llm.checkpoint._codec import UNSTORABLE, decode_output
from async_batch_llm.cli._output import OutputWriter, error_parts, output_line
from async_batch_llm.cli._run import META_INPUT, META_MODEL, META_OUTPUT

__all__ = ["cost", "export", "status"]


def _model(reader: SQLiteCheckpointReader) -> str:
    return reader.meta().get(META_MODEL, "unknown")


def _entry_price(entry: CheckpointEntry, pricer: Any, batch_pricer: Any) -> Decimal | None:
    if not pricer.known:
        return None
    chosen = batch_pricer if entry.usage.get(BATCH_USAGE_KEY) else pricer
    price: Decimal | None = chosen.price(entry.usage)
    return price


def jobs_of(meta: dict[str, str]) -> list[dict[str, Any]]:
    """The provider batch jobs recorded in a state file, oldest first."""
    from async_batch_llm._internal.batch_jobs import read_job_records

    jobs = []
    for record in read_job_records(meta).values():
        job = record["job"]
        jobs.append(
            {
                "id": job.get("id"),
                "provider": job.get("provider"),
                "model": job.get("model"),
                "state": job.get("state"),
                "provider_status": job.get("provider_status"),
                "requests": job.get("request_count"),
                "counts": job.get("counts") or {},
                "submitted_at": job.get("submitted_at"),
            }
        )
    return sorted(jobs, key=lambda job: job["submitted_at"] or 0)


def status(path: str) -> dict[str, Any]:
    """Counts by state, the batch jobs and what the run was."""
    with SQLiteCheckpointReader(path) as reader:
        counts = reader.count_by_state()
        meta = reader.meta()
        return {
            "state": path,
            "model": meta.get(META_MODEL),
            "input": meta.get(META_INPUT),
            "output": meta.get(META_OUTPUT),
            "runs": int(meta.get("session", "0") or 0),
            "writer": reader.writer,
            "succeeded": counts[EntryState.SUCCEEDED],
            "failed": counts[EntryState.FAILED],
            "unfinished": counts[EntryState.PENDING] + counts[EntryState.INTERRUPTED],
            "entries": sum(counts.values()),
            "batch_jobs": jobs_of(meta),
        }


def _lines(reader: SQLiteCheckpointReader, failed_only: bool) -> Iterator[str]:
    from async_batch_llm.pricing import Pricer

    model = _model(reader)
    pricer = Pricer(model)
    batch_pricer = Pricer(model, batch=True)
    for entry in reader.entries():
        ok = entry.state is EntryState.SUCCEEDED
        if entry.state is EntryState.PENDING or (failed_only and ok):
            continue
        output: Any = None
        if ok:
            output = decode_output(entry.codec, entry.payload)
            if output is UNSTORABLE:
                output = None
        yield output_line(
            item_id=entry.item_id,
            ok=ok,
            output=output,
            error=error_parts(entry.error, entry.category),
            usage=entry.usage,
            attempts=entry.attempts,
            cost=_entry_price(entry, pricer, batch_pricer),
            model=model,
            replayed=True,
            metadata=None,
            via="batch" if entry.usage.get(BATCH_USAGE_KEY) else "online",
        )


def export(path: str, output: str | None, *, failed_only: bool) -> int:
    """Write the stored results as output lines (item id order); returns how many."""
    with SQLiteCheckpointReader(path) as reader:
        writer = OutputWriter(output)
        try:
            for line in _lines(reader, failed_only):
                writer.write(line)
        except BaseException:
            writer.discard()
            raise
        writer.finish()
        return writer.lines


def cost(path: str) -> dict[str, Any]:
    """Tokens and cost of every stored result, by state."""
    from async_batch_llm.pricing import Pricer, price_data_version

    with SQLiteCheckpointReader(path) as reader:
        model = _model(reader)
        pricer = Pricer(model)
        batch_pricer = Pricer(model, batch=True)
        totals: dict[str, Any] = {}
        unpriced = 0
        total_cost = Decimal(0)
        entry: CheckpointEntry
        for entry in reader.entries():
            name = entry.state.name.lower()
            bucket = totals.setdefault(
                name, {"items": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": Decimal(0)}
            )
            bucket["items"] += 1
            bucket["input_tokens"] += entry.usage.get("input_tokens", 0)
            bucket["output_tokens"] += entry.usage.get("output_tokens", 0)
            price = _entry_price(entry, pricer, batch_pricer)
            if price is None:
                if entry.usage.get("total_tokens"):
                    unpriced += 1
            else:
                bucket["cost_usd"] += price
                total_cost += price
        for bucket in totals.values():
            bucket["cost_usd"] = format(bucket["cost_usd"], "f")
        return {
            "state": path,
            "model": model,
            "by_state": totals,
            "cost_usd": format(total_cost, "f"),
            "unpriced_items": unpriced,
            "prices": price_data_version(),
        }


def as_json(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=2)
