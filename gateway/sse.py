"""Relaying an upstream Server-Sent Events stream event by event.

vLLM ends every event with a blank line (`\\n\\n`). The relay forwards complete events as soon as they
arrive (never waiting for more than the event in progress), picks the usage chunk out as it passes
(no choices and a `usage` object, last before `[DONE]`) to learn `cached_tokens`, and drops it when
the gateway, not the client, asked for it.
"""

from __future__ import annotations

from typing import Any

import orjson

EVENT_END = b"\n\n"
MAX_PENDING_BYTES = 4 * 1024 * 1024
"""An event longer than this is passed on in pieces rather than held: the relay never buffers a stream."""


class SSERelay:
    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self.events = 0
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now for `data` just received."""
        pending = self._pending + data if self._pending else data
        end = pending.rfind(EVENT_END)
        if end < 0:
            if len(pending) > MAX_PENDING_BYTES:
                self._pending = b""
                return pending
            self._pending = pending
            return b""
        complete, self._pending = pending[: end + 2], pending[end + 2 :]
        count = complete.count(EVENT_END)
        self.events += count
        if not _may_hold_usage(complete):
            return complete
        if count == 1:
            return b"" if self._take_usage(complete) else complete
        kept = [event for event in complete.split(EVENT_END)[:-1] if not self._take_usage(event)]
        return b"".join(event + EVENT_END for event in kept)

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending

    def _take_usage(self, event: bytes) -> bool:
        """Record a usage chunk's usage; True when the event is to be dropped."""
        if not _may_hold_usage(event) or not event.startswith(b"data:"):
            return False
        try:
            chunk = orjson.loads(event[5:].strip())
        except orjson.JSONDecodeError:
            return False
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if not isinstance(usage, dict):
            return False
        self.usage = usage
        return self.strip_usage and chunk.get("choices") == []


def _may_hold_usage(data: bytes) -> bool:
    """The usage chunk is the one with no choices; a cheap test that spares parsing every other event."""
    return b'"choices":[]' in data or b'"choices": []' in data


def cached_tokens(usage: dict[str, Any] | None) -> int | None:
    if not usage:
        return None
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        return details["cached_tokens"]
    return None
