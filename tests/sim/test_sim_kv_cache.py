"""The tiered block pool on its own: hits, pinning, tail-first eviction, demotion and its events."""

from gateway.profiles import Tier
from loadtest.sim.kv_cache import AllBlocksCleared, BlockRemoved, BlockStored, TieredKVCache
from loadtest.sim.request import SimRequest

BLOCK = 4
ROOT = 12345


def make_request(tokens: list[int], salt: str | None = None, name: str = "r") -> SimRequest:
    return SimRequest(name, tokens, 1, BLOCK, root_hash=ROOT, arrival_time=0.0, cache_salt=salt)


def admit(cache: TieredKVCache, request: SimRequest) -> int:
    """Schedule the whole prompt at once, as one prefill; return the hit tokens."""
    hit = cache.find_prefix(request)
    hit_tokens = hit.num_blocks * BLOCK
    assert cache.allocate_new(request, hit, request.num_tokens - hit_tokens)
    request.num_computed_tokens = request.num_tokens
    cache.cache_full_blocks(request)
    return hit_tokens


def test_repeated_prompt_hits_its_full_blocks_but_recomputes_the_last_token():
    cache = TieredKVCache(capacity=16, block_size=BLOCK)
    first = make_request(list(range(10)))  # two full blocks and a partial one
    assert admit(cache, first) == 0
    cache.free(first)
    assert admit(cache, make_request(list(range(10)))) == 8

    exact = TieredKVCache(capacity=16, block_size=BLOCK)
    aligned = make_request(list(range(12)))  # exactly three blocks: the third is recomputed
    admit(exact, aligned)
    exact.free(aligned)
    assert admit(exact, make_request(list(range(12)))) == 8


def test_blocks_store_events_chain_parents_and_carry_token_ids():
    cache = TieredKVCache(capacity=16, block_size=BLOCK)
    request = make_request(list(range(10)))
    admit(cache, request)
    (stored,) = cache.take_events()
    assert isinstance(stored, BlockStored)
    assert stored.block_hashes == request.block_hashes[:2]
    assert stored.parent_block_hash is None
    assert stored.token_ids == list(range(8))
    assert stored.medium == "GPU"


def test_cache_salt_changes_every_hash_so_salted_prompts_share_nothing():
    cache = TieredKVCache(capacity=32, block_size=BLOCK)
    tokens = list(range(20))
    plain = make_request(tokens)
    admit(cache, plain)
    cache.free(plain)
    salted = make_request(tokens, salt="tenant-a")
    assert salted.block_hashes[0] != plain.block_hashes[0]
    assert salted.block_hashes[-1] != plain.block_hashes[-1]
    assert admit(cache, salted) == 0
    events = [e for e in cache.take_events() if isinstance(e, BlockStored)]
    assert events[-1].extra_keys[0] == ("tenant-a",)


def test_pinned_blocks_are_never_evicted_and_a_full_pool_refuses():
    cache = TieredKVCache(capacity=4, block_size=BLOCK)
    running = make_request(list(range(16)))
    admit(cache, running)
    assert cache.usage == 1.0
    other = make_request(list(range(100, 108)))
    hit = cache.find_prefix(other)
    assert not cache.allocate_new(other, hit, 8)
    assert other.blocks == []


def test_freed_prompt_loses_its_tail_first():
    cache = TieredKVCache(capacity=6, block_size=BLOCK)
    old = make_request(list(range(16)))  # blocks A0..A3
    admit(cache, old)
    cache.free(old)
    newcomer = make_request(list(range(100, 116)))  # 4 blocks: 2 never-used + 2 evicted
    admit(cache, newcomer)
    cache.free(newcomer)
    assert cache.tier_of(old.block_hashes[0]) is Tier.HBM
    assert cache.tier_of(old.block_hashes[1]) is Tier.HBM
    assert cache.tier_of(old.block_hashes[2]) is None
    assert cache.tier_of(old.block_hashes[3]) is None


