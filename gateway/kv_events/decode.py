"""Decoding vLLM's KV cache event batches, both wire encodings.

A batch is a msgpack array `[ts, events, data_parallel_rank]`. Up to vLLM 0.23 an event is a tagged
array with every field in order (`["BlockStored", block_hashes, parent_block_hash, token_ids,
block_size, lora_id, medium, lora_name, extra_keys, ...]`, `["BlockRemoved", block_hashes, medium,
...]`, `["AllBlocksCleared"]`); from 0.24 it is a map with a `type` key, fields at their default left
out. Block hashes are unsigned 64-bit integers or raw bytes. `medium` is GPU, CPU or STORAGE in any
case, missing meaning GPU. Anything else is a `DecodeError`, to be counted and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from gateway.profiles import Tier

EngineHash = int | bytes


class DecodeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: list[int]
    block_size: int
    tier: Tier
    extra_keys: list[Any] | None = None

    @property
    def is_placeholder(self) -> bool:
        """Offloading connectors without self-describing events send hashes only."""
        return not self.token_ids or self.block_size <= 0


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: list[EngineHash]
    tier: Tier


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: list[Event] = field(default_factory=list)
    data_parallel_rank: int | None = None


_STORED_FIELDS = (
    *("block_hashes", "parent_block_hash", "token_ids", "block_size"),
    *("lora_id", "medium", "lora_name", "extra_keys"),
)
_REMOVED_FIELDS = ("block_hashes", "medium")


def _hash(value: Any) -> EngineHash:
    if isinstance(value, bool) or not isinstance(value, int | bytes):
        raise DecodeError(f"a block hash must be an integer or bytes, not {type(value).__name__}")
    return value


def _hashes(value: Any) -> list[EngineHash]:
    if not isinstance(value, list):
        raise DecodeError("block_hashes must be an array")
    return [_hash(item) for item in value]


def _tier(medium: Any) -> Tier:
    if medium is not None and not isinstance(medium, str):
        raise DecodeError("medium must be a string")
    try:
        return Tier.parse(medium)
    except KeyError:
        raise DecodeError(f"unknown medium {medium!r}") from None


def _fields(raw: Any, names: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        return raw[0], dict(zip(names, raw[1:], strict=False))
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        return raw["type"], raw
    raise DecodeError("an event must be a tagged array or a map with a 'type'")


def decode_event(raw: Any) -> Event:
    tag = (
        raw[0]
        if isinstance(raw, list | tuple) and raw
        else raw.get("type")
        if isinstance(raw, dict)
        else None
    )
    if tag == "BlockStored":
        _, data = _fields(raw, _STORED_FIELDS)
        tokens = data.get("token_ids") or []
        block_size = data.get("block_size") or 0
        if not isinstance(tokens, list) or not isinstance(block_size, int):
            raise DecodeError("token_ids must be an array and block_size an integer")
        parent = data.get("parent_block_hash")
        extra = data.get("extra_keys")
        return BlockStored(
            block_hashes=_hashes(data.get("block_hashes")),
            parent_block_hash=None if parent is None else _hash(parent),
            token_ids=tokens,
            block_size=block_size,
            tier=_tier(data.get("medium")),
            extra_keys=extra if isinstance(extra, list) else None,
        )
    if tag == "BlockRemoved":
        _, data = _fields(raw, _REMOVED_FIELDS)
        return BlockRemoved(_hashes(data.get("block_hashes")), _tier(data.get("medium")))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise DecodeError(f"unknown event type {tag!r}")


def decode_batch(payload: bytes) -> EventBatch:
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"not a msgpack payload: {type(exc).__name__}") from None
    if not isinstance(raw, list | tuple) or len(raw) < 2:
        raise DecodeError("a batch must be an array [ts, events, data_parallel_rank]")
    ts, events = raw[0], raw[1]
    rank = raw[2] if len(raw) > 2 else None
    if not isinstance(ts, int | float) or not isinstance(events, list):
        raise DecodeError("a batch's ts must be a number and its events an array")
    if rank is not None and not isinstance(rank, int):
        raise DecodeError("data_parallel_rank must be an integer or nil")
    return EventBatch(float(ts), [decode_event(event) for event in events], rank)
