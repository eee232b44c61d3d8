"""The HTTP/1.1 client that carries proxied requests to replicas: keep-alive connections per replica,
responses parsed by httptools (llhttp, the parser uvicorn serves with) on an asyncio Protocol.

A pass-through proxy hop (uvicorn in, round robin out, nothing else) cost 1.11 ms of CPU per
streamed request with one pooled aiohttp session out and 0.57 ms with this client, and added
+1.14 ms against +0.55 ms to TTFT at p50, side by side in one run (`benchmarks/gateway_overhead.py
--floor`): aiohttp's response object, stream reader, timers and tracing are paid per request, and
every gateway request waits for them. aiohttp stays for the health checks and scrapes, which are few.

Timeouts are aiohttp's `sock_connect` and `sock_read`: connecting, and each wait for a replica's next
bytes. A connection goes back to the pool when its response has been read to the end, and is aborted
when a reader gives up on it before then, so that the engine sees the client leave and aborts the
request. A reused connection that the replica closed while it sat idle (a keep-alive race) is retried
once on a new one, before any byte of the response has arrived.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

MAX_BUFFERED_BYTES = 256 * 1024
"""A response buffers at most this much ahead of its reader before the socket stops being read."""


class UpstreamError(Exception):
    """A replica could not be reached, or its connection broke or spoke bad HTTP."""


class ConnectFailed(UpstreamError):
    pass


class ConnectionLost(UpstreamError):
    pass


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    tls: bool
    base_path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return f"{host}:{self.port}"


def _origin_of(url: str) -> _Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    return _Origin(parts.hostname, parts.port or (443 if tls else 80), tls, parts.path.rstrip("/"))


class Response:
    """A replica's answer: status and headers at once, the body as it arrives."""

    __slots__ = ("_buffered", "_chunks", "_connection", "_error", "_waiter", "complete", "headers", "status")

    def __init__(self, connection: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    async def read_chunk(self) -> bytes:
        """The body's next bytes as they came off the socket; b"" once it has all been read."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            await self._connection.wait(self)
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < MAX_BUFFERED_BYTES // 2:
            self._connection.resume()
        return chunk

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the response: a connection still carrying its body is aborted, so that the replica
        stops work on it; one whose body arrived whole is already back in the pool."""
        if not self.complete:
            self._connection.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
            self._wake()


class _Connection(asyncio.Protocol):
    def __init__(self, client: ReplicaClient, origin: _Origin) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)  # llhttp starts afresh after each response
        self._response: Response | None = None
        self._headers_waiter: asyncio.Future[Response] | None = None
        self._header_list: list[tuple[str, str]] = []
        self._received_any = False
        self._paused = False

    # ---- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        if self._response is None:  # bytes no request asked for
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response from {self.origin.host_header}: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed()
        response = self._response
        if response is not None and self._read_to_close(response):
            self._on_complete(response)  # a body that ends where the connection does
            return
        self._fail(ConnectionLost(f"{self.origin.host_header} closed the connection"))

    # ---- httptools callbacks ----------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None and self._headers_waiter is not None
        response.status = self._parser.get_status_code()
        response.headers = dict(self._header_list)
        if not self._headers_waiter.done():
            self._headers_waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        response._chunks.append(body)
        response._buffered += len(body)
        if response._buffered > MAX_BUFFERED_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        response._wake()

    def on_message_complete(self) -> None:
        response = self._response
        assert response is not None
        keep_alive = self._parser.should_keep_alive()
        self._on_complete(response)
        if keep_alive and not self.closed:
            self.client._park(self)
        else:
            self.abort()

    # ---- used by the client and its responses ---------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes, on_sent: Callable[[], None] | None) -> Response:
        """Send one request and wait for its status and headers."""
        assert self.transport is not None
        self._response = Response(self)
        self._header_list = []
        self._received_any = False
        waiter = self._headers_waiter = self.client._loop.create_future()
        if len(body) < 65536:  # one write, one segment; a large body is not copied
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        if on_sent is not None:
            on_sent()
        return await self._within_read_timeout(waiter)

    async def wait(self, response: Response) -> None:
        """Until more of the body, its end or an error; TimeoutError after the read timeout."""
        waiter = response._waiter = self.client._loop.create_future()
        try:
            await self._within_read_timeout(waiter)
        finally:
            response._waiter = None

    async def _within_read_timeout(self, waiter: asyncio.Future):
        """The replica's next bytes, or TimeoutError; the connection is aborted if the wait ends early."""
        timer = self.client._loop.call_later(self.client.read_timeout_s, self._timed_out, waiter)
        try:
            return await waiter
        except BaseException:
            self.abort()
            raise
        finally:
            timer.cancel()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self._mark_closed() and self.transport is not None:
            self.transport.abort()

    def _mark_closed(self) -> bool:
        """True the first time, when the connection's slot is given back."""
        if self.closed:
            return False
        self.closed = True
        self.client._forget(self)
        return True

    def failed_before_answering(self) -> bool:
        return not self._received_any

    def _timed_out(self, waiter: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_exception(
                TimeoutError(f"{self.origin.host_header} sent nothing for {self.client.read_timeout_s:g} s")
            )

    def _read_to_close(self, response: Response) -> bool:
        headers_in = self._headers_waiter is not None and self._headers_waiter.done()
        headers = response.headers
        return (
            headers_in
            and "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "")
        )

    def _on_complete(self, response: Response) -> None:
        response.complete = True
        response._wake()
        self._response = None

    def _fail(self, error: UpstreamError) -> None:
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._response is not None:
            self._response._fail(error)
            self._response = None


class ReplicaClient:
    """Keep-alive connections to replicas, at most `max_connections` open at once."""

    def __init__(
        self,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        idle_timeout_s: float = 4.0,
        default_headers: dict[str, str] | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        """Shorter than uvicorn's keep-alive (5 s), vLLM's server, so that an idle connection is
        dropped here before the replica closes it under a request."""
        self._default_head = "".join(f"{k}: {v}\r\n" for k, v in (default_headers or {}).items())
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._tls: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, from the first request

    async def post(
        self,
        url: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """POST `body` to `url` + `path`; returns once the status and headers are in. `on_sent` (which
        must not raise) is called once, as soon as the request has been handed to the socket: work
        that need not delay the request is done there, while the replica computes."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = _origin_of(url)
        head = self._head(origin, path, len(body), headers)
        connection = self._idle_connection(origin)
        if connection is not None:
            try:
                return await connection.exchange(head, body, on_sent)
            except ConnectionLost:
                if not connection.failed_before_answering():
                    raise
                # the replica closed the idle connection as the request went out: once more, on a new one
                on_sent = None  # called already
        connection = await self._connect(origin)
        return await connection.exchange(head, body, on_sent)

    async def aclose(self) -> None:
        for connections in list(self._idle.values()):
            for connection in list(connections):
                connection.abort()
        self._idle.clear()

    def _head(self, origin: _Origin, path: str, length: int, headers: dict[str, str]) -> bytes:
        lines = [f"POST {origin.base_path}{path} HTTP/1.1\r\nhost: {origin.host_header}\r\n"]
        lines.append(f"content-length: {length}\r\n{self._default_head}")
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            transport = connection.transport
            stale = now - connection.idle_since > self.idle_timeout_s
            if stale or transport is None or transport.is_closing():
                connection.abort()
                continue
            return connection
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        await self._take_slot()
        assert self._loop is not None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await self._loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=self._tls_context() if origin.tls else None,
                )
        except TimeoutError:
            self._give_slot()
            raise ConnectFailed(
                f"connecting to {origin.host_header} took over {self.connect_timeout_s:g} s"
            ) from None
        except OSError as exc:
            self._give_slot()
            raise ConnectFailed(f"cannot connect to {origin.host_header}: {exc.strerror or exc}") from None
        except BaseException:
            self._give_slot()
            raise
        return connection

    async def _take_slot(self) -> None:
        while self._open >= self.max_connections:
            if not self._close_an_idle_connection():
                assert self._loop is not None
                waiter = self._loop.create_future()
                self._slot_waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._slot_waiters:
                        self._slot_waiters.remove(waiter)
        self._open += 1

    def _give_slot(self) -> None:
        self._open -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _close_an_idle_connection(self) -> bool:
        for connections in self._idle.values():
            if connections:
                connections.pop(0).abort()  # the longest idle
                return True
        return False

    def _park(self, connection: _Connection) -> None:
        if self._slot_waiters:  # a request waits for a connection to another replica: free this one
            connection.abort()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        """A connection closed (aborted or lost; once per connection): its slot is free."""
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        self._give_slot()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
