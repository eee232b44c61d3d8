"""The shared index's pipelined Redis connection, against a real redis-server."""

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, ReadOnlyError, ResponseError

from gateway.config import RedisConfig
from gateway.index.redis_connect import make_redis_commands
from gateway.index.resp_link import RespLink
from loadtest.process import free_port
from loadtest.redis_process import redis_server


def link_to(url: str, **options) -> RespLink:
    link = make_redis_commands(RedisConfig(url=url))
    assert isinstance(link, RespLink)
    for name, value in options.items():
        setattr(link, name, value)
    return link


@asynccontextmanager
async def open_link(url: str, **options) -> AsyncIterator[RespLink]:
    link = link_to(url, **options)
    try:
        yield link
    finally:
        await link.aclose()


async def test_concurrent_calls_share_one_connection_and_each_gets_its_own_reply(redis_url):
    async with open_link(redis_url) as link:
        replies = await asyncio.gather(*(link.execute("ECHO", f"call {i}") for i in range(300)))
        assert replies == [f"call {i}".encode() for i in range(300)]
        clients = await link.execute("CLIENT", "LIST")
        assert clients.count(b"cmd=client") == 1  # this one connection, not one per call


async def test_a_batch_is_answered_in_order_and_its_first_error_raised_after_all_replies(redis_url):
    async with open_link(redis_url) as link:
        assert await link.execute_many([("SET", "k", "1"), ("INCR", "k"), ("GET", "k")]) == [b"OK", 2, b"2"]
        with pytest.raises(ResponseError, match="not an integer"):
            await link.execute_many([("SET", "s", "text"), ("INCR", "s"), ("SET", "after", "yes")])
        assert await link.execute("GET", "after") == b"yes"  # the whole batch ran; replies still in step
        assert await link.execute_many([]) == []


async def test_error_replies_raise_redis_py_exceptions(redis_url):
    async with open_link(redis_url) as link:
        with pytest.raises(NoScriptError):
            await link.execute("EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError, match="unknown command"):
            await link.execute("NOT-A-COMMAND")
        assert await link.execute("PING") == b"PONG"


async def test_a_call_that_timed_out_does_not_shift_the_replies_of_later_calls(tmp_path):
    with redis_server(tmp_path / "r", "--enable-debug-command", "local") as server:
        async with open_link(server.url) as link:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await link.execute("DEBUG", "SLEEP", "0.2")
            # its reply (+OK) arrives first and goes to nobody; this call gets its own
            assert await link.execute("ECHO", "mine") == b"mine"


async def test_a_hung_server_costs_the_connection_once_its_oldest_reply_is_overdue(tmp_path):
    with redis_server(tmp_path / "r") as server:
        async with open_link(server.url, stall_s=0.2) as link:
            first = await link.execute("CLIENT", "ID")
            server.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await link.execute("PING")
                await asyncio.sleep(0.25)  # the PING is now overdue
            finally:
                server.process.send_signal(signal.SIGCONT)
            assert await link.execute("CLIENT", "ID") != first  # a new connection


async def test_calls_in_flight_fail_when_the_server_goes_and_the_next_call_reconnects(tmp_path):
    with redis_server(tmp_path / "r", "--enable-debug-command", "local") as server:
        async with open_link(server.url) as link:
            waiting = asyncio.ensure_future(link.execute("DEBUG", "SLEEP", "5"))
            await asyncio.sleep(0.1)
            server.stop()
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(waiting, 5.0)
            with pytest.raises(ConnectionError):
                await link.execute("PING")  # nothing listens
            server.start()
            assert await link.execute("PING") == b"PONG"


async def test_the_database_and_credentials_of_the_url_apply_to_every_connection(tmp_path):
    with redis_server(tmp_path / "r", "--requirepass", "s3cret") as server:
        link = link_to(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        observer = Redis(port=server.port, password="s3cret", db=3)
        try:
            await link.execute("SET", "where", "db3")
            assert await observer.get("where") == b"db3"
            await observer.client_kill_filter(_type="normal", skipme=True)  # drop the link's connection
            assert await link.execute("GET", "where") == b"db3"  # reconnected, authenticated, db 3 again
            with pytest.raises(AuthenticationError):
                await link_to(server.url).execute("PING")
        finally:
            await link.aclose()
            await observer.aclose()


async def test_unix_socket(tmp_path):
    socket = tmp_path / "redis.sock"
    with redis_server(tmp_path / "r", "--unixsocket", str(socket)):
        async with open_link(f"unix://{socket}?db=2") as link:
            assert await link.execute("SET", "k", "v") == b"OK"
            assert await link.execute("GET", "k") == b"v"
            assert b"db=2" in await link.execute("CLIENT", "INFO")


async def test_a_refused_connection_is_a_connection_error():
    with pytest.raises(ConnectionError, match="Connecting to Redis failed"):
        await link_to(f"redis://127.0.0.1:{free_port()}/0").execute("PING")


async def test_a_readonly_answer_drops_the_connection_so_the_next_call_finds_the_master_again(tmp_path):
    with redis_server(tmp_path / "master") as master, redis_server(tmp_path / "replica") as replica:
        async with open_link(replica.url) as link:
            before = await link.execute("CLIENT", "ID")
            await link.execute("REPLICAOF", "127.0.0.1", master.port)  # as a failover demotes a master
            with pytest.raises(ReadOnlyError):
                await link.execute("SET", "k", "v")
            assert await link.execute("CLIENT", "ID") != before  # connected again
