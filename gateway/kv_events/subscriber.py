"""Following one engine's KV event stream: subscribe, check sequence numbers, replay gaps, reconnect.

Messages are `[topic, seq, payload]`, seq an 8-byte big-endian counter from 0 per publisher. A jump
forward is a gap, and a first message after 0 a late join: the missing batches are asked of the replay
endpoint (a DEALER sends `["", start_seq]` and reads `[seq, payload]` or `[topic, seq, payload]` until
a seq of all 0xff bytes) and applied first. A live seq of 0 after others means the publisher
restarted, with an empty cache: the engine's entries are dropped and the stream followed from there.
Any other step back, and anything malformed, is counted and skipped. ZeroMQ reconnects by itself
when a publisher comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio

from gateway.kv_events.decode import DecodeError, EventBatch, decode_batch

log = logging.getLogger("kvgate.kv_events")

END_OF_REPLAY = b"\xff" * 8
REPLAY_TIMEOUT_S = 2.0
RECEIVE_HWM = 100_000


class EventStream:
    def __init__(
        self,
        replica: str,
        endpoint: str,
        apply: Callable[[str, EventBatch], None],
        clear: Callable[[str], None],
        count: Callable[[str, str], None],
        replay_endpoint: str | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.replica = replica
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self._apply = apply
        self._clear = clear
        self._count = count
        self._context = context or zmq.asyncio.Context.instance()
        self.last_seq: int | None = None
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"kvgate-events-{self.replica}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.endpoint)
        self.connected.set()
        try:
            while True:
                parts = await socket.recv_multipart()
                try:
                    await self.handle(parts)
                except Exception:  # one bad message must never end the stream
                    self._count(self.replica, "error")
                    log.exception("KV event from %s could not be applied", self.replica)
        finally:
            socket.close()

    async def handle(self, parts: list[bytes]) -> None:
        if len(parts) != 3 or len(parts[1]) != 8:
            self._count(self.replica, "malformed")
            return
        seq = int.from_bytes(parts[1], "big")
        if self.last_seq is not None and seq <= self.last_seq:
            if seq == 0:
                log.warning("KV event publisher of %s restarted; dropping its entries", self.replica)
                self._count(self.replica, "restart")
                self._clear(self.replica)
                self.last_seq = None
            else:
                self._count(self.replica, "out_of_order")
                return
        if self.last_seq is None and seq > 0 and self.replay_endpoint:
            await self.replay(0, seq)  # joined late: what the publisher still buffers comes first
        elif self.last_seq is not None and seq > self.last_seq + 1:
            self._count(self.replica, "gap")
            await self.replay(self.last_seq + 1, seq)
        self._decode_and_apply(seq, parts[2])

    def _decode_and_apply(self, seq: int, payload: bytes) -> None:
        try:
            batch = decode_batch(payload)
        except DecodeError:
            self._count(self.replica, "undecodable")
            self.last_seq = seq
            return
        self._apply(self.replica, batch)
        self.last_seq = seq

    async def replay(self, start: int, live: int) -> None:
        """Ask the replay endpoint for batches from `start`; apply those the live stream skipped."""
        if not self.replay_endpoint:
            self._count(self.replica, "gap_unrecovered")
            return
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.replay_endpoint)
        replayed = 0
        try:
            await socket.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                frames = await asyncio.wait_for(socket.recv_multipart(), REPLAY_TIMEOUT_S)
                while frames and frames[0] == b"":
                    frames = frames[1:]
                if not frames or len(frames) not in (2, 3) or frames[-2] == END_OF_REPLAY:
                    break
                seq = int.from_bytes(frames[-2], "big")
                if seq >= live:
                    break
                if self.last_seq is None or seq > self.last_seq:
                    self._decode_and_apply(seq, frames[-1])
                    replayed += 1
        except TimeoutError:
            self._count(self.replica, "gap_unrecovered")
            log.warning("replay from %s timed out after %d batches", self.replay_endpoint, replayed)
        finally:
            socket.close()
        if replayed:
            self._count(self.replica, "replayed")
