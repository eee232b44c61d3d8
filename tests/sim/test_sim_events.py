"""KV cache events, read with a decoder written here from the wire contract (plain msgpack, no simulator
code): multipart [topic, seq, payload]; payload [ts, events, data_parallel_rank?]; events are tagged arrays
(vLLM <= 0.23) or tagged maps (>= 0.24); block hashes are unsigned 64-bit ints or raw bytes."""

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
import pytest
import zmq
import zmq.asyncio

from tests.sim.simtools import MODEL, client_for, numbered_text

ARRAY_FIELDS = {
    "BlockStored": [
        "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
        "extra_keys", "group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window",
    ],
    "BlockRemoved": ["block_hashes", "medium", "group_idx"],
    "AllBlocksCleared": [],
}  # fmt: skip
END_OF_REPLAY = b"\xff" * 8


@dataclass
class Batch:
    seq: int
    ts: float
    events: list[dict[str, Any]]
    data_parallel_rank: int | None
    raw_events: list[Any] = field(default_factory=list)


def decode_event(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        event = dict(raw)
        event["type"] = event.pop("type")
    else:
        tag, *values = raw
        event = {"type": tag, **dict(zip(ARRAY_FIELDS[tag], values, strict=False))}
    event["medium"] = (event.get("medium") or "GPU").upper()
    return event


def decode_batch(seq: bytes, payload: bytes) -> Batch:
    assert len(seq) == 8
    batch = msgpack.unpackb(payload, raw=False)
    assert isinstance(batch, list) and len(batch) in (2, 3)
    ts, raw_events = batch[0], batch[1]
    rank = batch[2] if len(batch) == 3 else None
    return Batch(int.from_bytes(seq, "big"), ts, [decode_event(e) for e in raw_events], rank, raw_events)


class Subscriber:
    def __init__(self, endpoint: str, topic: bytes = b"") -> None:
        self.socket = zmq.asyncio.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)
        self.topic = topic

    async def batches(self, quiet: float = 0.1) -> list[Batch]:
        """Everything published until nothing more arrives for `quiet` seconds (the simulator publishes a
        step's batch before it answers, so once a response is in only delivery is left)."""
        received = []
        while await self.socket.poll(int(quiet * 1000)):
            topic, seq, payload = await self.socket.recv_multipart()
            assert topic == self.topic
            received.append(decode_batch(seq, payload))
        return received

    def close(self) -> None:
        self.socket.close()


async def subscribe(endpoint: str, topic: bytes = b"") -> Subscriber:
    subscriber = Subscriber(endpoint, topic)
    await asyncio.sleep(0.15)  # a PUB drops what it sends before the subscription has reached it
    return subscriber


def events_of(batches: list[Batch], kind: str, medium: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for b in batches
        for e in b.events
        if e["type"] == kind and (medium is None or e["medium"] == medium)
    ]


async def chat(url: str, content: str, max_tokens: int = 2, **extra: Any) -> Any:
    return await client_for(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, extra_body=extra
    )


@pytest.mark.parametrize("encoding", ["array", "map"])
async def test_block_stored_events_describe_the_cached_prompt(start_fleet, encoding):
    fleet = await start_fleet(time_scale=1000, kv_events_port=0, kv_events_encoding=encoding)
    subscriber = await subscribe(fleet[0].kv_events_endpoint)
    prompt = numbered_text(640)
    response = await chat(fleet.urls[0], prompt, max_tokens=20)
    batches = await subscriber.batches()
    subscriber.close()

    assert [b.seq for b in batches] == list(range(len(batches)))
    assert all(b.data_parallel_rank is None for b in batches)
    if encoding == "array":
        assert all(isinstance(raw, list) and isinstance(raw[0], str) for b in batches for raw in b.raw_events)
    else:
        assert all(isinstance(raw, dict) for b in batches for raw in b.raw_events)
        assert all("kv_cache_spec_sliding_window" not in raw for b in batches for raw in b.raw_events)
    stored = events_of(batches, "BlockStored", "GPU")
    hashes = [h for e in stored for h in e["block_hashes"]]
    assert all(isinstance(h, int) and 0 <= h < 2**64 for h in hashes)
    assert len(hashes) == len(set(hashes))
    first = stored[0]
    assert first["parent_block_hash"] is None and first["block_size"] == 16
    assert len(first["token_ids"]) == 16 * len(first["block_hashes"])
    for previous, event in itertools.pairwise(stored):
        assert event["parent_block_hash"] == previous["block_hashes"][-1]
    # Prompt blocks, then the blocks that filled up with generated tokens.
    total_tokens = response.usage.prompt_tokens + response.usage.completion_tokens
    assert len(hashes) == (total_tokens - 1) // 16


