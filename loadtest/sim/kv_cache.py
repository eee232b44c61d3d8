"""A tiered, paged KV cache in the manner of vLLM V1's block pool.

HBM holds `capacity` blocks of `block_size` tokens. A block in use by a running request is pinned (reference
count above zero). A freed block goes to the tail of the free queue and keeps its hash, so it can still be
hit until it is reused; new blocks come from the head of the queue. Requests free their blocks tail first,
so a prompt's prefix outlives its tail, as in vLLM.

Lower tiers (DRAM, then storage) are LRU victim caches: an HBM block that is reused demotes its contents to
DRAM, a DRAM entry pushed out demotes to storage, and one pushed out of storage is gone. A hit in a lower
tier is copied into new HBM blocks; the lower copy stays where it is (and moves to the tier's MRU end), the
way offloading connectors keep their copy, so a later HBM eviction of the same block costs no new write.

A prefix hit is the longest run of a request's leading full blocks that some tier holds; each block is
served from the fastest tier that holds it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from gateway.profiles import Tier
from loadtest.sim.request import SimRequest

MEDIUM = {Tier.HBM: "GPU", Tier.DRAM: "CPU", Tier.STORAGE: "STORAGE"}


@dataclass(slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    medium: str
    extra_keys: list[tuple[str, ...] | None]


@dataclass(slots=True)
class BlockRemoved:
    block_hashes: list[int]
    medium: str


@dataclass(slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class Block:
    """One HBM block. `block_hash` is None while the block is partial, or a private duplicate of a block
    another request cached first."""

    __slots__ = ("block_hash", "parent_hash", "ref_cnt", "salt", "token_ids")

    def __init__(self) -> None:
        self.block_hash: int | None = None
        self.parent_hash: int | None = None
        self.token_ids: list[int] = []
        self.salt: str | None = None
        self.ref_cnt = 0


class StoredCopy:
    """A block's contents held in DRAM or storage."""

    __slots__ = ("parent_hash", "salt", "token_ids")

    def __init__(self, token_ids: list[int], parent_hash: int | None, salt: str | None) -> None:
        self.token_ids = token_ids
        self.parent_hash = parent_hash
        self.salt = salt


class LowerTier:
    def __init__(self, tier: Tier, capacity: int) -> None:
        self.tier = tier
        self.medium = MEDIUM[tier]
        self.capacity = capacity
        self.entries: OrderedDict[int, StoredCopy] = OrderedDict()


@dataclass(slots=True)
class PrefixHit:
    """Where each leading block of a request was found: an HBM block, or a copy in a lower tier."""

    sources: list[Block | tuple[LowerTier, StoredCopy]]
    hbm_blocks: int
    tier_blocks: dict[Tier, int]

    @property
    def num_blocks(self) -> int:
        return len(self.sources)


def _extra_keys(salt: str | None, first_index: int, count: int) -> list[tuple[str, ...] | None]:
    return [(salt,) if salt and first_index + i == 0 else None for i in range(count)]


