import asyncio

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryState,
    TokenUsage,
)


class ShoutStrategy(LLMCallStrategy[str]):
    """One call per attempt; replace the body with your model or SDK call."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        await asyncio.sleep(0.01)  # stands in for the network round trip
        output = prompt.upper()
        return output, {"input_tokens": len(prompt.split()), "output_tokens": len(output.split())}


async def main() -> None:
    strategy = ShoutStrategy()
    config = ProcessorConfig(max_workers=4, timeout_per_item=30.0)
    async with ParallelBatchProcessor[str, str, None](config=config) as processor:
        for i, prompt in enumerate(["hello", "how are you?", "goodbye"]):
            await processor.add_work(
                LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt=prompt)
            )
        result = await processor.process_all()

    for item in sorted(result.results, key=lambda r: r.item_id):
        print(f"{item.item_id}: {item.output}")
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    asyncio.run(main())
