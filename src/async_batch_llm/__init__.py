"""async-batch-llm."""
