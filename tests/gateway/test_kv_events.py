"""KV events: decoding both wire encodings, the event-fed index, and following a live ZMQ stream.

The publisher and replay server here are written from the wire contract with plain pyzmq and msgpack,
independently of the gateway's decoder and of the simulator's publisher.
"""

import asyncio
import contextlib

import msgpack
import pytest
import zmq
import zmq.asyncio

from gateway.blocks import TokenBlockHasher, local_tokenize
from gateway.chat_template import render_chat
from gateway.index.base import PrefixMatch
from gateway.kv_events.decode import AllBlocksCleared, BlockRemoved, BlockStored, DecodeError, decode_batch
from gateway.kv_events.precise_index import PreciseIndex
from gateway.kv_events.subscriber import EventStream
from gateway.profiles import Tier
from gateway.request import parse_request
from gateway.tokenizer import ByteTokenizer
from loadtest.process import free_port

BLOCK = 16


def stored_array(hashes, parent, tokens, medium="GPU", extra=None):
    return ["BlockStored", hashes, parent, tokens, BLOCK, None, medium, None, extra, 0, None, None]


def stored_map(hashes, parent, tokens, medium="GPU", extra=None):
    event = {"type": "BlockStored", "block_hashes": hashes, "token_ids": tokens, "block_size": BLOCK}
    if parent is not None:
        event["parent_block_hash"] = parent
    if medium != "GPU":
        event["medium"] = medium
    if extra is not None:
        event["extra_keys"] = extra
    return event


def removed_array(hashes, medium="GPU"):
    return ["BlockRemoved", hashes, medium, 0]


def removed_map(hashes, medium="GPU"):
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": medium}


def payload(events, rank=None) -> bytes:
    return msgpack.packb([1700000000.5, events, rank])


