"""Provider batch jobs of one run (``ProcessorConfig(mode="batch" | "auto")``).

Items whose strategy has a batch API come here instead of to the workers. Their prompts
are encoded and grouped by what a job's requests must share; a group is submitted as a job
when it reaches the API's caps (requests or bytes), when the intake has nothing more for
now, or when its oldest request has waited `LINGER` seconds. Each job is recorded in the
checkpoint store *before* it is waited for, then polled with a growing interval until it
ends; its results are decoded and each item's outcome is *delivered* back to the run,
whose workers finish it like any other (middleware, events, commit, post-processor).

A rerun finds the records: an item of a recorded job (same id and prompt) is attached to
that job instead of being submitted again, so a crash or an interrupt never pays twice for
a submitted request.

Failures: in ``auto`` mode an item whose request did not succeed (an error, an expired or
cancelled request, a job past ``batch_deadline``, a job that could not be submitted) is
delivered to run online. In ``batch`` mode a request that was not run, or failed in a way
the error classifier retries, is submitted again in a later job while the item has
attempts left (``RetryConfig.max_attempts``); otherwise the item fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Final

from async_batch_llm._internal.values import BATCH_USAGE_KEY, TokenUsage, empty_usage
from async_batch_llm.batch.base import (
    BatchAPI,
    BatchJob,
    BatchRequestNotRun,
    EncodedRequest,
    RequestResult,
)
from async_batch_llm.checkpoint._identity import prompt_hash
from async_batch_llm.token_extractor import TokenExtractor

__all__ = ["Answer", "BatchJobs", "JOB_RECORD_PREFIX", "read_job_records"]

logger = logging.getLogger(__name__)

#: Seconds a group's oldest request waits for others before its job is submitted anyway.
LINGER: Final = 2.0
#: Seconds allowed for cancelling the provider jobs when a run stops, and for a
#: submission in progress to be recorded first.
CANCEL_TIMEOUT: Final = 30.0
#: Seconds a job cancelled for its deadline may take to end (OpenAI's "cancelling" can
#: last minutes); the results it has by then are used.
CANCELLED_JOB_GRACE: Final = 900.0
#: Seconds by which a request may go before its back-off ends, to share a job.
BACKOFF_SLACK: Final = 0.25
#: Consecutive failed checks of a job before its requests are given up on.
MAX_POLL_FAILURES: Final = 5
#: Metadata keys of the job records in a checkpoint store.
JOB_RECORD_PREFIX: Final = "batch_job:"
_extractor = TokenExtractor()
#: Characters of the prompt hash kept in a job record (enough to tell an edited prompt).
_HASH_CHARS: Final = 16


class Answer:
    """What a batch job gave for one item, for a worker to finish it with.

    Exactly one of: an output (`succeeded`), an error to fail the item with, or `online`
    (run the item online now).
    """

    __slots__ = ("attempts", "category", "error", "online", "output", "usage")

    def __init__(
        self,
        *,
        output: Any = None,
        usage: TokenUsage | None = None,
        error: Exception | None = None,
        category: str | None = None,
        online: bool = False,
        attempts: int = 1,
    ) -> None:
        self.output = output
        self.usage: TokenUsage = usage if usage is not None else empty_usage()
        self.error = error
        self.category = category
        self.online = online
        self.attempts = attempts

    @property
    def succeeded(self) -> bool:
        return self.error is None and not self.online


class _Request:
    """An item on its way through batch jobs."""

    __slots__ = (
        "_digest",
        "api",
        "attempts",
        "custom_id",
        "encoded",
        "item",
        "not_before",
        "reservation",
        "seq",
        "since",
    )

    def __init__(self, item: Any, seq: int, api: BatchAPI[Any]) -> None:
        self.item = item
        self.seq = seq
        self.api = api
        self.attempts = 0
        self.custom_id = ""
        self.encoded: EncodedRequest | None = None
        self._digest: str | None = None
        self.since = 0.0
        self.not_before = 0.0  # monotonic time before which it is not submitted (a back-off)
        self.reservation: Any = None  # the budget's, while the request is in a job

    @property
    def digest(self) -> str:
        """The start of the prompt's hash: what a job record keeps to tell an edited prompt
        (computed only with a checkpoint, which is when records are kept)."""
        if self._digest is None:
            self._digest = prompt_hash(self.item.prompt)[:_HASH_CHARS]
        return self._digest


class _Job:
    """A job being waited for: its handle, its API and its requests by custom id."""

    __slots__ = ("api", "job", "members", "resumed", "task")

    def __init__(self, job: BatchJob, api: BatchAPI[Any], *, resumed: bool) -> None:
        self.job = job
        self.api = api
        self.members: dict[str, _Request] = {}
        self.resumed = resumed
        self.task: asyncio.Task[None] | None = None


def read_job_records(meta: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The job records in a checkpoint store's metadata, by job id."""
    records: dict[str, dict[str, Any]] = {}
    for key, value in meta.items():
        if not key.startswith(JOB_RECORD_PREFIX):
            continue
        try:
            record = json.loads(value)
            records[record["job"]["id"]] = record
        except (ValueError, KeyError, TypeError):
            logger.warning("Ignoring an unreadable batch job record %r in the checkpoint", key)
    return records


