"""KV cache events on the wire, as vLLM's ZMQ publisher sends them.

Each scheduler step that changed the cache publishes one multipart message `[topic, seq, payload]`: `seq` is
an 8-byte big-endian counter from 0, `payload` a msgpack array `[ts, events, data_parallel_rank]` (the rank
left out when unset, as msgspec omits a trailing default). Events are tagged positional arrays (vLLM up to
0.23, encoding "array") or tagged maps with default-valued fields left out (0.24 on, encoding "map").

A ROUTER socket answers replay requests: a DEALER sends `["", start_seq]` and receives, for each buffered
batch from `start_seq` on, `["", topic, seq, payload]` (`["", seq, payload]` without the topic frame, as
vLLM up to 0.25), then an end marker whose seq is -1 (eight 0xff bytes) and whose payload is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from loadtest.sim.kv_cache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

logger = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
KV_CACHE_SPEC_KIND = "full_attention"
GROUP_INDEX = 0


def _hash(value: int, as_bytes: bool) -> int | bytes:
    return value.to_bytes(8, "big") if as_bytes else value


def _hashes(values: list[int], as_bytes: bool) -> list[int] | list[bytes]:
    return [value.to_bytes(8, "big") for value in values] if as_bytes else values


def encode_event(event: KVEvent, encoding: str, bytes_hashes: bool = False) -> list[Any] | dict[str, Any]:
    """One event as vLLM's msgspec structs encode it (`omit_defaults=True`, tagged by class name)."""
    if isinstance(event, BlockStored):
        parent = None if event.parent_block_hash is None else _hash(event.parent_block_hash, bytes_hashes)
        fields: list[tuple[str, Any, bool]] = [
            ("block_hashes", _hashes(event.block_hashes, bytes_hashes), True),
            ("parent_block_hash", parent, True),
            ("token_ids", event.token_ids, True),
            ("block_size", event.block_size, True),
            ("lora_id", None, True),
            ("medium", event.medium, True),
            ("lora_name", None, True),
            ("extra_keys", [list(keys) if keys else None for keys in event.extra_keys], False),
            ("group_idx", GROUP_INDEX, False),
            ("kv_cache_spec_kind", KV_CACHE_SPEC_KIND, False),
            ("kv_cache_spec_sliding_window", None, False),
        ]
        tag = "BlockStored"
    elif isinstance(event, BlockRemoved):
        fields = [
            ("block_hashes", _hashes(event.block_hashes, bytes_hashes), True),
            ("medium", event.medium, True),
            ("group_idx", GROUP_INDEX, False),
        ]
        tag = "BlockRemoved"
    elif isinstance(event, AllBlocksCleared):
        fields = []
        tag = "AllBlocksCleared"
    else:
        raise TypeError(f"not a KV event: {event!r}")
    if encoding == "map":
        encoded: dict[str, Any] = {"type": tag}
        for name, value, required in fields:
            if required or value is not None:
                encoded[name] = value
        return encoded
    # Positional: fields at their default (None) can only be left out at the end.
    values = [value for _, value, _ in fields]
    required = sum(1 for _, _, is_required in fields if is_required)
    while len(values) > required and values[-1] is None:
        values.pop()
    return [tag, *values]


def encode_batch(
    ts: float,
    events: list[KVEvent],
    data_parallel_rank: int | None,
    encoding: str,
    bytes_hashes: bool = False,
) -> bytes:
    batch: list[Any] = [ts, [encode_event(event, encoding, bytes_hashes) for event in events]]
    if data_parallel_rank is not None:
        batch.append(data_parallel_rank)
    return msgpack.packb(batch)


class KVEventPublisher:
    """ZMQ PUB socket (and optional ROUTER replay socket) of one replica."""

    def __init__(
        self,
        encoding: str = "map",
        topic: str = "",
        bytes_hashes: bool = False,
        data_parallel_rank: int | None = None,
        buffer_steps: int = 10_000,
        replay_topic: bool = True,
    ) -> None:
        self.encoding = encoding
        self.topic = topic.encode()
        self.bytes_hashes = bytes_hashes
        self.data_parallel_rank = data_parallel_rank
        self.replay_topic = replay_topic
        self.next_seq = 0
        self.endpoint: str | None = None
        self.replay_endpoint: str | None = None
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._pub: zmq.Socket | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None

    def start(self, host: str, port: int, replay_port: int | None = None) -> None:
        """Bind the PUB socket (and the replay socket); port 0 picks a free port."""
        self._pub = zmq.Context.instance().socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = _bind(self._pub, host, port)
        if replay_port is not None:
            self._router = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self.replay_endpoint = _bind(self._router, host, replay_port)
            self._replay_task = asyncio.create_task(self._serve_replay())

    def publish(self, ts: float, events: list[KVEvent]) -> None:
        if not events or self._pub is None:
            return
        payload = encode_batch(ts, events, self.data_parallel_rank, self.encoding, self.bytes_hashes)
        seq = self.next_seq
        self.next_seq += 1
        self._buffer.append((seq, payload))
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)

    async def _serve_replay(self) -> None:
        router = self._router
        assert router is not None
        while True:
            frames = await router.recv_multipart()
            if len(frames) != 3:
                logger.warning("ignoring a replay request of %d frames", len(frames))
                continue
            identity, _, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            topic = (self.topic,) if self.replay_topic else ()
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await router.send_multipart((identity, b"", *topic, seq.to_bytes(8, "big"), payload))
            end_topic = (b"",) if self.replay_topic else ()
            await router.send_multipart((identity, b"", *end_topic, END_SEQ, b""))

    async def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None
        for socket in (self._pub, self._router):
            if socket is not None:
                socket.close(linger=0)
        self._pub = None
        self._router = None


def _bind(socket: zmq.Socket, host: str, port: int) -> str:
    if port == 0:
        socket.bind(f"tcp://{host}:*")
    else:
        socket.bind(f"tcp://{host}:{port}")
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)
