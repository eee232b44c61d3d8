import asyncio
import signal

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.config import RedisConfig
from gateway.index.base import PrefixMatch, TierCapacity
from gateway.index.redis_connect import make_redis_commands
from gateway.index.redis_store import RedisPrefixStore
from gateway.index.shared import SharedIndex
from loadtest.process import free_port
from loadtest.redis_process import redis_server
from tests.redis_servers import cluster_setup, make_tls_files, sentinel_setup

CAPACITY = TierCapacity(hbm=640, dram=640)


def chain(tag: int, length: int, prefix: list[int] | None = None) -> list[int]:
    head = list(prefix or [])
    return head + [(tag << 32) + i + 1 for i in range(length - len(head))]


def gateway_index(config: RedisConfig, stride: int = 16) -> SharedIndex:
    store = RedisPrefixStore(make_redis_commands(config), config.key_prefix, stride, config.ttl_s)
    index = SharedIndex(store, CAPACITY, CollectorRegistry(), lookup_timeout_s=0.5)
    for replica in ("a", "b", "c"):
        index.set_capacity(replica, CAPACITY)
    return index


def metric(index: SharedIndex, name: str) -> float:
    return index.metrics.up._value.get() if name == "up" else index.metrics.fallbacks._value.get()


async def test_a_decision_made_by_one_gateway_routes_the_others(redis_url):
    one, two = gateway_index(RedisConfig(url=redis_url)), gateway_index(RedisConfig(url=redis_url))
    try:
        prompt = chain(1, 100)
        one.record("m", "b", prompt)
        await one.flush()
        seen = await two.match("m", prompt, ["a", "b", "c"])
        assert seen == {"b": PrefixMatch(hbm=96)}  # stride 16: six full groups of the 100 blocks
        longer = chain(1, 200, prompt)
        assert (await two.match("m", longer, ["a", "b", "c"]))["b"].blocks == 96
        assert await two.match("other-model", prompt, ["a", "b", "c"]) == {}
    finally:
        await one.close()
        await two.close()


async def test_what_other_gateways_pushed_out_is_gone_even_if_the_local_view_remembers_it(redis_url):
    one, two = gateway_index(RedisConfig(url=redis_url)), gateway_index(RedisConfig(url=redis_url))
    try:
        prompt = chain(1, 100)
        one.record("m", "b", prompt)
        await one.flush()
        for tag in range(2, 16):  # 1400 blocks through the other gateway: more than b's 1280
            two.record("m", "b", chain(tag, 100))
        await two.flush()
        assert (await one.local.match("m", prompt, ["b"]))["b"].blocks == 100  # the stale local view
        assert await one.match("m", prompt, ["a", "b", "c"]) == {}
        # below Redis's granularity the local view still adds the tail: 100 blocks, not 96
        one.record("m", "c", prompt)
        await one.flush()
        assert (await one.match("m", prompt, ["c"]))["c"].blocks == 100
    finally:
        await one.close()
        await two.close()


async def test_capacity_bounds_the_entries_and_older_prompts_fall_to_lower_tiers(redis_url):
    index = gateway_index(RedisConfig(url=redis_url))
    try:
        first = chain(1, 480)
        index.record("m", "a", first)
        for tag in range(2, 5):
            index.record("m", "a", chain(tag, 480))
        await index.flush()
        # 4 x 480 blocks into 640 HBM + 640 DRAM, most recent first: the 4th and 160 blocks of the 3rd
        # in HBM, the rest of the 3rd and 320 blocks of the 2nd in DRAM, the 1st gone
        assert await index.store.entries("m", "a") == (640 + 640) // 16
        remote = gateway_index(RedisConfig(url=redis_url))
        assert "a" not in await remote.match("m", first, ["a"])
        assert (await remote.match("m", chain(2, 480), ["a"]))["a"] == PrefixMatch(dram=320)
        assert (await remote.match("m", chain(3, 480), ["a"]))["a"] == PrefixMatch(hbm=160, dram=320)
        assert (await remote.match("m", chain(4, 480), ["a"]))["a"] == PrefixMatch(hbm=480)
        await remote.close()
    finally:
        await index.close()


