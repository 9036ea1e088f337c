"""The OpenAI, Anthropic and Gemini batch APIs, driven by the real SDK clients over HTTP.

Time is a `ManualClock`: a job of n requests with ``batch_latency=L`` finishes request i at
``created + L * (i + 1) / n``, so moving the clock shows it progress, expire or be cancelled.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors, types

from async_batch_llm.testing.simulator import (
    BatchJobRecord,
    ProviderRequest,
    ProviderSimulator,
    RawReply,
    Reply,
    SimulatorConfig,
)
from async_batch_llm.testing.simulator._cli import build_parser, config_from_args
from conftest import AIOHTTP_SUBCLASS_WARNING, ManualClock, StartSimulator

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

OpenAIFactory = Callable[..., openai.AsyncOpenAI]
AnthropicFactory = Callable[..., anthropic.AsyncAnthropic]
GenaiFactory = Callable[..., genai.Client]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode()


def responses_lines(count: int, model: str = "gpt-5") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": model, "input": f"question {i}"},
        }
        for i in range(count)
    ]


async def openai_batch(client: openai.AsyncOpenAI, lines: list[dict[str, Any]]) -> Any:
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )


async def file_lines(client: openai.AsyncOpenAI, file_id: str | None) -> dict[str, Any]:
    assert file_id is not None
    text = (await client.files.content(file_id)).text
    return {line["custom_id"]: line for line in map(json.loads, text.splitlines())}


def anthropic_requests(count: int, prefix: str = "a") -> list[Any]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": "claude-sonnet-5",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(count)
    ]


def gemini_requests(count: int) -> list[types.InlinedRequestDict]:
    return [
        {
            "contents": [{"role": "user", "parts": [{"text": f"question {i}"}]}],
            "metadata": {"key": f"g{i}"},
        }
        for i in range(count)
    ]


def only(sim: ProviderSimulator) -> BatchJobRecord:
    (record,) = sim.batch_jobs
    return record


# -- OpenAI -------------------------------------------------------------------------------


async def test_openai_batch_completes_progressively_with_the_clock(
    start_simulator: StartSimulator, openai_client: OpenAIFactory, clock: ManualClock
) -> None:
    """validating -> in_progress with growing counts -> completed with an output file."""
    sim = await start_simulator(batch_latency=10.0)
    client = openai_client(sim)
    batch = await openai_batch(client, responses_lines(4))
    assert batch.id.startswith("batch_")
    assert batch.input_file_id.startswith("file-")
    assert (batch.status, batch.endpoint, batch.completion_window) == (
        "validating",
        "/v1/responses",
        "24h",
    )

    clock.advance(5.0)
    batch = await client.batches.retrieve(batch.id)
    assert batch.status == "in_progress"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (4, 2)
    assert batch.output_file_id is None
    assert only(sim).state == "in_progress"

    clock.advance(5.0)
    batch = await client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.completed_at is not None
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 0)
    assert batch.error_file_id is None
    assert batch.usage is not None
    assert batch.usage.output_tokens > 0
    lines = await file_lines(client, batch.output_file_id)
    assert sorted(lines) == ["r0", "r1", "r2", "r3"]
    line = lines["r2"]
    assert line["error"] is None
    assert line["id"].startswith("batch_req_")
    assert line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["object"] == "response"
    assert body["output"][0]["content"][0]["text"] == "Echo: question 2"
    assert body["usage"]["input_tokens"] == 3
    assert sim.stats.batch_jobs_created == {"openai": 1}
    assert sim.stats.batch_requests == 4
    record = only(sim)
    assert (record.state, record.ended, record.request_count) == ("completed", True, 4)
    assert record.custom_ids == ("r0", "r1", "r2", "r3")


async def test_openai_chat_completions_batches_and_files_api(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """A /v1/chat/completions batch answers chat.completion bodies; files list, get, delete."""
    client = openai_client(sim)
    lines = [
        {
            "custom_id": "c1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        }
    ]
    uploaded = await client.files.create(file=("c.jsonl", jsonl(lines)), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes) == ("batch", len(jsonl(lines)))
    assert (await client.files.retrieve(uploaded.id)).filename == "c.jsonl"
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    batch = await client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.metadata == {"job": "nightly"}
    assert batch.model == "gpt-4o"
    body = (await file_lines(client, batch.output_file_id))["c1"]["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Echo: hi"
    listed = await client.files.list()
    assert {uploaded.id, batch.output_file_id} <= {f.id for f in listed.data}
    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_openai_batch_list_pages_newest_first(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    client = openai_client(sim)
    ids = [(await openai_batch(client, responses_lines(1))).id for _ in range(3)]
    page = await client.batches.list(limit=2)
    assert [b.id for b in page.data] == [ids[2], ids[1]]
    assert page.has_more
    assert [b.id async for b in client.batches.list(limit=2)] == ids[::-1]
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_missing")


async def test_openai_request_failures_go_to_the_error_file(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """At batch_error_rate=1.0 every request is a 500 line in the error file, no output file."""
    sim = await start_simulator(batch_error_rate=1.0)
    client = openai_client(sim)
    batch = await client.batches.retrieve((await openai_batch(client, responses_lines(3))).id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
    assert batch.output_file_id is None
    lines = await file_lines(client, batch.error_file_id)
    assert sorted(lines) == ["r0", "r1", "r2"]
    response = lines["r1"]["response"]
    assert response["status_code"] == 500
    assert response["body"]["error"]["type"] == "server_error"
    assert sim.stats.batch_requests == 3
    assert sim.stats.injected_errors == 0


async def test_seeded_batch_failures_repeat(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """The same seed fails the same requests; some succeed and some fail at rate 0.5."""
    failed: list[set[str]] = []
    for _ in range(2):
        sim = await start_simulator(batch_error_rate=0.5, seed=7)
        client = openai_client(sim)
        batch = await client.batches.retrieve((await openai_batch(client, responses_lines(20))).id)
        errored = await file_lines(client, batch.error_file_id)
        succeeded = await file_lines(client, batch.output_file_id)
        assert len(errored) + len(succeeded) == 20
        failed.append(set(errored))
    assert failed[0] == failed[1]
    assert 0 < len(failed[0]) < 20


async def test_openai_expiry_keeps_finished_results(
    start_simulator: StartSimulator, openai_client: OpenAIFactory, clock: ManualClock
) -> None:
    """Requests done before batch_expiry keep results; the rest are batch_expired lines."""
    sim = await start_simulator(batch_latency=10.0, batch_expiry=6.0)
    client = openai_client(sim)
    batch = await openai_batch(client, responses_lines(4))
    clock.advance(7.0)
    batch = await client.batches.retrieve(batch.id)
    assert batch.status == "expired"
    assert batch.expired_at is not None
    assert sorted(await file_lines(client, batch.output_file_id)) == ["r0", "r1"]
    errors_by_id = await file_lines(client, batch.error_file_id)
    assert sorted(errors_by_id) == ["r2", "r3"]
    assert errors_by_id["r3"]["response"] is None
    assert errors_by_id["r3"]["error"]["code"] == "batch_expired"
    # The input file still lists every request, as pydantic-ai reads it for unrun ones.
    text = (await client.files.content(batch.input_file_id)).text
    assert len(text.splitlines()) == 4


async def test_openai_cancel_is_cancelling_then_cancelled(
    start_simulator: StartSimulator, openai_client: OpenAIFactory, clock: ManualClock
) -> None:
    sim = await start_simulator(batch_latency=10.0)
    client = openai_client(sim)
    batch = await openai_batch(client, responses_lines(4))
    clock.advance(5.0)
    cancelled = await client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling"
    assert cancelled.cancelling_at is not None
    clock.advance(100.0)
    batch = await client.batches.retrieve(batch.id)
    assert batch.status == "cancelled"
    assert sorted(await file_lines(client, batch.output_file_id)) == ["r0", "r1"]
    unrun = await file_lines(client, batch.error_file_id)
    assert {line["error"]["code"] for line in unrun.values()} == {"batch_cancelled"}
    assert sorted(unrun) == ["r2", "r3"]
    assert sim.stats.batch_jobs_cancelled == {"openai": 1}
    assert only(sim).cancelled
    with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status"):
        await client.batches.cancel(batch.id)


async def test_openai_bad_input_file_fails_the_batch(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """Invalid JSON, a wrong url and a second model fail validation, with numbered errors."""
    client = openai_client(sim)
    lines = responses_lines(1)
    other_model = responses_lines(2, model="gpt-4o")[1]
    wrong_url = {**responses_lines(3)[2], "url": "/v1/chat/completions"}
    data = jsonl([lines[0], other_model, wrong_url]) + b"\n{not json"
    uploaded = await client.files.create(file=("bad.jsonl", data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )
    assert batch.status == "validating"
    batch = await client.batches.retrieve(batch.id)
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.errors is not None
    assert batch.errors.data is not None
    found = {(error.line, error.code) for error in batch.errors.data}
    assert found == {(2, "mismatched_model"), (3, "invalid_url"), (4, "invalid_json_line")}
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    assert sim.stats.batch_requests == 0


async def test_openai_create_refusals(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """The configured cap, the real 50,000 cap, and a missing file are 400s; nothing counts."""
    sim = await start_simulator(batch_max_requests=2)
    client = openai_client(sim)
    with pytest.raises(openai.BadRequestError, match="more than the 2 a batch can hold"):
        await openai_batch(client, responses_lines(3))
    with pytest.raises(openai.BadRequestError, match="input_file_id"):
        await client.batches.create(
            input_file_id="file-missing", endpoint="/v1/responses", completion_window="24h"
        )
    assert sim.stats.batch_jobs_created == {}

    uncapped = await start_simulator()
    line = b'{"custom_id":"x","method":"POST","url":"/v1/responses","body":{"model":"m"}}'
    big = openai_client(uncapped)
    uploaded = await big.files.create(
        file=("big.jsonl", b"\n".join([line] * 50_001)), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError, match="more than the 50000"):
        await big.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
        )
    assert uncapped.stats.batch_jobs_created == {}


async def test_reply_hook_answers_batch_requests(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """The hook sees each request with its batch_id; a RawReply error errors that request."""
    seen: list[ProviderRequest] = []

    def hook(request: ProviderRequest) -> Reply | None:
        seen.append(request)
        if request.prompt == "question 1":
            return RawReply({"error": {"message": "nope", "type": "invalid_request_error"}}, 400)
        return "hooked" if request.prompt == "question 0" else None

    sim = await start_simulator(reply=hook)
    client = openai_client(sim)
    batch = await client.batches.retrieve((await openai_batch(client, responses_lines(3))).id)
    assert {request.batch_id for request in seen} == {batch.id}
    assert [request.path for request in seen] == ["/v1/responses"] * 3
    output = await file_lines(client, batch.output_file_id)
    assert output["r0"]["response"]["body"]["output"][0]["content"][0]["text"] == "hooked"
    assert output["r2"]["response"]["body"]["output"][0]["content"][0]["text"] == "Echo: question 2"
    failure = (await file_lines(client, batch.error_file_id))["r1"]["response"]
    assert (failure["status_code"], failure["body"]["error"]["message"]) == (400, "nope")


async def test_batches_skip_rate_limits_and_faults(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """rpm=1 and a queued fault do not touch batch endpoints or the requests inside jobs."""
    sim = await start_simulator(rpm=1)
    sim.fail_next(1, status=503)
    client = openai_client(sim)
    batch = await client.batches.retrieve((await openai_batch(client, responses_lines(5))).id)
    assert batch.request_counts is not None
    assert batch.request_counts.completed == 5
    assert sim.stats.rate_limited == 0
    # The fault is still queued for the next online request.
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="gpt-5", input="online")


# -- Anthropic ----------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [False, True])
async def test_anthropic_batch_lifecycle(
    start_simulator: StartSimulator,
    anthropic_client: AnthropicFactory,
    clock: ManualClock,
    beta: bool,
) -> None:
    """Requests count as processing until the batch ends; then results_url and results."""
    sim = await start_simulator(batch_latency=10.0)
    client = anthropic_client(sim)
    batches: Any = client.beta.messages.batches if beta else client.messages.batches
    batch = await batches.create(requests=anthropic_requests(4))
    assert batch.id.startswith("msgbatch_")
    assert batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 4
    assert (batch.expires_at - batch.created_at).total_seconds() == 86_400

    clock.advance(5.0)
    batch = await batches.retrieve(batch.id)
    assert batch.processing_status == "in_progress"
    assert (batch.request_counts.processing, batch.request_counts.succeeded) == (4, 0)
    assert batch.results_url is None
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        await batches.results(batch.id)

    clock.advance(5.0)
    batch = await batches.retrieve(batch.id)
    assert batch.processing_status == "ended"
    assert batch.ended_at is not None
    assert (batch.request_counts.processing, batch.request_counts.succeeded) == (0, 4)
    assert batch.results_url == f"{sim.base_url}/v1/messages/batches/{batch.id}/results"
    results = {item.custom_id: item.result async for item in await batches.results(batch.id)}
    assert sorted(results) == ["a0", "a1", "a2", "a3"]
    result = results["a3"]
    assert result.type == "succeeded"
    assert result.message.content[0].text == "Echo: question 3"
    assert result.message.usage.input_tokens > 0
    assert sim.stats.batch_jobs_created == {"anthropic": 1}


async def test_anthropic_errors_expiry_and_cancel(
    start_simulator: StartSimulator, anthropic_client: AnthropicFactory, clock: ManualClock
) -> None:
    """errored results at rate 1.0; expired and canceled results for unfinished requests."""
    failing = await start_simulator(batch_error_rate=1.0)
    client = anthropic_client(failing)
    batch = await client.messages.batches.create(requests=anthropic_requests(2))
    batch = await client.messages.batches.retrieve(batch.id)
    assert batch.request_counts.errored == 2
    async for item in await client.messages.batches.results(batch.id):
        assert item.result.type == "errored"
        assert item.result.error.error.type == "api_error"

    sim = await start_simulator(batch_latency=10.0, batch_expiry=6.0)
    client = anthropic_client(sim)
    expiring = await client.messages.batches.create(requests=anthropic_requests(4, "e"))
    clock.advance(3.0)
    cancelling = await client.messages.batches.create(requests=anthropic_requests(4, "c"))
    clock.advance(2.6)  # 5.6 s into the first batch, 2.6 s into the second
    cancelled = await client.messages.batches.cancel(cancelling.id)
    assert cancelled.processing_status == "canceling"
    assert cancelled.cancel_initiated_at is not None
    clock.advance(1.0)
    expired = await client.messages.batches.retrieve(expiring.id)
    assert expired.processing_status == "ended"
    counts = expired.request_counts
    assert (counts.succeeded, counts.expired) == (2, 2)
    kinds = {
        i.custom_id: i.result.type async for i in await client.messages.batches.results(expiring.id)
    }
    assert kinds == {"e0": "succeeded", "e1": "succeeded", "e2": "expired", "e3": "expired"}
    ended = await client.messages.batches.retrieve(cancelling.id)
    assert (ended.processing_status, ended.request_counts.canceled) == ("ended", 3)
    assert sim.stats.batch_jobs_cancelled == {"anthropic": 1}


async def test_anthropic_refusals_delete_and_list(
    start_simulator: StartSimulator, anthropic_client: AnthropicFactory, clock: ManualClock
) -> None:
    sim = await start_simulator(batch_latency=10.0, batch_max_requests=3)
    client = anthropic_client(sim)
    bad = anthropic_requests(1)
    bad[0]["custom_id"] = "not valid!"
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        await client.messages.batches.create(requests=bad)
    with pytest.raises(anthropic.BadRequestError, match="Duplicate custom_id"):
        await client.messages.batches.create(requests=anthropic_requests(1) * 2)
    with pytest.raises(anthropic.BadRequestError, match="at most 3 items"):
        await client.messages.batches.create(requests=anthropic_requests(4))
    assert sim.stats.batch_jobs_created == {}

    first = await client.messages.batches.create(requests=anthropic_requests(1))
    second = await client.beta.messages.batches.create(requests=anthropic_requests(1))
    page = await client.messages.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id]
    assert [b.id async for b in client.messages.batches.list(limit=1)] == [second.id, first.id]
    with pytest.raises(anthropic.BadRequestError, match="cannot be deleted"):
        await client.messages.batches.delete(first.id)
    clock.advance(10.0)
    deleted = await client.messages.batches.delete(first.id)
    assert deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve(first.id)


async def test_anthropic_real_request_cap(
    sim: ProviderSimulator, anthropic_client: AnthropicFactory
) -> None:
    """More than 100,000 requests is a 400 (sent raw: the SDK would take long to build it)."""
    item = anthropic_requests(1)[0]
    body = {"requests": [{**item, "custom_id": f"x{i}"} for i in range(100_001)]}
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            f"{sim.anthropic_base_url}/v1/messages/batches",
            json=body,
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.stats.batch_jobs_created == {}


# -- Gemini -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])
async def test_gemini_inline_batch_progresses(
    start_simulator: StartSimulator,
    genai_client: GenaiFactory,
    clock: ManualClock,
    transport: str,
) -> None:
    sim = await start_simulator(batch_latency=10.0)
    client = genai_client(sim, transport=transport)
    job = await client.aio.batches.create(
        model="gemini-2.5-flash", src=gemini_requests(4), config={"display_name": "nightly"}
    )
    assert job.name is not None
    assert job.name.startswith("batches/")
    assert (job.state, job.display_name) == (types.JobState.JOB_STATE_PENDING, "nightly")
    assert job.model == "models/gemini-2.5-flash"
    clock.advance(5.0)
    job = await client.aio.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_RUNNING
    assert job.dest is None
    clock.advance(5.0)
    job = await client.aio.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.end_time is not None
    assert job.dest is not None
    assert job.dest.inlined_responses is not None
    responses = job.dest.inlined_responses
    assert [r.metadata for r in responses] == [{"key": f"g{i}"} for i in range(4)]
    assert responses[1].response is not None
    assert responses[1].response.text == "Echo: question 1"
    assert sim.stats.batch_jobs_created == {"gemini": 1}
    assert only(sim).state == "BATCH_STATE_SUCCEEDED"


async def test_gemini_file_batch_uploads_and_downloads(
    sim: ProviderSimulator, genai_client: GenaiFactory
) -> None:
    """A resumable upload, a job from ``files/...``, and a downloadable results file."""
    client = genai_client(sim)
    lines = [
        {"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"filed {i}"}]}]}}
        for i in range(3)
    ]
    uploaded = await client.aio.files.upload(
        file=io.BytesIO(jsonl(lines)),
        config={"mime_type": "application/jsonl", "display_name": "input"},
    )
    assert uploaded.name is not None
    assert uploaded.name.startswith("files/")
    assert (uploaded.size_bytes, uploaded.display_name) == (len(jsonl(lines)), "input")
    assert uploaded.state == types.FileState.ACTIVE
    fetched = await client.aio.files.get(name=uploaded.name)
    assert fetched.mime_type == "application/jsonl"
    with pytest.raises(errors.ClientError) as refused:
        await client.aio.files.download(file=uploaded.name)
    assert refused.value.code == 400

    job = await client.aio.batches.create(model="gemini-2.5-flash", src=uploaded.name)
    assert job.name is not None
    job = await client.aio.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest is not None
    assert job.dest.file_name is not None
    content = await client.aio.files.download(file=job.dest.file_name)
    results = {line["key"]: line for line in map(json.loads, content.splitlines())}
    assert sorted(results) == ["k0", "k1", "k2"]
    parts = results["k2"]["response"]["candidates"][0]["content"]["parts"]
    assert parts[0]["text"] == "Echo: filed 2"

    await client.aio.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError):
        await client.aio.files.get(name=uploaded.name)


async def test_gemini_errors_expiry_and_cancel(
    start_simulator: StartSimulator, genai_client: GenaiFactory, clock: ManualClock
) -> None:
    failing = await start_simulator(batch_error_rate=1.0)
    client = genai_client(failing)
    job = await client.aio.batches.create(model="gemini-2.5-flash", src=gemini_requests(2))
    assert job.name is not None
    job = await client.aio.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest is not None
    assert job.dest.inlined_responses is not None
    codes = [r.error.code if r.error is not None else None for r in job.dest.inlined_responses]
    assert codes == [13, 13]

    sim = await start_simulator(batch_latency=10.0, batch_expiry=6.0)
    client = genai_client(sim)
    expiring = await client.aio.batches.create(model="gemini-2.5-flash", src=gemini_requests(4))
    untouched = await client.aio.batches.create(model="gemini-2.5-flash", src=gemini_requests(1))
    cancelling = await client.aio.batches.create(model="gemini-2.5-flash", src=gemini_requests(4))
    assert expiring.name
    assert untouched.name
    assert cancelling.name
    clock.advance(5.0)
    await client.aio.batches.cancel(name=cancelling.name)
    clock.advance(2.0)
    expired = await client.aio.batches.get(name=expiring.name)
    assert expired.state == types.JobState.JOB_STATE_EXPIRED
    assert expired.dest is not None
    assert expired.dest.inlined_responses is not None
    assert [r.metadata for r in expired.dest.inlined_responses] == [{"key": "g0"}, {"key": "g1"}]
    # A one-request job finishes at 10 s: expired at 6 s it has no results at all.
    nothing = await client.aio.batches.get(name=untouched.name)
    assert (nothing.state, nothing.dest) == (types.JobState.JOB_STATE_EXPIRED, None)
    cancelled = await client.aio.batches.get(name=cancelling.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.dest is not None
    assert cancelled.dest.inlined_responses is not None
    assert len(cancelled.dest.inlined_responses) == 2
    assert sim.stats.batch_jobs_cancelled == {"gemini": 1}


async def test_gemini_refusals_list_and_delete(
    start_simulator: StartSimulator, genai_client: GenaiFactory
) -> None:
    sim = await start_simulator(batch_max_requests=2)
    client = genai_client(sim)
    with pytest.raises(errors.ClientError, match="more than the 2 allowed"):
        await client.aio.batches.create(model="gemini-2.5-flash", src=gemini_requests(3))
    with pytest.raises(errors.ClientError, match="does not exist"):
        await client.aio.batches.create(model="gemini-2.5-flash", src="files/missing")
    assert sim.stats.batch_jobs_created == {}
    first = await client.aio.batches.create(model="gemini-2.5-flash", src=gemini_requests(1))
    second = await client.aio.batches.create(model="gemini-2.5-flash", src=gemini_requests(1))
    assert first.name
    assert second.name
    pager = await client.aio.batches.list(config={"page_size": 1})
    assert [job.name async for job in pager] == [second.name, first.name]
    await client.aio.batches.delete(name=first.name)
    with pytest.raises(errors.ClientError) as missing:
        await client.aio.batches.get(name=first.name)
    assert missing.value.code == 404
    assert [record.deleted for record in sim.batch_jobs] == [True, False]


async def test_gemini_inline_size_cap(sim: ProviderSimulator, genai_client: GenaiFactory) -> None:
    """Inline requests over 20 MB are refused: a bigger batch needs an input file."""
    client = genai_client(sim)
    huge = [{"contents": [{"parts": [{"text": "x" * 1_000_000}]}]} for _ in range(21)]
    with pytest.raises(errors.ClientError, match="Request payload size exceeds the limit"):
        await client.aio.batches.create(model="gemini-2.5-flash", src=huge)  # type: ignore[arg-type]


# -- test helpers, config and command line -------------------------------------------------


async def test_expire_batches_reset_and_records(
    start_simulator: StartSimulator,
    openai_client: OpenAIFactory,
    anthropic_client: AnthropicFactory,
    clock: ManualClock,
) -> None:
    """expire_batches ends every unfinished job now; reset forgets jobs, stats.reset doesn't."""
    sim = await start_simulator(batch_latency=10.0)
    openai_ = openai_client(sim)
    anthropic_ = anthropic_client(sim)
    await openai_batch(openai_, responses_lines(2))
    clock.advance(5.0)
    message_batch = await anthropic_.messages.batches.create(requests=anthropic_requests(2))
    assert [record.created_at for record in sim.batch_jobs] == [1000.0, 1005.0]
    assert sim.expire_batches() == 2
    assert sim.expire_batches() == 0
    states = [(r.provider, r.state, dict(r.outcomes)) for r in sim.batch_jobs]
    assert states == [
        ("openai", "expired", {"succeeded": 1, "expired": 1}),
        ("anthropic", "ended", {"expired": 2}),
    ]
    sim.stats.reset()
    assert sim.stats.batch_jobs_created == {}
    assert len(sim.batch_jobs) == 2
    sim.reset()
    assert sim.batch_jobs == []
    with pytest.raises(anthropic.NotFoundError):
        await anthropic_.messages.batches.retrieve(message_batch.id)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_latency": -1}, "batch_latency must be seconds >= 0"),
        ({"batch_error_rate": 2}, "batch_error_rate must be a probability"),
        ({"batch_expiry": 0}, "batch_expiry must be a positive number of seconds or None"),
        ({"batch_max_requests": 0}, "batch_max_requests must be a positive number"),
        ({"batch_max_requests": 1.5}, "batch_max_requests must be a positive number"),
    ],
)
def test_bad_batch_settings_are_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**options)


def test_batch_settings_defaults_and_command_line() -> None:
    config = SimulatorConfig()
    assert (config.batch_latency, config.batch_error_rate) == (0.0, 0.0)
    assert (config.batch_expiry, config.batch_max_requests) == (None, None)
    args = build_parser().parse_args(
        [
            "--batch-latency",
            "30",
            "--batch-error-rate",
            "0.1",
            "--batch-expiry",
            "600",
            "--batch-max-requests",
            "50",
        ]
    )
    config = config_from_args(args)
    assert (config.batch_latency, config.batch_error_rate) == (30.0, 0.1)
    assert (config.batch_expiry, config.batch_max_requests) == (600.0, 50)
