"""kvgate: a KV-cache-aware routing gateway for LLM inference."""

__version__ = "0.1.0"
