"""A lean streaming client for OpenAI-compatible chat and completions endpoints.

One pool of keep-alive connections (`loadtest.swarm.http`, raw asyncio protocols) serves every user of
the swarm. It was chosen by measurement over aiohttp and httpx (docs/benchmarks.md, "Swarm generator"):
the body bytes of a stream go from the socket callback straight into the SSE reader, without waking a
coroutine per network read, which takes a third off aiohttp's client CPU per streamed request. Per
chunk the reader does as little as it can: it splits the bytes into SSE lines and parses the JSON of a
chunk only when it must, that is until the first content token has arrived, and for chunks that carry
usage, an error or a finish reason. Ordinary token chunks are only counted and timed.

Measured per request (monotonic clock, seconds): the start, the first content token (text, reasoning
or a tool-call delta), the last content token, the end, the largest gap between content chunks, and
the server's usage (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`).
Failures are sorted by kind: an HTTP status with the OpenAI error body, an SSE error event, a timeout,
a connection error, or a stream that ended without `[DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from loadtest.swarm.http import HttpClient, HttpProtocolError, Origin
from loadtest.swarm.plan import PlannedRequest

OK = "ok"
HTTP_ERROR = "http_error"
STREAM_ERROR = "stream_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
INCOMPLETE = "incomplete_stream"
CANCELLED = "cancelled"

_ERROR_BODY_LIMIT = 65536
_PLAIN_CHUNK_MARKERS = (b'"finish_reason":null', b'"finish_reason": null')
_NULL_USAGE_MARKERS = (b'"usage":null', b'"usage": null')


@dataclass(slots=True)
class Exchange:
    """What the client saw of one request."""

    started: float
    ended: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    content_chunks: int = 0
    max_gap_s: float = 0.0
    outcome: str = OK
    http_status: int | None = None
    error_type: str = ""
    error_message: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


def api_base(endpoint: str) -> str:
    """`http://host:port` or `http://host:port/v1` (trailing slash or not) -> `http://host:port/v1`."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def _chunk_needs_parsing(payload: bytes) -> bool:
    if b'"error"' in payload:
        return True
    if b'"usage"' in payload and not any(marker in payload for marker in _NULL_USAGE_MARKERS):
        return True
    return not any(marker in payload for marker in _PLAIN_CHUNK_MARKERS)


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta is not None:
            if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                return True
            if delta.get("tool_calls"):
                return True
        elif choice.get("text"):
            return True
    return False


def _error_fields(body: Any) -> tuple[str, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return str(kind), str(error.get("message", ""))[:500]
    if isinstance(error, str):
        return "error", error[:500]
    return "error", str(body)[:500]


class StreamReader:
    """Consumes the SSE bytes of one response and fills in an `Exchange`."""

    __slots__ = ("_buffer", "_on_first_token", "done", "exchange")

    def __init__(self, exchange: Exchange, on_first_token: Callable[[], None] | None = None) -> None:
        self.exchange = exchange
        self._buffer = b""
        self._on_first_token = on_first_token
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        if self._buffer:
            data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), now)

    def finish(self, now: float) -> None:
        if self._buffer.startswith(b"data:"):
            self._event(self._buffer[5:].strip(), now)
        self._buffer = b""

    def _token(self, now: float) -> None:
        exchange = self.exchange
        if exchange.first_token is None:
            exchange.first_token = now
            if self._on_first_token is not None:
                self._on_first_token()
        elif exchange.last_token is not None:
            gap = now - exchange.last_token
            if gap > exchange.max_gap_s:
                exchange.max_gap_s = gap
        exchange.last_token = now
        exchange.content_chunks += 1

    def _event(self, payload: bytes, now: float) -> None:
        if not payload:
            return
        if payload == b"[DONE]":
            self.done = True
            return
        exchange = self.exchange
        if exchange.first_token is not None and not _chunk_needs_parsing(payload):
            self._token(now)
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            exchange.outcome = STREAM_ERROR
            exchange.error_type = "invalid_json"
            exchange.error_message = payload[:200].decode(errors="replace")
            return
        if not isinstance(chunk, dict):
            return
        if chunk.get("error"):
            exchange.outcome = STREAM_ERROR
            exchange.error_type, exchange.error_message = _error_fields(chunk)
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            exchange.prompt_tokens = usage.get("prompt_tokens", exchange.prompt_tokens)
            exchange.completion_tokens = usage.get("completion_tokens", exchange.completion_tokens)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and details.get("cached_tokens") is not None:
                exchange.cached_tokens = int(details["cached_tokens"])
        if _has_content(chunk):
            self._token(now)