class TieredKVCache:
    def __init__(self, capacity: int, block_size: int, dram_blocks: int = 0, storage_blocks: int = 0) -> None:
        if capacity < 1:
            raise ValueError("the KV cache needs at least one block")
        self.capacity = capacity
        self.block_size = block_size
        self.lower = [
            LowerTier(tier, blocks)
            for tier, blocks in ((Tier.DRAM, dram_blocks), (Tier.STORAGE, storage_blocks))
            if blocks > 0
        ]
        self._never_used = capacity
        self._free: OrderedDict[Block, None] = OrderedDict()
        self._cached: dict[int, Block] = {}
        self.events: list[KVEvent] = []

    # --- state -----------------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self._never_used + len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of HBM blocks pinned by requests (cached but free blocks count as free, as in vLLM)."""
        return 1.0 - self.num_free_blocks / self.capacity

    def tier_of(self, block_hash: int) -> Tier | None:
        """The fastest tier holding a block, or None."""
        if block_hash in self._cached:
            return Tier.HBM
        for tier in self.lower:
            if block_hash in tier.entries:
                return tier.tier
        return None

    def cached_block_count(self, tier: Tier = Tier.HBM) -> int:
        if tier is Tier.HBM:
            return len(self._cached)
        return sum(len(lower.entries) for lower in self.lower if lower.tier is tier)

    def take_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events

    # --- lookup and allocation -------------------------------------------------------------------------

    def find_prefix(self, request: SimRequest) -> PrefixHit:
        """The longest cached run of the request's leading blocks. At least the last token is always
        recomputed, as vLLM does, so a fully cached prompt hits one block less."""
        max_blocks = (request.num_tokens - 1) // self.block_size
        request.extend_block_hashes(self.block_size)
        hashes = request.block_hashes
        sources: list[Block | tuple[LowerTier, StoredCopy]] = []
        tier_blocks: dict[Tier, int] = {}
        hbm_blocks = 0
        cached = self._cached
        for index in range(max_blocks):
            block_hash = hashes[index]
            block = cached.get(block_hash)
            if block is not None:
                sources.append(block)
                hbm_blocks += 1
                continue
            for tier in self.lower:
                copy = tier.entries.get(block_hash)
                if copy is not None:
                    sources.append((tier, copy))
                    tier_blocks[tier.tier] = tier_blocks.get(tier.tier, 0) + 1
                    break
            else:
                break
        return PrefixHit(sources, hbm_blocks, tier_blocks)

    def allocate_new(self, request: SimRequest, hit: PrefixHit, num_new_tokens: int) -> bool:
        """Give a request that holds no blocks its hit blocks plus room for `num_new_tokens` more.
        Returns False, changing nothing, when HBM cannot hold them without evicting pinned blocks."""
        block_size = self.block_size
        needed = -(-(hit.num_blocks * block_size + num_new_tokens) // block_size)
        hbm_hits = [source for source in hit.sources if isinstance(source, Block)]
        evictable_hits = sum(1 for block in hbm_hits if block.ref_cnt == 0)
        if needed - len(hbm_hits) > self.num_free_blocks - evictable_hits:
            return False
        for index, source in enumerate(hit.sources):
            if isinstance(source, Block):
                self._touch(source)
            else:
                source[0].entries.move_to_end(request.block_hashes[index])
        blocks = request.blocks
        loaded_run: list[int] = []
        for index, source in enumerate(hit.sources):
            if isinstance(source, Block):
                self._emit_stored_run(request, loaded_run)
                loaded_run = []
                blocks.append(source)
                continue
            block = self._allocate_block()
            copy = source[1]
            block.block_hash = request.block_hashes[index]
            block.token_ids = copy.token_ids
            block.parent_hash = copy.parent_hash
            block.salt = copy.salt
            self._cached[block.block_hash] = block
            blocks.append(block)
            loaded_run.append(index)
        # Blocks copied in from a lower tier enter HBM's cache: BlockStored with medium GPU.
        self._emit_stored_run(request, loaded_run)
        for _ in range(needed - hit.num_blocks):
            blocks.append(self._allocate_block())
        request.num_cached_blocks = hit.num_blocks
        return True

    def allocate_slots(self, request: SimRequest, num_new_tokens: int) -> bool:
        """Room for a running request's next `num_new_tokens`; False, changing nothing, when HBM is full."""
        needed = -(-(request.num_computed_tokens + num_new_tokens) // self.block_size) - len(request.blocks)
        if needed <= 0:
            return True
        if needed > self.num_free_blocks:
            return False
        for _ in range(needed):
            request.blocks.append(self._allocate_block())
        return True

    def cache_full_blocks(self, request: SimRequest) -> None:
        """Register the request's blocks that are now full of computed tokens, publishing BlockStored."""
        block_size = self.block_size
        full = min(request.num_computed_tokens, request.num_tokens) // block_size
        first = request.num_cached_blocks
        if full <= first:
            return
        request.extend_block_hashes(block_size)
        hashes = request.block_hashes
        cached = self._cached
        run: list[int] = []
        for index in range(first, full):
            block_hash = hashes[index]
            if block_hash in cached:
                self._emit_stored_run(request, run)
                run = []
                continue
            block = request.blocks[index]
            block.block_hash = block_hash
            block.parent_hash = hashes[index - 1] if index else None
            start = index * block_size
            block.token_ids = request.token_ids[start : start + block_size].tolist()
            block.salt = request.cache_salt if index == 0 else None
            cached[block_hash] = block
            run.append(index)
        self._emit_stored_run(request, run)
        request.num_cached_blocks = full

    def free(self, request: SimRequest) -> None:
        """Unpin a request's blocks, tail first; cached ones stay hittable until reused."""
        free = self._free
        for block in reversed(request.blocks):
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                free[block] = None
        request.blocks = []
        request.num_cached_blocks = 0

    def reset(self) -> bool:
        """Drop the cached blocks of all tiers (vLLM's prefix-cache reset); refused while any is pinned."""
        if self.num_free_blocks != self.capacity:
            return False
        self._never_used = self.capacity
        self._free = OrderedDict()
        self._cached = {}
        for tier in self.lower:
            tier.entries.clear()
        self.events.append(AllBlocksCleared())
        return True

    # --- internals -------------------------------------------------------------------------------------

    def _touch(self, block: Block) -> None:
        if block.ref_cnt == 0:
            del self._free[block]
        block.ref_cnt += 1

    def _allocate_block(self) -> Block:
        if self._never_used:
            self._never_used -= 1
            block = Block()
        else:
            block, _ = self._free.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.block_hash = None
            block.parent_hash = None
            block.token_ids = []
            block.salt = None
        block.ref_cnt = 1
        return block

    def _evict(self, block: Block) -> None:
        block_hash = block.block_hash
        assert block_hash is not None
        del self._cached[block_hash]
        if self.lower:
            self._demote(0, block_hash, StoredCopy(block.token_ids, block.parent_hash, block.salt))
        self.events.append(BlockRemoved([block_hash], MEDIUM[Tier.HBM]))

    def _demote(self, level: int, block_hash: int, copy: StoredCopy) -> None:
        if level >= len(self.lower):
            return
        tier = self.lower[level]
        entries = tier.entries
        if block_hash in entries:
            entries.move_to_end(block_hash)
            return
        if len(entries) >= tier.capacity:
            old_hash, old_copy = entries.popitem(last=False)
            self._demote(level + 1, old_hash, old_copy)
            self.events.append(BlockRemoved([old_hash], tier.medium))
        entries[block_hash] = copy
        self.events.append(
            BlockStored(
                [block_hash],
                copy.parent_hash,
                copy.token_ids,
                self.block_size,
                tier.medium,
                [(copy.salt,) if copy.salt and copy.parent_hash is None else None],
            )
        )

    def _emit_stored_run(self, request: SimRequest, run: list[int]) -> None:
        if not run:
            return
        block_size = self.block_size
        first = run[0]
        start = first * block_size
        self.events.append(
            BlockStored(
                [request.block_hashes[index] for index in run],
                request.block_hashes[first - 1] if first else None,
                request.token_ids[start : start + len(run) * block_size].tolist(),
                block_size,
                MEDIUM[Tier.HBM],
                _extra_keys(request.cache_salt, first, len(run)),
            )
        )
