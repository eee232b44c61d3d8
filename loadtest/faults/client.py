"""A closed-loop streaming load on the chat API that records how every request ended.

Each of `concurrency` users, started at random moments over `start_spread_s` so that they do not move in
step, holds a conversation whose prompt grows turn by turn (so a replica that
served the previous turn holds most of the next one), and starts a new conversation after `turns`
turns. Every request streams with usage. A request ends as

- `ok`: `data: [DONE]` after content, no error event;
- `sse_error`: the stream began (the client had its first byte) and the gateway ended it with an SSE
  error event: the client was told, nothing was silently lost;
- `lost`: anything else: an HTTP error status, a connection error, a timeout, or a stream that stopped
  without `[DONE]`.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import orjson

SYSTEM = "You are a coding agent working in a large repository. Follow the style guide. " * 12


class Outcome(enum.StrEnum):
    OK = "ok"
    SSE_ERROR = "sse_error"
    LOST = "lost"


@dataclass(slots=True)
class RequestRecord:
    started: float
    """time.monotonic() when the request was sent."""
    outcome: Outcome
    ttft_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    detail: str = ""


class StreamLoad:
    def __init__(
        self,
        url: str,
        model: str,
        concurrency: int = 8,
        max_tokens: int = 32,
        turns: int = 8,
        turn_bytes: int = 600,
        timeout_s: float = 60.0,
        api_key: str | None = None,
        label: str = "u",
        start_spread_s: float = 1.5,
        seed: int = 0,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.turns = turns
        self.turn_bytes = turn_bytes
        self.timeout_s = timeout_s
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.label = label
        self.start_spread_s = start_spread_s
        self.random = random.Random(seed)
        self.records: list[RequestRecord] = []

    async def run(self, seconds: float, max_requests: int = 1_000_000) -> list[RequestRecord]:
        """Load for `seconds` (or until `max_requests` were sent); returns once every request ended."""
        deadline = time.monotonic() + seconds
        budget = [max_requests]
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(
                *(self._user(session, user, deadline, budget) for user in range(self.concurrency))
            )
        return self.records

    async def _user(self, session: aiohttp.ClientSession, user: int, deadline: float, budget: list[int]):
        await asyncio.sleep(self.random.uniform(0, self.start_spread_s))  # users out of step
        conversation = 0
        while time.monotonic() < deadline and budget[0] > 0:
            history: list[dict] = [{"role": "system", "content": SYSTEM}]
            for turn in range(self.turns):
                if time.monotonic() >= deadline or budget[0] <= 0:
                    return
                budget[0] -= 1
                words = f"{self.label}{user}-{conversation} turn {turn}: refactor module {turn} "
                content = (words * (self.turn_bytes // len(words) + 1))[: self.turn_bytes]
                history.append({"role": "user", "content": content})
                record = await self.one(session, history)
                self.records.append(record)
                history.append({"role": "assistant", "content": "done " * 8})
            conversation += 1

    async def cold(self, session: aiohttp.ClientSession, tag: str) -> RequestRecord:
        """One request whose prompt no replica holds (no shared system prompt): the affinity policy sends
        it to the least loaded replica, so it reaches a replica that came back empty."""
        return await self.one(session, [{"role": "user", "content": f"cold probe {tag}: " + tag * 64}])

    async def one(self, session: aiohttp.ClientSession, messages: list[dict]) -> RequestRecord:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.monotonic()
        record = RequestRecord(started, Outcome.LOST)
        try:
            async with session.post(self.url, data=orjson.dumps(body), headers=self.headers) as response:
                if response.status != 200:
                    record.detail = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                    return record
                done = errored = False
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    if record.ttft_s is None:
                        record.ttft_s = time.monotonic() - started
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    event = orjson.loads(data)
                    if "error" in event:
                        errored = True
                        record.detail = str(event["error"].get("message", ""))[:200]
                        continue
                    usage = event.get("usage")
                    if usage:
                        record.prompt_tokens = usage.get("prompt_tokens", 0)
                        details = usage.get("prompt_tokens_details") or {}
                        record.cached_tokens = details.get("cached_tokens") or 0
                if errored:
                    record.outcome = Outcome.SSE_ERROR
                elif done:
                    record.outcome = Outcome.OK
                else:
                    record.detail = "stream ended without [DONE]"
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            record.detail = f"{type(error).__name__}: {error}"[:200]
        return record


def tally(records: Iterable[RequestRecord]) -> dict:
    """Counts by outcome, client-side TTFT median and p95 of the ok requests, and the prompt hit rate."""
    records = list(records)
    outcomes = Counter(record.outcome for record in records)
    ttfts = sorted(record.ttft_s for record in records if record.outcome is Outcome.OK and record.ttft_s)
    prompt = sum(record.prompt_tokens for record in records)
    return {
        "sent": len(records),
        "ok": outcomes[Outcome.OK],
        "sse_error": outcomes[Outcome.SSE_ERROR],
        "lost": outcomes[Outcome.LOST],
        "ttft_p50_s": _quantile(ttfts, 0.5),
        "ttft_p95_s": _quantile(ttfts, 0.95),
        "hit_rate": sum(record.cached_tokens for record in records) / prompt if prompt else None,
        "lost_details": Counter(record.detail for record in records if record.outcome is Outcome.LOST),
    }


def _quantile(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