async def test_tier_moves_are_published_with_their_medium(start_fleet):
    fleet = await start_fleet(
        time_scale=1000, kv_events_port=0, hbm_blocks=40, dram_blocks=30, storage_blocks=20, max_model_len=640
    )
    subscriber = await subscribe(fleet[0].kv_events_endpoint)
    for n in range(4):
        await chat(fleet.urls[0], numbered_text(600, start=1000 * n))
    batches = await subscriber.batches()
    subscriber.close()

    for medium in ("CPU", "STORAGE"):
        assert events_of(batches, "BlockStored", medium), medium
    for medium in ("GPU", "CPU", "STORAGE"):
        assert events_of(batches, "BlockRemoved", medium), medium
    # Every block removed from a tier was stored in it before.
    seen: dict[str, set[int]] = {"GPU": set(), "CPU": set(), "STORAGE": set()}
    for batch in batches:
        for event in batch.events:
            for block_hash in event.get("block_hashes", []):
                if event["type"] == "BlockStored":
                    seen[event["medium"]].add(block_hash)
                else:
                    assert block_hash in seen[event["medium"]]
                    seen[event["medium"]].discard(block_hash)
    assert len(seen["GPU"]) <= 40 and len(seen["CPU"]) <= 30 and len(seen["STORAGE"]) <= 20


async def test_reset_publishes_all_blocks_cleared(start_fleet):
    fleet = await start_fleet(time_scale=1000, kv_events_port=0, kv_events_topic="kv")
    subscriber = await subscribe(fleet[0].kv_events_endpoint, b"kv")
    await chat(fleet.urls[0], numbered_text(200))
    async with httpx.AsyncClient() as http:
        assert (await http.post(fleet.urls[0] + "/reset_prefix_cache")).status_code == 200
    second = await chat(fleet.urls[0], numbered_text(200))
    batches = await subscriber.batches()
    subscriber.close()

    kinds = [e["type"] for b in batches for e in b.events]
    assert kinds.count("AllBlocksCleared") == 1
    cleared_at = kinds.index("AllBlocksCleared")
    assert "BlockStored" in kinds[:cleared_at] and "BlockStored" in kinds[cleared_at:]
    assert second.usage.prompt_tokens_details.cached_tokens == 0


async def test_salt_rank_and_bytes_hashes(start_fleet):
    fleet = await start_fleet(
        time_scale=1000, kv_events_port=0, kv_events_bytes_hashes=True, data_parallel_rank=3, hash_seed=7
    )
    subscriber = await subscribe(fleet[0].kv_events_endpoint)
    await chat(fleet.urls[0], numbered_text(64), cache_salt="tenant-a")
    batches = await subscriber.batches()
    subscriber.close()

    assert all(b.data_parallel_rank == 3 for b in batches)
    stored = events_of(batches, "BlockStored")
    assert all(isinstance(h, bytes) and len(h) == 8 for e in stored for h in e["block_hashes"])
    assert stored[0]["extra_keys"][0] == ["tenant-a"]
    assert all(keys is None for keys in stored[0]["extra_keys"][1:])


@pytest.mark.parametrize("with_topic", [True, False])
async def test_replay_after_a_gap_returns_the_missed_batches_then_the_end_marker(start_fleet, with_topic):
    fleet = await start_fleet(
        time_scale=1000, kv_events_port=0, kv_events_replay_port=0, kv_events_replay_topic=with_topic
    )
    for n in range(3):  # published before anyone listens: a subscriber that joins now has a gap
        await chat(fleet.urls[0], numbered_text(100, start=1000 * n))
    subscriber = await subscribe(fleet[0].kv_events_endpoint)
    await chat(fleet.urls[0], numbered_text(100, start=9000))
    live = await subscriber.batches()
    subscriber.close()
    assert live and live[0].seq > 0

    dealer = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(fleet[0].kv_events_replay_endpoint)
    await dealer.send_multipart([b"", (0).to_bytes(8, "big")])
    replayed = []
    while True:
        assert await dealer.poll(2000), "no replay answer"
        frames = await dealer.recv_multipart()
        assert frames[0] == b""
        frames = frames[1:]
        if with_topic:
            topic, seq, payload = frames
            assert topic == b"" and len(frames) == 3
        else:
            seq, payload = frames
        if seq == END_OF_REPLAY:
            assert payload == b""
            break
        replayed.append(decode_batch(seq, payload))
    dealer.close()

    assert [b.seq for b in replayed] == list(range(live[-1].seq + 1))
    assert [b.events for b in replayed[-len(live) :]] == [b.events for b in live]
