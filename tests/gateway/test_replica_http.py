"""The client that carries proxied requests to replicas, against real HTTP servers on loopback: uvicorn
for the ordinary exchanges, scripted asyncio servers for what a replica does wrong."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvicorn

from gateway.replica_http import (
    MAX_BUFFERED_BYTES,
    ConnectFailed,
    ConnectionLost,
    ReplicaClient,
    UpstreamError,
    _origin_of,
)
from loadtest.process import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = {"content-type": "application/json"}


def client(**options) -> ReplicaClient:
    settings = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0, "max_connections": 16} | options
    return ReplicaClient(**settings)


@contextlib.asynccontextmanager
async def open_client(**options) -> AsyncIterator[ReplicaClient]:
    replicas = client(**options)
    try:
        yield replicas
    finally:
        await replicas.aclose()


@contextlib.asynccontextmanager
async def scripted_server(handler: Handler) -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A TCP server that runs `handler` on each connection; yields its URL and the connections so far."""
    connections: list[asyncio.StreamWriter] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        for writer in connections:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0].encode(), headers, body


@contextlib.asynccontextmanager
async def uvicorn_server(app) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def echo_app(scope, receive, send) -> None:
    """Answers a POST with its method, path, content type and body, chunked, in three pieces."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = dict(scope["headers"])
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"x-seen", headers[b"content-type"])]}
    )
    for piece in (scope["method"].encode(), scope["path"].encode(), body):
        await send({"type": "http.response.body", "body": piece + b";", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def test_requests_reuse_one_keep_alive_connection_and_read_a_chunked_body():
    async with uvicorn_server(echo_app) as url, open_client() as replicas:
        for turn in range(3):
            response = await replicas.post(url, "/v1/completions", f"body {turn}".encode(), JSON)
            assert response.status == 200
            assert response.headers["x-seen"] == "application/json"
            assert await response.read() == f"POST;/v1/completions;body {turn};".encode()
            assert response.complete
        assert replicas._open == 1  # one connection carried all three


async def test_a_replica_url_with_a_path_prefix_keeps_it():
    async with uvicorn_server(echo_app) as url, open_client() as replicas:
        response = await replicas.post(url + "/engine-a/", "/v1/completions", b"{}", JSON)
        assert await response.read() == b"POST;/engine-a/v1/completions;{};"


def test_replica_urls_give_host_headers_and_base_paths_and_bad_ones_are_refused():
    origin = _origin_of("http://[::1]:8000/engine/")
    assert (origin.host, origin.host_header, origin.base_path) == ("::1", "[::1]:8000", "/engine")
    assert _origin_of("https://vllm.example").host_header == "vllm.example:443"
    with pytest.raises(ValueError, match="not an http"):
        _origin_of("unix:///run/vllm.sock")


async def test_chunks_reach_the_reader_as_they_arrive_not_at_the_end():
    release = asyncio.Event()

    async def streaming(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with scripted_server(streaming) as (url, _), open_client() as replicas:
        response = await replicas.post(url, "/v1/chat/completions", b"{}", JSON)
        assert await response.read_chunk() == b"first"  # the server is still holding the rest back
        release.set()
        assert await response.read_chunk() == b"second"
        assert await response.read_chunk() == b""


async def test_a_body_without_length_ends_where_the_connection_does():
    async def close_delimited(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async with scripted_server(close_delimited) as (url, _), open_client() as replicas:
        response = await replicas.post(url, "/v1/completions", b"{}", JSON)
        assert await response.read() == b"all of it"
        assert replicas._open == 0  # not pooled: it is closed


async def test_a_connection_the_replica_closed_while_idle_is_replaced_without_failing_the_request():
    async def answer_once_then_drop(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the next request on this connection: closed unanswered (the race)

    async with scripted_server(answer_once_then_drop) as (url, connections), open_client() as replicas:
        first = await replicas.post(url, "/v1/completions", b"{}", JSON)
        assert await first.read() == b"ok"
        sent = []
        second = await replicas.post(url, "/v1/completions", b"{}", JSON, on_sent=lambda: sent.append(1))
        assert await second.read() == b"ok"
        assert len(connections) == 2
        assert sent == [1]  # written twice, told once


async def test_a_connection_idle_past_the_timeout_is_not_reused():
    async with uvicorn_server(echo_app) as url, open_client(idle_timeout_s=0.05) as replicas:
        await (await replicas.post(url, "/a", b"1", JSON)).read()
        [idle] = replicas._idle.values()
        old = idle[0]
        await asyncio.sleep(0.1)
        await (await replicas.post(url, "/a", b"2", JSON)).read()
        assert old.closed and replicas._open == 1


async def test_a_replica_that_stops_sending_times_out_and_its_connection_is_dropped():
    async def stalls_after_headers(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await reader.read()  # until the client gives up

    server = scripted_server(stalls_after_headers)
    async with server as (url, _), open_client(read_timeout_s=0.2) as replicas:
        response = await replicas.post(url, "/v1/completions", b"{}", JSON)
        assert await response.read_chunk() == b"one"
        with pytest.raises(TimeoutError, match=r"sent nothing for 0\.2 s"):
            await response.read_chunk()
        assert replicas._open == 0


async def test_a_replica_that_never_answers_times_out_before_the_headers():
    async def silent(reader, writer) -> None:
        await reader.read()

    async with scripted_server(silent) as (url, _), open_client(read_timeout_s=0.2) as replicas:
        with pytest.raises(TimeoutError):
            await replicas.post(url, "/v1/completions", b"{}", JSON)
        assert replicas._open == 0


async def test_a_refused_connection_is_a_connect_failure():
    replicas = client()
    sent = []
    with pytest.raises(ConnectFailed, match="cannot connect"):
        url = f"http://127.0.0.1:{free_port()}"
        await replicas.post(url, "/v1/completions", b"{}", JSON, on_sent=lambda: sent.append(1))
    assert replicas._open == 0
    assert sent == []  # nothing went out


async def test_a_replica_dying_mid_body_is_a_lost_connection_and_garbage_is_an_upstream_error():
    async def dies_mid_body(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async def garbage(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    replicas = client()
    async with scripted_server(dies_mid_body) as (url, _):
        response = await replicas.post(url, "/v1/completions", b"{}", JSON)
        assert await response.read_chunk() == b"partial"
        with pytest.raises(ConnectionLost):
            await response.read_chunk()
    async with scripted_server(garbage) as (url, _):
        with pytest.raises(UpstreamError, match="malformed response"):
            await replicas.post(url, "/v1/completions", b"{}", JSON)
    assert replicas._open == 0


async def test_closing_a_response_before_its_end_aborts_the_connection_so_the_replica_sees_it():
    replica_saw_eof = asyncio.Event()

    async def endless(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\ndata\r\n")
        await writer.drain()
        if await reader.read() == b"":
            replica_saw_eof.set()

    async with scripted_server(endless) as (url, _):
        replicas = client()
        response = await replicas.post(url, "/v1/chat/completions", b"{}", JSON)
        assert await response.read_chunk() == b"data"
        response.close()
        await asyncio.wait_for(replica_saw_eof.wait(), 2)
        assert replicas._open == 0


async def test_a_slow_reader_stops_the_socket_being_read_instead_of_buffering_the_stream():
    sent = asyncio.Event()
    total = 32 * 1024 * 1024  # more than the kernel's socket buffers on both ends hold

    async def floods(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for _ in range(total // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        sent.set()

    async with scripted_server(floods) as (url, _), open_client() as replicas:
        response = await replicas.post(url, "/v1/completions", b"{}", JSON)
        await asyncio.sleep(0.3)  # the server writes as fast as the client lets it
        assert not sent.is_set()
        assert response._buffered <= 2 * MAX_BUFFERED_BYTES
        assert len(await response.read()) == total


async def test_at_the_connection_limit_a_request_waits_for_a_connection_to_free_up():
    release = asyncio.Event()

    async def held_open(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nhe")
        await writer.drain()
        await release.wait()
        writer.write(b"ld")
        await writer.drain()
        await reader.read()

    async with (
        scripted_server(held_open) as (first, _),
        uvicorn_server(echo_app) as second,
        open_client(max_connections=1) as replicas,
    ):
        held = await replicas.post(first, "/held", b"", JSON)
        waiting = asyncio.create_task(replicas.post(second, "/next", b"", JSON))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # the one connection still carries the first response
        release.set()
        assert await held.read() == b"held"  # complete: its connection is closed for the waiting one
        response = await asyncio.wait_for(waiting, 2)
        assert await response.read() == b"POST;/next;;"
        assert replicas._open == 1


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    replicas = client()
    with pytest.raises(ValueError, match="line break"):
        await replicas.post("http://127.0.0.1:9", "/v1/completions", b"{}", {"x-request-id": "a\r\nb: c"})