class _ErrorBody:
    """Collects the body of a non-200 response, up to a limit."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, data: bytes, now: float) -> None:
        if len(self.data) < _ERROR_BODY_LIMIT:
            self.data += data[: _ERROR_BODY_LIMIT - len(self.data)]


class StreamingClient:
    """Streams chat or completions requests to one or several endpoints (`url` says which)."""

    def __init__(
        self,
        endpoint: str | Sequence[str],
        model: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float = 600.0,
        max_connections: int = 0,
        ignore_eos: bool = False,
        extra_body: dict[str, Any] | None = None,
        spread: Literal["user", "request"] = "user",
    ) -> None:
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not endpoints:
            raise ValueError("the client needs at least one endpoint")
        self.bases = [api_base(url) for url in endpoints]
        self.base = self.bases[0]
        self._origins = [Origin.parse(base) for base in self.bases]
        self._next_base = 0
        self._spread = spread
        self.model = model
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._request_timeout_s = request_timeout_s
        self._max_connections = max_connections
        self._extra = dict(extra_body or {})
        if ignore_eos:
            self._extra.setdefault("ignore_eos", True)
        self._http: HttpClient | None = None

    async def __aenter__(self) -> StreamingClient:
        self._http = HttpClient(self._max_connections, connect_timeout_s=min(30.0, self._request_timeout_s))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def http(self) -> HttpClient:
        if self._http is None:
            raise RuntimeError("use the client as `async with StreamingClient(...) as client`")
        return self._http

    async def discover_model(self) -> str | None:
        """The first model the endpoint lists at `/v1/models`, or None if it lists none."""
        body = _ErrorBody()
        async with asyncio.timeout(min(30.0, self._request_timeout_s)):
            response = await self.http.request(
                "GET", self._origins[0], "/models", {"Accept": "application/json"}, b"", body
            )
        if response.status != 200:
            raise HttpProtocolError(f"GET {self.base}/models answered {response.status} {response.reason}")
        document = orjson.loads(bytes(body.data))
        models = document.get("data") if isinstance(document, dict) else None
        return str(models[0]["id"]) if models else None

    def body(self, request: PlannedRequest) -> bytes:
        document: dict[str, Any] = {"model": self.model or "default"}
        document.update(request.payload)
        document["max_tokens"] = request.max_tokens
        document["stream"] = True
        document["stream_options"] = {"include_usage": True}
        if self._extra:
            document.update(self._extra)
        if request.extra:
            document.update(request.extra)
        return orjson.dumps(document)

    def _endpoint(self, user: int) -> int:
        if len(self.bases) == 1:
            return 0
        if user >= 0 and self._spread == "user":
            return user % len(self.bases)
        index = self._next_base
        self._next_base = (index + 1) % len(self.bases)
        return index

    @staticmethod
    def _path(request: PlannedRequest) -> str:
        return "/chat/completions" if request.api == "chat" else "/completions"

    def url(self, request: PlannedRequest, user: int = -1) -> str:
        """With spread "user", each user sticks to one endpoint (`user` modulo their number) and requests
        without a user take the endpoints in turn; with spread "request", every request takes the next
        endpoint in turn, as a load balancer in front of several gateway replicas would."""
        return self.bases[self._endpoint(user)] + self._path(request)

    async def send(
        self, request: PlannedRequest, on_first_token: Callable[[], None] | None = None, user: int = -1
    ) -> Exchange:
        """Send one request (for `user`, see `url`) and read its stream to the end; `on_first_token` is
        called when the first content token arrives."""
        body = self.body(request)
        origin = self._origins[self._endpoint(user)]
        exchange = Exchange(started=time.perf_counter())
        reader = StreamReader(exchange, on_first_token)
        error_body = _ErrorBody()
        sink: list[Callable[[bytes, float], None]] = [reader.feed]

        def on_head(status: int, headers: dict[str, str]) -> None:
            exchange.http_status = status
            if status != 200:
                sink[0] = error_body

        try:
            async with asyncio.timeout(self._request_timeout_s):
                await self.http.request(
                    "POST",
                    origin,
                    self._path(request),
                    self._headers,
                    body,
                    lambda d, t: sink[0](d, t),
                    on_head,
                )
            if exchange.http_status != 200:
                exchange.outcome = HTTP_ERROR
                try:
                    exchange.error_type, exchange.error_message = _error_fields(
                        orjson.loads(bytes(error_body.data))
                    )
                except orjson.JSONDecodeError:
                    exchange.error_type = f"http_{exchange.http_status}"
                    exchange.error_message = error_body.data[:500].decode(errors="replace")
            else:
                reader.finish(time.perf_counter())
                if exchange.outcome == OK and not reader.done:
                    exchange.outcome = INCOMPLETE
                    exchange.error_type = "no [DONE]"
        except TimeoutError:
            exchange.outcome = TIMEOUT
            exchange.error_type = "timeout"
        except (OSError, HttpProtocolError) as error:
            exchange.outcome = CONNECTION_ERROR
            exchange.error_type = type(error).__name__
            exchange.error_message = str(error)[:500]
        except asyncio.CancelledError:
            exchange.outcome = CANCELLED
            exchange.ended = time.perf_counter()
            raise
        exchange.ended = time.perf_counter()
        if exchange.completion_tokens is None and exchange.outcome == OK:
            exchange.completion_tokens = exchange.content_chunks
        return exchange
