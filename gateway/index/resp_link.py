"""One pipelined connection to a Redis server, for the shared index's lookups and writes.

Calls from concurrent requests share the connection: each writes its command at once and waits for its
own reply, replies coming back in the order the commands went out (RESP's pipelining). hiredis packs
the commands and parses the replies in C. The index's lookup for 8 replicas and a 32k-token prompt
cost the gateway 122 us of CPU this way against 298 us through redis-py's asyncio client, whose
command packing in Python, pool checkout, task per write and stream reader are per call
(`benchmarks/redis_client_choice.py`; a redis-py connection used directly, coredis and valkey-glide
were no better than 92 us for a smaller lookup that took 36 us here). redis-py still parses the URL, finds the
master through Sentinel, and serves Redis Cluster, whose slot routing this does not attempt.

A call has no timeout of its own: the shared index bounds every call it makes. A connection whose
oldest unanswered command has waited longer than `stall_s` (a hung server, a dead peer that sent no
reset) is dropped by the next call, which connects again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)

Address = tuple[str, int] | str
"""(host, port), or the path of a Unix socket."""
Command = Sequence[str | bytes | int | float]


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[asyncio.Future, float]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if not self._waiting:
                    raise hiredis.ProtocolError("a reply no command asked for")
                future, _ = self._waiting.popleft()
                if not future.done():  # done: its caller was cancelled (timed out) meanwhile
                    future.set_result(reply)
        except hiredis.ProtocolError:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        error = ConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}")
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = [loop.create_future() for _ in commands]
        self.transport.write(b"".join(hiredis.pack_command(tuple(command)) for command in commands))
        self._waiting.extend((future, now) for future in futures)
        return futures

    def usable(self, now: float, stall_s: float) -> bool:
        if self.lost or self.transport is None or self.transport.is_closing():
            return False
        return not (self._waiting and now - self._waiting[0][1] > stall_s)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _checked(reply: Any) -> Any:
    """The reply, or the error it carries raised as redis-py's exception of the same meaning."""
    if not isinstance(reply, hiredis.ReplyError):
        return reply
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        raise NoScriptError(message)
    if message.startswith("READONLY"):
        raise ReadOnlyError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        raise AuthenticationError(message)
    raise ResponseError(message)


def _checked_on(protocol: _RespProtocol, reply: Any) -> Any:
    try:
        return _checked(reply)
    except ReadOnlyError:
        protocol.abort()  # a replica now (a Sentinel failover): the next call finds the master again
        raise


class RespLink:
    def __init__(
        self,
        resolve: Callable[[], Awaitable[Address]],
        *,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        connect_timeout_s: float = 1.0,
        stall_s: float = 1.0,
    ) -> None:
        self.resolve = resolve
        """Where the server is, asked at every connect: a Sentinel's answer moves with a failover."""
        self.ssl_context = ssl_context
        self.username = username
        self.password = password
        self.db = db
        self.connect_timeout_s = connect_timeout_s
        self.stall_s = stall_s
        self._protocol: _RespProtocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, *command: str | bytes | int | float) -> Any:
        protocol = await self._connected()
        (future,) = protocol.send((command,))
        return _checked_on(protocol, await future)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Every command in one write; their replies, or the first error among them once all are in."""
        if not commands:
            return []
        protocol = await self._connected()
        replies = await asyncio.gather(*protocol.send(commands))
        return [_checked_on(protocol, reply) for reply in replies]

    async def _connected(self) -> _RespProtocol:
        protocol = self._protocol
        if protocol is not None and protocol.usable(time.monotonic(), self.stall_s):
            return protocol
        async with self._connecting:
            protocol = self._protocol
            if protocol is not None and protocol.usable(time.monotonic(), self.stall_s):
                return protocol  # another call connected while this one waited for the lock
            if protocol is not None:
                protocol.abort()
                self._protocol = None
            self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                address = await self.resolve()
                if isinstance(address, str):
                    _, protocol = await loop.create_unix_connection(_RespProtocol, address)
                else:
                    host, port = address
                    _, protocol = await loop.create_connection(
                        _RespProtocol, host, port, ssl=self.ssl_context
                    )
                await self._hello(protocol)
        except TimeoutError:
            raise ConnectionError(f"Connecting to Redis timed out after {self.connect_timeout_s} s") from None
        except OSError as exc:
            raise ConnectionError(f"Connecting to Redis failed: {exc}") from exc
        return protocol

    async def _hello(self, protocol: _RespProtocol) -> None:
        commands: list[Command] = []
        if self.password:
            credentials = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", *credentials))
        if self.db:
            commands.append(("SELECT", self.db))
        try:
            for reply in await asyncio.gather(*protocol.send(commands)):
                _checked(reply)
        except BaseException:
            protocol.abort()
            raise

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.abort()
            self._protocol = None
