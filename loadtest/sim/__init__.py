"""A vLLM-compatible replica simulator: OpenAI API, Prometheus metrics and KV cache events, with a paged,
tiered KV cache and a continuous-batching scheduler timed by GPU-calibrated latency profiles."""