async def test_a_lookup_is_one_round_trip_whatever_the_prompt_length(redis_url, redis_process):
    index = gateway_index(RedisConfig(url=redis_url))
    try:
        index.record("m", "a", chain(1, 2048))
        await index.flush()
        await index.match("m", chain(1, 16), ["a"])  # loads the script if Redis does not have it yet
        stats = Redis.from_url(redis_url)
        await stats.config_resetstat()
        for length in (32, 512, 2048):
            await index.match("m", chain(1, length), ["a", "b", "c"])
        calls = await stats.info("commandstats")
        assert calls["cmdstat_evalsha"]["calls"] == 3
        assert set(calls) == {"cmdstat_evalsha", "cmdstat_info"} or "cmdstat_config|resetstat" in calls
        await stats.aclose()
    finally:
        await index.close()


async def test_writes_go_on_after_redis_forgets_its_scripts(redis_url):
    index = gateway_index(RedisConfig(url=redis_url))
    try:
        index.record("m", "a", chain(1, 64))
        await index.flush()
        await Redis.from_url(redis_url).script_flush()
        index.record("m", "b", chain(2, 64))
        await index.flush()
        assert await index.store.entries("m", "b") == 4
        assert metric(index, "up") == 1
    finally:
        await index.close()


async def test_a_replica_that_leaves_has_its_entries_dropped(redis_url):
    index = gateway_index(RedisConfig(url=redis_url))
    try:
        index.record("m", "a", chain(1, 64))
        await index.flush()
        await index.forget_replica("a")
        assert await index.store.entries("m", "a") == 0
        assert await index.match("m", chain(1, 64), ["a"]) == {}
    finally:
        await index.close()


async def test_redis_down_routes_from_the_local_view_and_catches_up(tmp_path):
    with redis_server(tmp_path / "r") as server:
        index = gateway_index(RedisConfig(url=server.url))
        observer = gateway_index(RedisConfig(url=server.url))
        before = chain(1, 64)
        index.record("m", "a", before)
        await index.flush()
        server.stop()
        during = chain(2, 64)
        index.record("m", "b", during)  # queued: Redis is down
        for _ in range(5):
            assert (await index.match("m", during, ["a", "b"]))["b"].blocks == 64  # the local view answers
        assert metric(index, "up") == 0 and metric(index, "fallbacks") >= 5
        server.start()  # same port, empty: the earlier record is lost with the process
        index.breaker.open_until = 0.0  # skip the back-off wait
        await index.match("m", during, ["a", "b"])
        await index.flush()
        assert metric(index, "up") == 1
        assert (await observer.match("m", during, ["a", "b"])) == {"b": PrefixMatch(hbm=64)}
        await index.close()
        await observer.close()


async def test_password_from_a_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    with redis_server(tmp_path / "r", "--requirepass", "s3cret") as server:
        index = gateway_index(RedisConfig(url=server.url, password_file=str(secret)))
        index.record("m", "a", chain(1, 32))
        await index.flush()
        assert (await index.match("m", chain(1, 32), ["a"]))["a"].blocks == 32
        await index.close()
        unauthenticated = gateway_index(RedisConfig(url=server.url))
        assert await unauthenticated.match("m", chain(1, 32), ["a"]) == {}  # refused, falls back, no error
        assert metric(unauthenticated, "up") == 0
        await unauthenticated.close()


async def test_tls(tmp_path):
    files = make_tls_files(tmp_path / "tls")
    port = free_port()
    tls = [
        *("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"),
        *(
            "--tls-cert-file",
            str(files["cert"]),
            "--tls-key-file",
            str(files["key"]),
            "--tls-ca-cert-file",
            str(files["ca"]),
        ),
    ]
    with redis_server(tmp_path / "r", *tls, port=port):
        index = gateway_index(RedisConfig(url=f"rediss://127.0.0.1:{port}/0", tls_ca_file=str(files["ca"])))
        index.record("m", "a", chain(1, 32))
        await index.flush()
        assert (await index.match("m", chain(1, 32), ["a"]))["a"].blocks == 32
        await index.close()


