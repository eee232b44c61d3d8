"""A small HTTP/1.1 client on raw asyncio protocols, for streaming many SSE responses cheaply.

Why not aiohttp or httpx: streaming a response costs them a coroutine wake-up (and their own buffering)
for every network read, and a token stream is one read per token. Here the bytes go straight from the
protocol's `data_received` to the caller's sink, in the event loop's own callback, and the waiting
coroutine wakes once, when the response is complete. Measured on the project's machine against the
simulator (docs/benchmarks.md, "Swarm generator"): about two thirds of aiohttp's client CPU per
streamed request and a fifth of httpx's.

What it speaks: HTTP/1.1 requests with a body, over TCP or TLS; responses framed by
`Transfer-Encoding: chunked`, `Content-Length`, or the end of the connection. Connections are kept
alive and pooled per host; a reused connection that the server had closed meanwhile (it fails before
any response byte) is retried once on a new one. No redirects, proxies, compression or HTTP/2: an
OpenAI-compatible server needs none of them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from urllib.parse import urlsplit

BodySink = Callable[[bytes, float], None]
HeadCallback = Callable[[int, dict[str, str]], None]
MAX_HEADER_BYTES = 65536


class HttpProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response this client understands."""


class ConnectionClosed(ConnectionError):
    """The connection ended before the response was complete."""


class ResponseParser:
    """Incremental parser of one HTTP/1.1 response: status line, headers, then the body, de-framed and
    handed to `sink` as it arrives. Pure: it only sees bytes, so it is tested on bytes."""

    __slots__ = (
        "_buffer",
        "_chunk_left",
        "_length_left",
        "_on_head",
        "_sink",
        "_state",
        "headers",
        "keep_alive",
        "reason",
        "status",
    )

    def __init__(self, sink: BodySink, on_head: HeadCallback | None = None) -> None:
        self._sink = sink
        self._on_head = on_head
        self._state = "head"
        self._buffer = b""
        self._chunk_left = 0
        self._length_left = 0
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.keep_alive = True

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def started(self) -> bool:
        return self.status != 0 or bool(self._buffer)

    @property
    def reads_until_eof(self) -> bool:
        return self._state == "eof-body"

    def _head(self, now: float) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise HttpProtocolError("response headers too large")
            return
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        rest = self._buffer[end + 4 :]
        self._buffer = b""
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpProtocolError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        connection = self.headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection and (parts[0] != "HTTP/1.0" or "keep-alive" in connection)
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._state = "chunk-size"
        elif "content-length" in self.headers:
            self._length_left = int(self.headers["content-length"])
            self._state = "length-body" if self._length_left else "done"
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._state = "done"
        else:
            self._state = "eof-body"
            self.keep_alive = False
        if self._on_head is not None:
            self._on_head(self.status, self.headers)
        if rest:
            self.feed(rest, now)

    def feed(self, data: bytes, now: float) -> None:
        state = self._state
        if state == "head":
            self._buffer += data
            self._head(now)
            return
        if state == "length-body":
            part = data[: self._length_left]
            self._length_left -= len(part)
            self._sink(part, now)
            if self._length_left == 0:
                self._state = "done"
            return
        if state == "eof-body":
            self._sink(data, now)
            return
        if state == "done":
            if data.strip():
                raise HttpProtocolError("bytes after the end of the response")
            return
        self._chunked(data, now)

    def _chunked(self, data: bytes, now: float) -> None:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        position = 0
        size = len(buffer)
        while position < size:
            state = self._state
            if state == "chunk-data":
                take = min(self._chunk_left, size - position)
                self._sink(buffer[position : position + take], now)
                position += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._state = "chunk-end"
            elif state == "chunk-end":
                if size - position < 2:
                    break
                if buffer[position : position + 2] != b"\r\n":
                    raise HttpProtocolError("chunk not followed by CRLF")
                position += 2
                self._state = "chunk-size"
            elif state == "chunk-size":
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                text = buffer[position:end].split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(text, 16)
                except ValueError:
                    raise HttpProtocolError(f"bad chunk size {text[:20]!r}") from None
                position = end + 2
                self._state = "chunk-data" if self._chunk_left else "trailers"
            elif state == "trailers":
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                empty = end == position  # an empty line ends the trailers, and the response
                position = end + 2
                if empty:
                    self._state = "done"
            else:  # done
                if buffer[position:].strip():
                    raise HttpProtocolError("bytes after the end of the response")
                return
        self._buffer = buffer[position:]

    def feed_eof(self) -> None:
        if self._state == "eof-body":
            self._state = "done"
        elif self._state != "done":
            raise ConnectionClosed("the server closed the connection before the response was complete")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    path_prefix: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.finished: asyncio.Future[None] | None = None
        self.closed = False
        self.used = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, request: bytes, sink: BodySink, on_head: HeadCallback | None) -> asyncio.Future[None]:
        assert self.transport is not None
        self.parser = ResponseParser(sink, on_head)
        self.finished = asyncio.get_running_loop().create_future()
        self.used = True
        self.transport.write(request)
        return self.finished

    def data_received(self, data: bytes) -> None:
        parser, finished = self.parser, self.finished
        if parser is None or finished is None or finished.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted any more
            return
        try:
            parser.feed(data, perf_counter())
        except Exception as error:  # a bad response, or the caller's sink failing
            finished.set_exception(error)
            self.close()
            return
        if parser.done:
            finished.set_result(None)

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        parser, finished = self.parser, self.finished
        if parser is None or finished is None or finished.done():
            return
        try:
            parser.feed_eof()
        except ConnectionClosed as error:
            if exc is not None:
                error.__cause__ = exc
            finished.set_exception(error)
            return
        finished.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and self.parser is not None
            and self.parser.done
            and self.parser.keep_alive
        )