ENCODINGS = {
    "array": (stored_array, removed_array, ["AllBlocksCleared"]),
    "map": (stored_map, removed_map, {"type": "AllBlocksCleared"}),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("hashes", [[2**64 - 1, 7], [b"\x01" * 32, b"\x02" * 32]])
def test_both_encodings_and_both_hash_kinds_decode_alike(encoding, hashes):
    stored, removed, cleared = ENCODINGS[encoding]
    events = [stored(hashes, None, list(range(32)), "cpu"), removed(hashes[:1], "Storage"), cleared]
    batch = decode_batch(payload(events, rank=1))
    first, second, third = batch.events
    assert isinstance(first, BlockStored) and first.block_hashes == hashes and first.tier is Tier.DRAM
    assert (
        first.parent_block_hash is None and first.token_ids == list(range(32)) and first.block_size == BLOCK
    )
    assert isinstance(second, BlockRemoved) and second.tier is Tier.STORAGE
    assert isinstance(third, AllBlocksCleared)
    assert batch.data_parallel_rank == 1


MALFORMED_EVENTS = [
    [["Mystery"]],
    [["BlockStored", "not-a-list"]],
    [{"type": 3}],
    [["BlockRemoved", [1.5], "GPU"]],
    [["BlockRemoved", [1], "HDD"]],
]


@pytest.mark.parametrize(
    "raw",
    [b"\xc1garbage", msgpack.packb("text"), msgpack.packb([1.0])]
    + [msgpack.packb([1.0, events, None]) for events in MALFORMED_EVENTS],
)
def test_malformed_batches_are_decode_errors(raw):
    with pytest.raises(DecodeError):
        decode_batch(raw)


def engine_blocks(tokens: list[int], first_hash: int = 1000):
    """What an engine reports for a prompt: its own (opaque) hashes, parents, and the token ids."""
    count = len(tokens) // BLOCK
    hashes = [first_hash + i for i in range(count)]
    return hashes, tokens[: count * BLOCK]


def request_for(text: str, salt: str | None = None):
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if salt:
        body["cache_salt"] = salt
    import orjson

    return parse_request("chat", orjson.dumps(body))


HASHER = TokenBlockHasher(local_tokenize(ByteTokenizer(), render_chat), BLOCK)


async def request_hashes_of(text: str, salt: str | None = None) -> list[int]:
    return (await HASHER.blocks(request_for(text, salt), "m")).hashes


def prompt_tokens(text: str) -> list[int]:
    return ByteTokenizer().encode(render_chat([{"role": "user", "content": text}]))


async def test_the_engines_reports_and_the_requests_hashes_meet():
    index = PreciseIndex(lambda replica: "m", BLOCK)
    text = "the quick brown fox " * 40
    hashes, tokens = engine_blocks(prompt_tokens(text))
    index.apply(
        "r1", None, [decode_batch(payload([stored_map(hashes[:10], None, tokens[: 10 * BLOCK])])).events[0]]
    )
    index.apply(
        "r1", None, decode_batch(payload([stored_map(hashes[10:], hashes[9], tokens[10 * BLOCK :])])).events
    )
    request_hashes = await request_hashes_of(text)
    assert len(request_hashes) == len(hashes)
    found = await index.match("m", request_hashes, ["r1", "r2"])
    assert found == {"r1": PrefixMatch(hbm=len(hashes))}

    # offloaded to CPU (a placeholder: hash only), then evicted from GPU: the tier follows
    index.apply("r1", None, [BlockStored(hashes[5:], None, [], 0, Tier.DRAM)])
    index.apply("r1", None, [BlockRemoved(hashes[5:], Tier.HBM)])
    assert (await index.match("m", request_hashes, ["r1"]))["r1"] == PrefixMatch(hbm=5, dram=len(hashes) - 5)
    index.apply("r1", None, [BlockRemoved(hashes[3:], Tier.DRAM), BlockRemoved(hashes[3:5], Tier.HBM)])
    assert (await index.match("m", request_hashes, ["r1"]))["r1"] == PrefixMatch(hbm=3)
    index.apply("r1", None, [AllBlocksCleared()])
    assert await index.match("m", request_hashes, ["r1"]) == {}


async def test_cache_salt_in_the_first_blocks_extra_keys_separates_tenants():
    index = PreciseIndex(lambda replica: "m", BLOCK)
    text = "shared system prompt " * 20
    hashes, tokens = engine_blocks(prompt_tokens(text))
    index.apply("r1", None, [BlockStored(hashes, None, tokens, BLOCK, Tier.HBM, [["tenant-a"]])])
    assert await index.match("m", await request_hashes_of(text, "tenant-a"), ["r1"])
    assert await index.match("m", await request_hashes_of(text, "tenant-b"), ["r1"]) == {}
    assert await index.match("m", await request_hashes_of(text), ["r1"]) == {}


async def test_data_parallel_ranks_and_speculative_entries():
    index = PreciseIndex(lambda replica: "m", BLOCK, speculative_ttl_s=0.2)
    text = "x" * 2000
    hashes, tokens = engine_blocks(prompt_tokens(text))
    index.apply("r1", 0, [BlockStored(hashes[:4], None, tokens[: 4 * BLOCK], BLOCK, Tier.HBM)])
    index.apply("r1", 1, [BlockStored(hashes, None, tokens, BLOCK, Tier.HBM)])
    request_hashes = await request_hashes_of(text)
    assert (await index.match("m", request_hashes, ["r1"]))["r1"].hbm == len(hashes)  # the better rank
    index.record("m", "r2", request_hashes)
    assert (await index.match("m", request_hashes, ["r2"]))["r2"].hbm == len(hashes)
    await asyncio.sleep(0.25)
    assert await index.match("m", request_hashes, ["r2"]) == {}  # no event confirmed it: it expired


async def test_the_shared_tier_counts_for_every_replica():
    index = PreciseIndex(lambda replica: "m", BLOCK)
    text = "y" * 2000
    hashes, tokens = engine_blocks(prompt_tokens(text))
    index.apply("r1", None, [BlockStored(hashes, None, tokens, BLOCK, Tier.HBM)])
    index.apply("r1", None, [BlockStored(hashes[:6], None, [], 0, Tier.SHARED)])
    found = await index.match("m", await request_hashes_of(text), ["r1", "r2"])
    assert found["r1"].hbm == len(hashes) and found["r2"] == PrefixMatch(shared=6)


class Publisher:
    """A KV event publisher written from the contract: PUB with [topic, seq, payload], ROUTER replay."""

    def __init__(self, context: zmq.asyncio.Context) -> None:
        self.port, self.replay_port = free_port(), free_port()
        self.pub = context.socket(zmq.PUB)
        self.pub.bind(f"tcp://127.0.0.1:{self.port}")
        self.router = context.socket(zmq.ROUTER)
        self.router.bind(f"tcp://127.0.0.1:{self.replay_port}")
        self.sent: list[tuple[int, bytes]] = []
        self.seq = 0
        self._replayer = asyncio.create_task(self._serve_replays())

    async def publish(self, data: bytes, skip: bool = False, seq: int | None = None) -> None:
        number = self.seq if seq is None else seq
        self.sent.append((number, data))
        if not skip:
            await self.pub.send_multipart([b"", number.to_bytes(8, "big"), data])
        if seq is None:
            self.seq += 1

    async def _serve_replays(self) -> None:
        while True:
            identity, _, start = await self.router.recv_multipart()
            for number, data in self.sent:
                if number >= int.from_bytes(start, "big"):
                    await self.router.send_multipart([identity, b"", number.to_bytes(8, "big"), data])
            await self.router.send_multipart([identity, b"", b"\xff" * 8, b""])

    async def close(self) -> None:
        self._replayer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._replayer
        self.pub.close(0)
        self.router.close(0)


async def wait_for(condition, limit_s: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_live_stream_with_a_gap_garbage_a_step_back_and_a_restart():
    context = zmq.asyncio.Context()
    publisher = Publisher(context)
    index = PreciseIndex(lambda replica: "m", BLOCK)
    counts: dict[str, int] = {}
    stream = EventStream(
        "r1",
        f"tcp://127.0.0.1:{publisher.port}",
        apply=lambda replica, batch: index.apply(replica, batch.data_parallel_rank, batch.events),
        clear=index.clear_replica,
        count=lambda replica, kind: counts.__setitem__(kind, counts.get(kind, 0) + 1),
        replay_endpoint=f"tcp://127.0.0.1:{publisher.replay_port}",
        context=context,
    )
    stream.start()
    try:
        await stream.connected.wait()
        text = "z" * 3000
        hashes, tokens = engine_blocks(prompt_tokens(text))
        request_hashes = await request_hashes_of(text)
        # a slow joiner: publish until the subscription is up (a few seconds at the most)
        for _ in range(250):
            if stream.last_seq is not None:
                break
            await publisher.publish(payload([]))
            await asyncio.sleep(0.02)
        assert stream.last_seq is not None, "the subscriber never received a message"
        await publisher.publish(payload([stored_array(hashes[:8], None, tokens[: 8 * BLOCK])]))
        await publisher.publish(
            payload([stored_array(hashes[8:], hashes[7], tokens[8 * BLOCK :])]), skip=True
        )
        await publisher.publish(payload([]))  # the subscriber sees a gap and replays the skipped batch
        await wait_for(lambda: stream.last_seq == publisher.seq - 1)
        assert (await index.match("m", request_hashes, ["r1"]))["r1"].hbm == len(hashes)
        assert counts.get("gap") == 1 and counts.get("replayed", 0) >= 1  # a late join may replay too

        await publisher.pub.send_multipart([b"", b"short", b"x"])  # malformed
        await publisher.publish(b"\xc1\xc1 not msgpack")  # undecodable
        await publisher.publish(payload([]), seq=1)  # a step back
        await publisher.publish(payload([removed_array(hashes[4:])]))
        await wait_for(lambda: stream.last_seq == publisher.seq - 1)
        assert counts["malformed"] == 1 and counts["undecodable"] == 1 and counts["out_of_order"] == 1
        assert (await index.match("m", request_hashes, ["r1"]))["r1"].hbm == 4

        await publisher.publish(payload([]), seq=0)  # the engine restarted: its cache is empty
        await wait_for(lambda: counts.get("restart") == 1)
        assert await index.match("m", request_hashes, ["r1"]) == {}
    finally:
        await stream.stop()
        await publisher.close()
        context.term()
