"""One generation request as the engine sees it: its tokens, cache blocks, progress and timeline."""

from __future__ import annotations

import asyncio
from array import array
from enum import IntEnum
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    from loadtest.sim.kv_cache import Block

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"
FINISH_ERROR = "error"
FINISH_REASONS = (FINISH_STOP, FINISH_LENGTH, FINISH_ABORT, FINISH_ERROR)
"""vLLM's FinishReason strings that the simulator can produce (it has no EOS, so `stop` never happens)."""


class RequestState(IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


def hash_block(parent: int, token_bytes: bytes, extra: bytes = b"") -> int:
    """One link of the block hash chain: xxh3-64 of the parent hash, the block's token ids and extra keys."""
    return xxhash.xxh3_64_intdigest(parent.to_bytes(8, "little") + token_bytes + extra)


class SimRequest:
    """A request's state. Times are simulated seconds; token ids are unsigned 32-bit integers."""

    __slots__ = (
        "arrival_time",
        "block_hashes",
        "blocks",
        "cache_salt",
        "error",
        "external_hit_tokens",
        "fail_after_tokens",
        "finish_reason",
        "finish_time",
        "first_scheduled_time",
        "first_token_time",
        "last_token_time",
        "local_hit_tokens",
        "max_tokens",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_preemptions",
        "num_prompt_tokens",
        "output_seed",
        "pending",
        "prefill_base_tokens",
        "request_id",
        "root_hash",
        "scheduled",
        "state",
        "stream_interval",
        "token_ids",
        "waiter",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        max_tokens: int,
        block_size: int,
        root_hash: int,
        arrival_time: float,
        cache_salt: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.token_ids = array("I", prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.max_tokens = max_tokens
        self.cache_salt = cache_salt
        self.root_hash = root_hash
        self.arrival_time = arrival_time
        self.state = RequestState.WAITING
        self.blocks: list[Block] = []
        self.block_hashes: list[int] = []
        self.num_cached_blocks = 0
        self.num_computed_tokens = 0
        self.prefill_base_tokens = 0
        self.num_cached_tokens: int | None = None
        self.local_hit_tokens = 0
        self.external_hit_tokens = 0
        self.num_preemptions = 0
        self.scheduled = False
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.finish_time: float | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.fail_after_tokens: int | None = None
        self.pending: list[int] = []
        self.stream_interval = 1
        """Output tokens the stream waits for before it wakes (the first token and the end wake it anyway)."""
        self.waiter: asyncio.Future[None] | None = None
        self.extend_block_hashes(block_size)
        last = self.block_hashes[-1] if self.block_hashes else root_hash
        self.output_seed = hash_block(last, self.token_ids[-block_size:].tobytes())

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :].tolist()

    @property
    def finished(self) -> bool:
        return self.state is RequestState.FINISHED

    def extend_block_hashes(self, block_size: int) -> None:
        """Hash the full blocks of known tokens not hashed yet (the chain runs on from the last hash)."""
        full_blocks = len(self.token_ids) // block_size
        hashes = self.block_hashes
        parent = hashes[-1] if hashes else self.root_hash
        salt = self.cache_salt.encode() if self.cache_salt else b""
        for index in range(len(hashes), full_blocks):
            start = index * block_size
            parent = hash_block(
                parent, self.token_ids[start : start + block_size].tobytes(), salt if index == 0 else b""
            )
            hashes.append(parent)

    def append_output(self, token_id: int, block_size: int) -> None:
        self.token_ids.append(token_id)
        if len(self.token_ids) % block_size == 0:
            self.extend_block_hashes(block_size)
        self.pending.append(token_id)
        if len(self.pending) >= self.stream_interval:
            self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_pending(self) -> list[int]:
        pending, self.pending = self.pending, []
        return pending

    async def wait_for_output(self) -> None:
        """Until new tokens arrive or the request finishes."""
        if self.pending or self.finished:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