def test_eviction_demotes_hbm_to_dram_to_storage_to_gone_with_events_in_order():
    cache = TieredKVCache(capacity=4, block_size=BLOCK, dram_blocks=2, storage_blocks=1)
    old = make_request(list(range(16)), name="old")  # four full blocks fill HBM
    admit(cache, old)
    cache.free(old)
    new = make_request(list(range(100, 116)), name="new")
    admit(cache, new)  # evicts old's blocks tail first: b3, b2, b1, b0
    b0, b1, b2, b3 = old.block_hashes
    assert cache.tier_of(b0) is Tier.DRAM and cache.tier_of(b1) is Tier.DRAM
    assert cache.tier_of(b2) is Tier.STORAGE
    assert cache.tier_of(b3) is None
    events = cache.take_events()
    media = {(type(e).__name__, e.medium) for e in events if not isinstance(e, AllBlocksCleared)}
    assert media == {
        ("BlockStored", "GPU"),
        ("BlockStored", "CPU"),
        ("BlockStored", "STORAGE"),
        ("BlockRemoved", "GPU"),
        ("BlockRemoved", "CPU"),
        ("BlockRemoved", "STORAGE"),
    }
    # A demoted block is announced in its new tier before it is removed from the old one.
    for index, event in enumerate(events):
        if isinstance(event, BlockRemoved) and event.medium == "GPU":
            (block_hash,) = event.block_hashes
            earlier = [e for e in events[:index] if isinstance(e, BlockStored) and e.medium == "CPU"]
            assert any(block_hash in e.block_hashes for e in earlier)
    demoted = next(e for e in events if isinstance(e, BlockStored) and e.medium == "CPU")
    assert demoted.token_ids == list(range(12, 16)) and demoted.parent_block_hash == b2


def test_a_dram_hit_is_copied_into_hbm_and_the_dram_copy_stays():
    cache = TieredKVCache(capacity=5, block_size=BLOCK, dram_blocks=8)
    prefix = list(range(16))
    old = make_request([*prefix, 99])
    admit(cache, old)
    cache.free(old)
    filler = make_request(list(range(200, 217)), name="filler")
    admit(cache, filler)  # pushes old's blocks down to DRAM
    cache.free(filler)
    assert cache.tier_of(old.block_hashes[3]) is Tier.DRAM
    cache.take_events()

    again = make_request([*prefix, 7, 8])
    hit = cache.find_prefix(again)
    assert hit.tier_blocks.get(Tier.DRAM, 0) >= 1
    assert admit(cache, again) == 16
    stored_gpu = [e for e in cache.take_events() if isinstance(e, BlockStored) and e.medium == "GPU"]
    assert any(old.block_hashes[3] in e.block_hashes for e in stored_gpu)
    assert cache.tier_of(old.block_hashes[3]) is Tier.HBM
    assert old.block_hashes[3] in cache.lower[0].entries


def test_two_requests_computing_the_same_prefix_store_it_once():
    cache = TieredKVCache(capacity=16, block_size=BLOCK)
    one, two = make_request(list(range(9)), name="one"), make_request(list(range(9)), name="two")
    for request in (one, two):
        hit = cache.find_prefix(request)
        assert hit.num_blocks == 0
        assert cache.allocate_new(request, hit, 9)
    for request in (one, two):
        request.num_computed_tokens = 9
        cache.cache_full_blocks(request)
    stored = [h for e in cache.take_events() if isinstance(e, BlockStored) for h in e.block_hashes]
    assert stored == one.block_hashes[:2]


def test_reset_is_refused_while_blocks_are_pinned_then_clears_every_tier():
    cache = TieredKVCache(capacity=4, block_size=BLOCK, dram_blocks=4)
    request = make_request(list(range(9)))
    admit(cache, request)
    assert not cache.reset()
    cache.free(request)
    cache.take_events()
    assert cache.reset()
    assert cache.take_events() == [AllBlocksCleared()]
    assert cache.tier_of(request.block_hashes[0]) is None
    assert cache.num_free_blocks == 4