async def test_sentinel(tmp_path):
    with sentinel_setup(tmp_path) as (_, sentinel_port):
        index = gateway_index(
            RedisConfig(sentinels=[f"127.0.0.1:{sentinel_port}"], sentinel_service="mymaster")
        )
        index.record("m", "a", chain(1, 32))
        await index.flush()
        assert (await index.match("m", chain(1, 32), ["a"]))["a"].blocks == 32
        await index.close()


async def test_cluster_keeps_a_models_keys_in_one_slot(tmp_path):
    with cluster_setup(tmp_path) as nodes:
        config = RedisConfig(url=nodes[0].url, cluster=True)
        one, two = gateway_index(config), gateway_index(config)
        for model in ("llama", "qwen", "mistral"):
            one.record(model, "a", chain(1, 48))
            await one.flush()
            assert (await two.match(model, chain(1, 48), ["a", "b"]))["a"].blocks == 48
        keys = (one.store.replica_key("llama", "a"), one.store.clock_key("llama"))
        slots = {await one.store.redis.client.execute_command("CLUSTER KEYSLOT", key) for key in keys}
        assert len(slots) == 1
        await one.close()
        await two.close()


@pytest.mark.parametrize("prefix", ["kv{g", "k}"])
def test_braces_in_the_key_prefix_are_refused(prefix):
    with pytest.raises(ValueError, match="braces"):
        RedisPrefixStore(make_redis_commands(RedisConfig()), prefix)


async def test_slow_redis_counts_as_down(tmp_path):
    with redis_server(tmp_path / "r", "--enable-debug-command", "local") as server:
        index = gateway_index(RedisConfig(url=server.url))
        index.lookup_timeout_s = 0.05
        blocker = Redis.from_url(server.url, socket_timeout=5)
        try:
            index.record("m", "a", chain(1, 32))
            slow = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "0.3"))
            await asyncio.sleep(0.02)
            found = await asyncio.wait_for(index.match("m", chain(1, 32), ["a"]), 1.0)
            assert found["a"].blocks == 32  # the local view answered, on time
            assert metric(index, "up") == 0
            await asyncio.wait_for(slow, 5.0)
        finally:
            await asyncio.wait_for(blocker.aclose(), 5.0)
            await asyncio.wait_for(index.close(), 10.0)


async def test_a_hung_redis_costs_one_probe_per_back_off_whatever_the_concurrency(tmp_path):
    with redis_server(tmp_path / "r") as server:
        index = gateway_index(RedisConfig(url=server.url))
        index.lookup_timeout_s = 0.05
        hashes = chain(1, 64)
        index.record("m", "a", hashes)
        await index.flush()
        server.process.send_signal(signal.SIGSTOP)  # hangs: every call runs into its timeout
        try:
            # twenty lookups in flight when Redis hangs: one outage, the breaker opens once
            await asyncio.gather(*(index.match("m", hashes, ["a"]) for _ in range(20)))
            assert metric(index, "up") == 0 and index.breaker.backoff == 1.0
            # the back-off is over: one lookup probes, the others keep routing from the local view
            index.breaker.open_until = 0.0
            started = asyncio.get_running_loop().time()
            found = await asyncio.gather(*(index.match("m", hashes, ["a"]) for _ in range(20)))
            assert all(match["a"].blocks == 64 for match in found)
            assert index.breaker.backoff == 2.0  # the probe failed: doubled once, not twenty times
            assert asyncio.get_running_loop().time() - started < 0.5
        finally:
            server.process.send_signal(signal.SIGCONT)
        index.breaker.open_until = 0.0
        await index.match("m", hashes, ["a"])
        assert metric(index, "up") == 1 and index.breaker.backoff == 1.0
        await index.close()
