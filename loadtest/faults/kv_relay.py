"""A KV-events relay that forwards an engine's ZMQ stream and slips bad messages into it.

The gateway subscribes to the relay instead of the engine. The relay numbers what it publishes itself,
so an injected message takes a sequence number of its own and never hides a real batch:

- `malformed`: two frames, or a sequence number that is not 8 bytes;
- `undecodable`: random bytes as the payload;
- `truncated`: the last real payload cut in half (undecodable to the gateway);
- `out_of_order`: the last real batch again under an older sequence number (not 0, which means that
  the engine restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Sequence

import zmq
import zmq.asyncio

KINDS = ("malformed", "undecodable", "truncated", "out_of_order")


class KvEventRelay:
    def __init__(self, context: zmq.asyncio.Context, upstream: str, seed: int = 0) -> None:
        self.upstream = upstream
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.seq = 0
        self.forwarded = 0
        self.injected: Counter[str] = Counter()
        self._last: tuple[bytes, bytes] | None = None
        self._random = random.Random(seed)
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self.sub.connect(self.upstream)
        self._task = asyncio.create_task(self._forward())

    async def _send(self, topic: bytes, payload: bytes) -> None:
        await self.pub.send_multipart([topic, self.seq.to_bytes(8, "big"), payload])
        self.seq += 1

    async def _forward(self) -> None:
        while True:
            parts = await self.sub.recv_multipart()
            if len(parts) != 3:
                continue
            async with self._lock:
                self._last = (parts[0], parts[2])
                await self._send(parts[0], parts[2])
                self.forwarded += 1

    async def inject(self, kind: str) -> bool:
        """Publish one bad message of `kind`; False when there is no real batch to derive it from yet."""
        async with self._lock:
            if kind == "malformed":
                if self._random.random() < 0.5:
                    await self.pub.send_multipart([b"", b"\x00\x01"])
                else:
                    await self.pub.send_multipart([b"", b"short", b"\x90"])
            elif kind == "undecodable":
                await self._send(b"", self._random.randbytes(self._random.randint(1, 64)))
            elif self._last is None or self.seq < 3:
                return False
            elif kind == "truncated":
                topic, payload = self._last
                await self._send(topic, payload[: max(1, len(payload) // 2)])
            elif kind == "out_of_order":
                topic, payload = self._last
                older = self._random.randint(1, self.seq - 2)
                await self.pub.send_multipart([topic, older.to_bytes(8, "big"), payload])
            else:
                raise ValueError(f"unknown kind {kind!r}")
            self.injected[kind] += 1
            return True

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sub.close(0)
        self.pub.close(0)


async def inject_until_done(work: asyncio.Future, relays: Sequence[KvEventRelay], interval_s: float) -> None:
    """Slip bad messages into the relays' streams, each kind and relay in turn, until `work` is done."""
    turn = 0
    while not work.done():
        await relays[turn % len(relays)].inject(KINDS[turn % len(KINDS)])
        turn += 1
        await asyncio.sleep(interval_s)
