"""Helpers the simulator tests share."""

from dataclasses import dataclass, field
from typing import Any

import openai

MODEL = "sim-llama3-8b"


def client_for(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sim", max_retries=0, timeout=30.0)


@dataclass
class StreamResult:
    id: str = ""
    text: str = ""
    content_chunks: int = 0
    finish_reason: str | None = None
    usage: Any = None
    chunks: list[Any] = field(default_factory=list)


async def stream_chat(
    client: openai.AsyncOpenAI, messages: list[dict[str, Any]], **kwargs: Any
) -> StreamResult:
    result = StreamResult()
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    async for chunk in stream:
        result.chunks.append(chunk)
        result.id = chunk.id
        if chunk.usage is not None:
            result.usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                result.text += choice.delta.content
                result.content_chunks += 1
            if choice.finish_reason:
                result.finish_reason = choice.finish_reason
    return result


def numbered_text(tokens: int, start: int = 0) -> str:
    """Text of exactly `tokens` built-in tokens (4 bytes each), unique per `start`."""
    assert tokens % 2 == 0
    return "".join(f"{i:07d} " for i in range(start, start + tokens // 2))