@dataclass(slots=True)
class _Pool:
    idle: list[_Connection] = field(default_factory=list)


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]


class HttpClient:
    """Pooled keep-alive HTTP/1.1 connections; `request` streams the response body into a sink."""

    def __init__(self, max_connections: int = 0, connect_timeout_s: float = 30.0) -> None:
        self._pools: dict[Origin, _Pool] = {}
        self._limit = asyncio.Semaphore(max_connections) if max_connections > 0 else None
        self._connect_timeout_s = connect_timeout_s
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            self._ssl = self._ssl or ssl.create_default_context()
            context = self._ssl
        async with asyncio.timeout(self._connect_timeout_s):
            _, connection = await loop.create_connection(
                _Connection,
                origin.host,
                origin.port,
                ssl=context,
                server_hostname=origin.host if context else None,
            )
        return connection

    def _idle(self, origin: Origin) -> _Connection | None:
        pool = self._pools.get(origin)
        while pool is not None and pool.idle:
            connection = pool.idle.pop()
            if (
                not connection.closed
                and connection.transport is not None
                and not connection.transport.is_closing()
            ):
                return connection
        return None

    def _release(self, origin: Origin, connection: _Connection) -> None:
        if connection.reusable and not self._closed:
            self._pools.setdefault(origin, _Pool()).idle.append(connection)
        else:
            connection.close()

    async def request(
        self,
        method: str,
        origin: Origin,
        path: str,
        headers: dict[str, str],
        body: bytes,
        sink: BodySink,
        on_head: HeadCallback | None = None,
    ) -> Response:
        """Send one request and feed the response body to `sink` as it arrives (body bytes with the
        `time.perf_counter()` of the read that brought them; `on_head` gets the status and headers before
        any body); return once the response is complete."""
        head = [f"{method} {origin.path_prefix}{path} HTTP/1.1", f"Host: {origin.host_header}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        if self._limit is not None:
            await self._limit.acquire()
        try:
            for attempt in range(2):
                connection = self._idle(origin) if attempt == 0 else None
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(origin)
                finished = connection.start(data, sink, on_head)
                try:
                    await finished
                except ConnectionClosed:
                    parser = connection.parser
                    connection.close()
                    if reused and parser is not None and not parser.started:
                        continue  # the server had closed this idle connection: try a new one
                    raise
                except BaseException:
                    connection.close()
                    raise
                parser = connection.parser
                assert parser is not None
                self._release(origin, connection)
                return Response(parser.status, parser.reason, parser.headers)
            raise ConnectionClosed("the connection closed before the response")
        finally:
            if self._limit is not None:
                self._limit.release()

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()
        await asyncio.sleep(0)
