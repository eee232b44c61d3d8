"""The Redis layout of the shared prefix index, and the two server-side scripts that use it.

Keys (one Redis Cluster hash slot per model, through the `{model}` hash tag):

    <prefix>:{<model>}:r:<replica>   ZSET  member: a chain hash (8 bytes, little endian)
                                           score: recency stamp (larger is more recent)
    <prefix>:{<model>}:clock         STRING  the stamp counter (INCRBY)

Only every `stride`-th block of a prompt's chain is stored: each hash stands for the whole prefix up
to it, so holding the 16th, 32nd, ... hash says the replica holds that much, at a granularity of
`stride` blocks (16 x 64 bytes, about 256 tokens, by default) for a sixteenth of the writes.

A replica's ZSET is its LRU model: recording a prompt stamps its hashes, the first most recent (as in
the embedded index), then trims the ZSET to the replica's total capacity, least recent first. A block's
tier is where its recency rank falls: the `hbm` most recent are in HBM, the next `dram` in DRAM, the
rest in storage, which is what LRU with demotion gives. Each record refreshes the key's TTL, so a
replica nobody routes to any more is forgotten.

Lookup is one script call for all candidate replicas, whatever the prompt length: per replica, binary
searches over the chain (ZREVRANK) find where it stops holding it and where its HBM and DRAM parts end.
A replica without the chain's first hash costs one command; a ZSET no larger than the replica's HBM (a
replica without offload tiers is always trimmed to that) is all HBM, and the tier searches are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from redis.exceptions import NoScriptError

from gateway.index.base import PrefixMatch
from gateway.index.redis_connect import RedisCommands

LOOKUP_SCRIPT = """
local chain = ARGV[1]
local n = #chain / 8
local result = {}
for r = 1, #KEYS do
  local key = KEYS[r]
  local hbm = tonumber(ARGV[2 * r])
  local dram = tonumber(ARGV[2 * r + 1])
  local ranks = {}
  local function rank(i)
    local v = ranks[i]
    if v == nil then
      v = redis.call('ZREVRANK', key, string.sub(chain, 8 * i - 7, 8 * i)) or -1
      ranks[i] = v
    end
    return v
  end
  local function first_failing(lo, hi, limit)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local v = rank(mid)
      if v >= 0 and v < limit then lo = mid + 1 else hi = mid end
    end
    return lo
  end
  local held = 0
  if rank(1) >= 0 then held = first_failing(2, n + 1, math.huge) - 1 end
  local in_hbm, in_dram = held, 0
  if held > 0 then
    local size = redis.call('ZCARD', key)
    if size > hbm then
      in_hbm = first_failing(1, held + 1, hbm) - 1
      if size > hbm + dram then
        in_dram = first_failing(in_hbm + 1, held + 1, hbm + dram) - 1 - in_hbm
      else
        in_dram = held - in_hbm
      end
    end
  end
  result[r] = {held, in_hbm, in_dram}
end
return result
"""

RECORD_SCRIPT = """
local chain = ARGV[1]
local n = #chain / 8
local newest = redis.call('INCRBY', KEYS[2], n)
local args = {}
local k = 0
for i = 1, n do
  args[k + 1] = newest - i + 1
  args[k + 2] = string.sub(chain, 8 * i - 7, 8 * i)
  k = k + 2
  if k >= 2000 then
    redis.call('ZADD', KEYS[1], unpack(args, 1, k))
    k = 0
  end
end
if k > 0 then
  redis.call('ZADD', KEYS[1], unpack(args, 1, k))
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"""


def pack(hashes: Sequence[int], stride: int) -> bytes:
    """Every `stride`-th hash of a chain (the last of each full group of `stride`), 8 bytes each."""
    return np.asarray(hashes[stride - 1 :: stride], dtype="<u8").tobytes()


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, keys: Sequence[str], args: Sequence[bytes | int]) -> tuple[Any, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


_LOOKUP = _Script(LOOKUP_SCRIPT)
_RECORD = _Script(RECORD_SCRIPT)


class RedisPrefixStore:
    def __init__(self, redis: RedisCommands, key_prefix: str = "kvg", stride: int = 16, ttl_s: int = 3600):
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("the Redis key prefix must not contain braces (they mark the hash tag)")
        self.redis = redis
        self.key_prefix = key_prefix
        self.stride = stride
        self.ttl_s = ttl_s

    def replica_key(self, model: str, replica: str) -> str:
        return f"{self.key_prefix}:{{{model}}}:r:{replica}"

    def clock_key(self, model: str) -> str:
        return f"{self.key_prefix}:{{{model}}}:clock"

    def units(self, blocks: int) -> int:
        return blocks // self.stride

    async def lookup(
        self, model: str, packed: bytes, replicas: Sequence[str], capacities: Sequence[tuple[int, int]]
    ) -> dict[str, PrefixMatch]:
        """Each replica's held run of the packed chain, in blocks (multiples of `stride`), per tier."""
        if not packed or not replicas:
            return {}
        args: list[bytes | int] = [packed]
        for hbm, dram in capacities:
            args += [self.units(hbm), self.units(dram)]
        call = _LOOKUP.call([self.replica_key(model, r) for r in replicas], args)
        try:
            rows = await self.redis.execute(*call)
        except NoScriptError:  # Redis restarted or flushed its scripts: load it, and call again
            await self.redis.execute("SCRIPT", "LOAD", _LOOKUP.source)
            rows = await self.redis.execute(*call)
        found: dict[str, PrefixMatch] = {}
        for replica, (held, in_hbm, in_dram) in zip(replicas, rows, strict=True):
            if held > 0:
                stride = self.stride
                found[replica] = PrefixMatch(
                    hbm=in_hbm * stride, dram=in_dram * stride, storage=(held - in_hbm - in_dram) * stride
                )
        return found

    async def record_many(self, records: Sequence[tuple[str, str, bytes, int]]) -> None:
        """Apply (model, replica, packed chain, total capacity in blocks) records in one pipeline."""
        calls = [
            _RECORD.call(
                (self.replica_key(model, replica), self.clock_key(model)),
                (packed, max(1, self.units(capacity)), self.ttl_s),
            )
            for model, replica, packed, capacity in records
        ]
        try:
            await self.redis.execute_many(calls)
        except NoScriptError:
            await self.redis.execute("SCRIPT", "LOAD", _RECORD.source)
            await self.redis.execute_many(calls)

    async def forget(self, models: Sequence[str], replica: str) -> None:
        for model in models:
            await self.redis.execute("DEL", self.replica_key(model, replica))

    async def entries(self, model: str, replica: str) -> int:
        return await self.redis.execute("ZCARD", self.replica_key(model, replica))

    async def close(self) -> None:
        await self.redis.aclose()