class BatchJobs:
    """The batch jobs of one run; see the module docstring.

    Args:
        mode: ``"batch"`` or ``"auto"``.
        config: The processor's config (poll intervals, deadline, caps, retries).
        classify: The processor's error classification of an exception.
        prepare: Prepares a strategy (once) before its first request is encoded.
        deliver: Hands an item's `Answer` back to the run (with the item's input position).
        save: Writes metadata keys to the checkpoint durably, or ``None`` without one.
        records: The job records a previous run left in the checkpoint.
        publish: Publishes an event to the observers.
        budget: The processor's `Budget`: each request reserves its estimate (at batch
            prices) before it is submitted, and settles with its usage.
        may_attach: Whether an item may be attached to the recorded job that holds it:
            only one whose previous run did not finish it (else it runs anew).
        stopping: Whether the processor is draining: nothing more is submitted.
    """

    def __init__(
        self,
        *,
        mode: str,
        config: Any,
        classify: Callable[[Exception], Any],
        prepare: Callable[[Any], Awaitable[None]],
        deliver: Callable[[Any, int, Answer], None],
        save: Callable[[dict[str, str]], Awaitable[None]] | None,
        records: dict[str, dict[str, Any]],
        publish: Callable[[dict[str, Any]], None],
        budget: Any = None,
        may_attach: Callable[[str], bool] | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self.mode = mode
        self.config = config
        self._classify = classify
        self._prepare = prepare
        self._deliver = deliver
        self._save = save
        self._publish = publish
        self._budget = budget
        self._may_attach = may_attach
        self._stopping = stopping
        self._submitting: asyncio.Task[None] | None = None
        self._closing = False
        # The results of recorded jobs collected already, for their items that come later.
        self._collected: dict[str, dict[str, RequestResult]] = {}
        self._apis: dict[int, tuple[Any, BatchAPI[Any] | None]] = {}
        self._incoming: list[_Request] = []
        self._groups: dict[str, list[_Request]] = {}
        self._jobs: dict[str, _Job] = {}
        self._records = records
        # item id -> (job id, custom id, prompt digest), the latest job for each item.
        self._resumable: dict[str, tuple[str, str, str]] = {}
        for job_id, record in sorted(records.items(), key=lambda kv: _submitted(kv[1])):
            for custom_id, item_id, digest in record.get("members", ()):
                self._resumable[item_id] = (job_id, custom_id, digest)
        self._next_id = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.outstanding = 0
        #: Set by the run when no more items will come for now (the source is exhausted or
        #: the window is full): groups are submitted without waiting for more.
        self.intake_idle = False

    # -- intake ------------------------------------------------------------------------

    def api_for(self, strategy: Any) -> BatchAPI[Any] | None:
        """The strategy's batch API (asked once per strategy object)."""
        known = self._apis.get(id(strategy))
        if known is not None:
            return known[1]
        hook = getattr(strategy, "batch_api", None)
        try:
            api = hook() if callable(hook) else None
        except Exception as exc:
            if self.mode == "batch":
                msg = f"{type(strategy).__name__}.batch_api() raised {type(exc).__name__}: {exc}"
                raise ValueError(msg) from exc
            logger.warning(
                "%s.batch_api() raised %s: %s; its items run online",
                type(strategy).__name__,
                type(exc).__name__,
                exc,
            )
            api = None
        if api is not None and not isinstance(api, BatchAPI):
            msg = (
                f"{type(strategy).__name__}.batch_api() must return a BatchAPI or None, "
                f"got {type(api).__name__}"
            )
            raise TypeError(msg)
        self._apis[id(strategy)] = (strategy, api)
        return api

    def add(self, item: Any, seq: int, api: BatchAPI[Any]) -> None:
        """Take `item` (the `seq`-th of the run) into the batch path."""
        self.outstanding += 1
        self._incoming.append(_Request(item, seq, api))
        self._start()
        self._wake.set()

    def nudge(self) -> None:
        """The intake's state changed (see `intake_idle`)."""
        self._wake.set()

    def _start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.ensure_future(self._loop())
            self._task.add_done_callback(self._loop_done)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if task is self._task:
            self._task = None  # a later item starts it again
        if not task.cancelled() and task.exception() is not None:
            logger.error("The batch job loop failed", exc_info=task.exception())
            self._fail_everything(task.exception())  # type: ignore[arg-type]

    # -- the loop ----------------------------------------------------------------------

    async def _loop(self) -> None:
        wake = self._wake
        while True:
            # Cleared before the work, not after: a wake-up during it (a request queued
            # again by a failed submission) makes another pass instead of being lost.
            wake.clear()
            if self._incoming:
                incoming, self._incoming = self._incoming, []
                for position, request in enumerate(incoming):
                    try:
                        await self._take(request)
                    except asyncio.CancelledError:
                        self._incoming[:0] = incoming[position:]
                        raise
                    except Exception as exc:
                        logger.exception(
                            "Taking item %s into a batch job failed", request.item.item_id
                        )
                        self._hand_over(request, Answer(error=exc, category="batch_error"))
            timeout = await self._submit_ready()
            if self._incoming or wake.is_set():
                continue
            if timeout is None:
                await wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)

    async def _take(self, request: _Request) -> None:
        item = request.item
        item_id = str(item.item_id)
        resumable = self._resumable.pop(item_id, None)
        if (
            resumable is not None
            and (self._may_attach is None or self._may_attach(item_id))
            and self._attach(request, *resumable)
        ):
            return
        try:
            await self._prepare(item.strategy)
            self._next_id += 1
            request.custom_id = f"r{self._next_id}"
            request.encoded = await request.api.encode(request.custom_id, item.prompt)
        except Exception as exc:
            self._failed(request, exc, submitted=False)
            return
        self._queue_for_job(request)

    def _queue_for_job(self, request: _Request) -> None:
        request.since = time.monotonic()
        key = f"{request.api.provider}\x00{request.api.group}"
        self._groups.setdefault(key, []).append(request)

    def _attach(self, request: _Request, job_id: str, custom_id: str, digest: str) -> bool:
        """Attach `request` to the recorded job that already holds it, when its prompt is
        unchanged; start waiting for that job."""
        if digest != request.digest:
            return False
        collected = self._collected.get(job_id)
        if collected is not None:
            # Its job was collected for earlier items of this run: no second download.
            request.custom_id = custom_id
            request.attempts = int(self._records.get(job_id, {}).get("attempts", 1))
            self._resolve(request, collected.pop(custom_id, None), job_id, past_deadline=False)
            return True
        job = self._jobs.get(job_id)
        if job is None:
            record = self._records.get(job_id)
            if record is None:
                return False
            try:
                handle = BatchJob(**record["job"])
            except TypeError:
                return False
            job = self._jobs[job_id] = _Job(handle, request.api, resumed=True)
            self._announce(job)
            job.task = asyncio.ensure_future(self._wait_for(job))
        request.custom_id = custom_id
        request.attempts = int(self._records.get(job_id, {}).get("attempts", 1))
        job.members[custom_id] = request
        return True

    async def _submit_ready(self) -> float | None:
        """Submit the groups that are ready; return when the next one will be (seconds)."""
        now = time.monotonic()
        next_due: float | None = None
        if self._stopping is not None and self._stopping():
            self._drain_groups()
            return None
        for key in list(self._groups):
            # Taken out while it is worked on: requests queued meanwhile (resubmissions,
            # new items) go into a new list under the key and are merged back after.
            group = self._groups.pop(key)
            # A little early rather than one job each for requests that failed together.
            ready_by = now + BACKOFF_SLACK
            waiting = [request for request in group if request.not_before <= ready_by]
            later = [request for request in group if request.not_before > ready_by]
            if later:
                due = min(request.not_before for request in later) - now
                next_due = due if next_due is None else min(next_due, due)
            try:
                while waiting:
                    api = waiting[0].api
                    cap = _cap(api, self.config)
                    chunk = _take_chunk(waiting, api, cap)
                    full = len(chunk) < len(waiting) or len(chunk) >= cap
                    due = waiting[0].since + LINGER
                    if not (full or self.intake_idle or now >= due):
                        next_due = due - now if next_due is None else min(next_due, due - now)
                        break
                    del waiting[: len(chunk)]
                    await self._submit(api, chunk)
            except asyncio.CancelledError:
                self._groups[key] = [*waiting, *later, *self._groups.get(key, ())]
                raise
            except Exception as exc:
                # A defect of the API object (its caps, a request's size): its requests fail.
                logger.exception("Submitting a batch job failed")
                for request in waiting:
                    self._hand_over(request, Answer(error=exc, category="batch_error"))
                waiting = []
            remaining = [*waiting, *later, *self._groups.get(key, ())]
            if remaining:
                self._groups[key] = remaining
            else:
                self._groups.pop(key, None)
        return next_due

    def _drain_groups(self) -> None:
        """The processor is draining: the requests not submitted yet end now."""
        pending = [request for group in self._groups.values() for request in group]
        self._groups.clear()
        for request in pending:
            error = BatchRequestNotRun(
                "The run was drained before the request was submitted", status="drained"
            )
            self._hand_over(
                request, Answer(error=error, category="interrupted", attempts=request.attempts)
            )

    async def _submit(self, api: BatchAPI[Any], chunk: list[_Request]) -> None:
        if self._budget is not None:
            chunk = self._reserve(chunk)
            if not chunk:
                return
        for request in chunk:
            request.attempts += 1
        # Shielded: once the provider may have created the job, cancelling the run must
        # not skip recording it (`close` waits for it, bounded), or a rerun would pay again.
        task = self._submitting = asyncio.ensure_future(self._submit_and_record(api, chunk))
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._submitting = None

    async def _submit_and_record(self, api: BatchAPI[Any], chunk: list[_Request]) -> None:
        try:
            encoded = [request.encoded for request in chunk]
            submitted = await api.submit(encoded)  # type: ignore[arg-type]
        except Exception as exc:
            logger.warning(
                "Submitting a batch job of %d %s requests failed: %s",
                len(chunk),
                api.provider,
                exc,
            )
            for request in chunk:
                self._failed(request, exc, submitted=True)
            return
        job = _Job(submitted, api, resumed=False)
        for request in chunk:
            job.members[request.custom_id] = request
        self._jobs[submitted.id] = job
        try:
            await self._record(job)
        except Exception as exc:
            # Not durable: a rerun could not find the job, so it must not run on unseen.
            logger.error("Recording batch job %s failed; cancelling it: %s", submitted.id, exc)
            await self._cancel_job(job)
            self._jobs.pop(submitted.id, None)
            for request in chunk:
                self._hand_over(request, Answer(error=exc, category="batch_error"))
            return
        if self._closing:
            return  # recorded; `close` cancels it or leaves it to the rerun
        self._announce(job)
        job.task = asyncio.ensure_future(self._wait_for(job))

    def _reserve(self, chunk: list[_Request]) -> list[_Request]:
        """The requests of `chunk` the budget has room for; the others end now."""
        from async_batch_llm._internal.budget_gate import prompt_estimate
        from async_batch_llm.budget import BudgetExhaustedError

        budget = self._budget
        admitted = []
        for request in chunk:
            tokens = prompt_estimate(request.item.strategy, request.item.prompt)
            error: Exception | None = None
            try:
                request.reservation = budget.try_reserve(tokens, batch=True)
            except BudgetExhaustedError as exc:
                error = exc
            if request.reservation is not None:
                admitted.append(request)
                continue
            if error is None:
                # It fits once calls in flight settle (their jobs end): wait, as online.
                self._queue_for_job(request)
                request.not_before = time.monotonic() + LINGER
                continue
            if self.mode == "auto":
                self._hand_over(request, Answer(online=True, attempts=request.attempts))
                continue
            self._hand_over(
                request,
                Answer(error=error, category="budget_exhausted", attempts=request.attempts),
            )
        return admitted

    def _settle(self, request: _Request, usage: TokenUsage | None) -> None:
        budget = self._budget
        if budget is None:
            return
        priced: dict[str, Any] | None = None
        if usage and any(usage.values()):
            priced = {**usage, BATCH_USAGE_KEY: 1}
        reservation, request.reservation = request.reservation, None
        if reservation is not None:
            budget.settle(reservation, priced)
        elif priced is not None:
            budget.charge(priced)

    async def _record(self, job: _Job) -> None:
        if self._save is None:
            return
        members = [
            [custom_id, str(request.item.item_id), request.digest]
            for custom_id, request in job.members.items()
        ]
        attempts = max((request.attempts for request in job.members.values()), default=1)
        record = {"job": asdict(job.job), "members": members, "attempts": attempts}
        self._records[job.job.id] = record
        await self._save({JOB_RECORD_PREFIX + job.job.id: json.dumps(record)})

    async def _save_state(self, job: _Job) -> None:
        """Update the job's record with its state (for ``abl status``)."""
        record = self._records.get(job.job.id)
        if self._save is None or record is None:
            return
        record["job"] = asdict(job.job)
        try:
            await self._save({JOB_RECORD_PREFIX + job.job.id: json.dumps(record)})
        except Exception as exc:
            logger.warning("Updating the record of batch job %s failed: %s", job.job.id, exc)

    def _announce(self, job: _Job) -> None:
        handle = job.job
        self._publish(
            {
                "job_id": handle.id,
                "provider": handle.provider,
                "model": handle.model,
                "state": handle.state,
                "provider_status": handle.provider_status,
                "request_count": handle.request_count,
                "counts": dict(handle.counts),
                "submitted_at": handle.submitted_at,
                "resumed": job.resumed,
            }
        )

    # -- waiting for a job -----------------------------------------------------------------

    async def _wait_for(self, job: _Job) -> None:
        try:
            await self._poll_until_ended(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A defect here must not leave the job's items waiting for ever.
            logger.exception("Waiting for batch job %s failed", job.job.id)
            await self._give_up_on(job, exc)

    async def _poll_until_ended(self, job: _Job) -> None:
        config = self.config
        interval = float(config.batch_poll_interval)
        deadline = config.batch_deadline
        failures = 0
        # After the deadline: when to stop waiting for the cancelled job to end.
        give_up_at: float | None = None
        first = True
        while job.job.state != "ended":
            wait = 0.0 if first and job.resumed else interval
            if deadline is not None and give_up_at is None:
                wait = min(wait, max(0.0, job.job.submitted_at + deadline - time.time()))
            first = False
            await asyncio.sleep(wait)
            now = time.time()
            if (
                deadline is not None
                and give_up_at is None
                and now >= job.job.submitted_at + deadline
            ):
                logger.warning(
                    "Batch job %s did not end within batch_deadline=%ss; cancelling it",
                    job.job.id,
                    deadline,
                )
                await self._cancel_job(job)
                give_up_at = now + CANCELLED_JOB_GRACE
                interval = float(config.batch_poll_interval)
                continue
            if give_up_at is not None and now >= give_up_at:
                # The provider did not end the cancelled job in time: its requests are
                # past their deadline either way.
                await self._give_up_on(
                    job,
                    BatchRequestNotRun(
                        f"Batch job {job.job.id} did not end after its cancellation",
                        status="canceled",
                    ),
                    past_deadline=True,
                )
                return
            try:
                refreshed = await job.api.refresh(job.job)
            except Exception as exc:
                failures += 1
                logger.warning("Checking batch job %s failed: %s", job.job.id, exc)
                if failures >= MAX_POLL_FAILURES:
                    await self._give_up_on(job, exc, cancel=True)
                    return
                interval = min(interval * 1.5, float(config.batch_max_poll_interval))
                continue
            failures = 0
            changed = (refreshed.state, refreshed.provider_status, refreshed.counts) != (
                job.job.state,
                job.job.provider_status,
                job.job.counts,
            )
            job.job = refreshed
            if changed:
                await self._save_state(job)
                self._announce(job)
            interval = min(interval * 1.5, float(config.batch_max_poll_interval))
        await self._collect(job, past_deadline=give_up_at is not None)

    async def _collect(self, job: _Job, *, past_deadline: bool) -> None:
        try:
            results = await job.api.results(job.job)
        except Exception as exc:
            logger.warning("Reading the results of batch job %s failed: %s", job.job.id, exc)
            await self._give_up_on(job, exc)
            return
        by_id = {result.custom_id: result for result in results}
        self._jobs.pop(job.job.id, None)
        for custom_id, request in job.members.items():
            self._resolve(request, by_id.pop(custom_id, None), job.job.id, past_deadline)
        if job.resumed and by_id:
            # Items of this recorded job may still come (a later lookup batch).
            self._collected[job.job.id] = by_id
        self._wake.set()

    def _resolve(
        self, request: _Request, result: RequestResult | None, job_id: str, past_deadline: bool
    ) -> None:
        """Hand over what `result` (``None``: the job had none) says about `request`."""
        if result is None:
            error: Exception = BatchRequestNotRun(
                f"Batch job {job_id} ended without a result for the request", status="missing"
            )
            self._failed(request, error, submitted=True, past_deadline=past_deadline)
            return
        try:
            output, usage = request.api.decode(result, request.item.prompt)
        except Exception as exc:
            self._failed(request, exc, submitted=True, past_deadline=past_deadline)
            return
        self._hand_over(request, Answer(output=output, usage=usage))

    async def _give_up_on(
        self, job: _Job, error: Exception, *, past_deadline: bool = False, cancel: bool = False
    ) -> None:
        """Stop waiting for `job`; its requests fail (or run online, or go again).

        With `cancel` (the job could not be checked) a job this run submitted is cancelled
        first, as far as the provider still answers: its requests run again elsewhere.
        """
        if job.job.id not in self._jobs:
            return  # its items were handed over already
        if cancel and not job.resumed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cancel_job(job), CANCEL_TIMEOUT)
        if self._jobs.pop(job.job.id, None) is None:
            return
        if job.resumed and not past_deadline:
            gone = BatchRequestNotRun(
                f"The recorded batch job {job.job.id} cannot be collected: {error}",
                status="missing",
            )
            gone.__cause__ = error
            error = gone
        for request in job.members.values():
            # A job this run submitted may still run: its requests are not submitted again
            # (the rerun finds its record). A recorded job that can no longer be checked or
            # read (deleted, its results gone) will not: those go into a new job.
            self._failed(
                request,
                error,
                submitted=True,
                resubmit=job.resumed and not past_deadline,
                past_deadline=past_deadline,
            )
        self._wake.set()

    # -- outcomes ---------------------------------------------------------------------------

    def _failed(
        self,
        request: _Request,
        error: Exception,
        *,
        submitted: bool,
        past_deadline: bool = False,
        resubmit: bool = True,
    ) -> None:
        usage: Any = _extractor.extract_from_exception(error)
        if self.mode == "auto":
            self._hand_over(request, Answer(online=True, usage=usage, attempts=request.attempts))
            return
        not_run = isinstance(error, BatchRequestNotRun)
        if past_deadline and not_run:
            self._hand_over(
                request,
                Answer(error=error, category="batch_deadline", attempts=request.attempts),
            )
            return
        info = self._classify(error)
        again = not_run or info.is_retryable or info.is_rate_limit
        if resubmit and submitted and again and request.attempts < self.config.retry.max_attempts:
            self._settle(request, usage)
            if request.encoded is None:
                # Attached to a recorded job, never encoded by this run: encode it first.
                self._incoming.append(request)
            else:
                self._queue_for_job(request)
                request.not_before = time.monotonic() + self._backoff(request.attempts)
            self._wake.set()
            return
        category = "batch_expired" if not_run else info.error_category
        self._hand_over(
            request,
            Answer(error=error, category=category, usage=usage, attempts=request.attempts),
        )

    def _backoff(self, attempts: int) -> float:
        """Seconds before a request that failed `attempts` times is submitted again."""
        retry = self.config.retry
        return float(
            min(retry.initial_wait * retry.exponential_base ** (attempts - 1), retry.max_wait)
        )

    def _hand_over(self, request: _Request, answer: Answer) -> None:
        self._settle(request, answer.usage)
        self.outstanding -= 1
        if answer.succeeded:
            answer.attempts = max(request.attempts, 1)
        self._deliver(request.item, request.seq, answer)

    def _fail_everything(self, error: BaseException) -> None:
        exc = error if isinstance(error, Exception) else RuntimeError(str(error))
        pending = [*self._incoming, *(r for group in self._groups.values() for r in group)]
        self._incoming.clear()
        self._groups.clear()
        for request in pending:
            self._hand_over(request, Answer(error=exc, category="batch_error"))

    # -- the end -----------------------------------------------------------------------------

    async def close(self, *, cancel_jobs: bool) -> None:
        """Stop waiting; with `cancel_jobs`, cancel the unfinished jobs at the provider.

        A submission in progress is let finish first (bounded), so that the job it may
        have created is recorded, or cancelled, rather than lost.
        """
        self._closing = True
        loop_task = self._task
        if loop_task is not None and not loop_task.done():
            loop_task.cancel()
            await asyncio.wait([loop_task], timeout=CANCEL_TIMEOUT)
        submitting = self._submitting
        if submitting is not None and not submitting.done():
            await asyncio.wait([submitting], timeout=CANCEL_TIMEOUT)
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT)
        if cancel_jobs:
            running = [job for job in self._jobs.values() if job.job.state != "ended"]
            if running:
                await asyncio.wait(
                    [asyncio.ensure_future(self._cancel_job(job)) for job in running],
                    timeout=CANCEL_TIMEOUT,
                )
        self._release_reservations()
        self._jobs.clear()

    def _release_reservations(self) -> None:
        """Settle the budget's reservations of the requests that never got an outcome: a
        submitted one is counted at its estimate (its job may still bill it)."""
        budget = self._budget
        if budget is None:
            return
        unsubmitted = [*self._incoming, *(r for group in self._groups.values() for r in group)]
        submitted = [r for job in self._jobs.values() for r in job.members.values()]
        for requests, charged in ((unsubmitted, False), (submitted, True)):
            for request in requests:
                reservation, request.reservation = request.reservation, None
                if reservation is not None:
                    budget.settle(reservation, None, charge_estimate=charged)

    @property
    def running_jobs(self) -> int:
        """Jobs submitted (or resumed) whose results have not been collected."""
        return len(self._jobs)

    async def _cancel_job(self, job: _Job) -> None:
        try:
            job.job = await job.api.cancel(job.job)
        except Exception as exc:
            logger.warning("Cancelling batch job %s failed: %s", job.job.id, exc)
            return
        await self._save_state(job)
        self._announce(job)


def _cap(api: BatchAPI[Any], config: Any) -> int:
    cap = int(api.max_requests)
    if config.batch_max_requests is not None:
        cap = min(cap, int(config.batch_max_requests))
    return max(cap, 1)


def _take_chunk(waiting: list[_Request], api: BatchAPI[Any], cap: int) -> list[_Request]:
    """The first requests of `waiting` that fit in one job (`cap` requests, and bytes)."""
    limit = api.max_bytes
    chunk: list[_Request] = []
    size = 0
    for request in waiting:
        if len(chunk) >= cap:
            break
        assert request.encoded is not None
        adds = request.encoded.size
        if limit is not None and chunk and size + adds > limit:
            break
        chunk.append(request)
        size += adds
    return chunk


def _submitted(record: dict[str, Any]) -> float:
    try:
        return float(record["job"]["submitted_at"])
    except (KeyError, TypeError, ValueError):
        return 0.0
