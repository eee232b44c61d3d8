import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.index.base import PrefixMatch, TierCapacity
from gateway.index.embedded import EmbeddedIndex
from gateway.index.replica_cache import ReplicaCacheModel
from gateway.profiles import Tier


def chain(tag: int, length: int, shared: list[int] | None = None) -> list[int]:
    prefix = list(shared or [])
    return prefix + [tag * 1_000_000 + i for i in range(length - len(prefix))]


def linear_match(model: ReplicaCacheModel, hashes: list[int]) -> PrefixMatch:
    counts = {Tier.HBM: 0, Tier.DRAM: 0, Tier.STORAGE: 0}
    for block in hashes:
        tier = model.tier_of(block)
        if tier is None:
            break
        counts[tier] += 1
    return PrefixMatch(counts[Tier.HBM], counts[Tier.DRAM], counts[Tier.STORAGE])


def test_a_sent_prompt_is_held_in_hbm_and_a_new_branch_shares_its_prefix():
    model = ReplicaCacheModel(TierCapacity(hbm=1000))
    first = chain(1, 100)
    model.touch(first)
    assert model.match(first) == PrefixMatch(hbm=100)
    branch = first[:60] + chain(2, 40)
    assert model.match(branch) == PrefixMatch(hbm=60)
    assert model.match(chain(3, 10)) == PrefixMatch()


def test_pressure_demotes_tails_first_then_forgets():
    model = ReplicaCacheModel(TierCapacity(hbm=100, dram=100))
    old = chain(1, 80)
    model.touch(old)
    model.touch(chain(2, 80))  # HBM overflows: the old chain's tail moves to DRAM
    held = model.match(old)
    assert held.hbm > 0 and held.dram > 0 and held.blocks == 80
    for tag in range(3, 8):
        model.touch(chain(tag, 80))
    assert model.match(old) == PrefixMatch()  # pushed through DRAM and out
    counts = model.counts()
    assert counts[Tier.HBM] <= 100 and counts[Tier.DRAM] <= 100


def test_a_lower_tier_hit_is_promoted_back_to_hbm():
    model = ReplicaCacheModel(TierCapacity(hbm=100, dram=200))
    old = chain(1, 60)
    model.touch(old)
    model.touch(chain(2, 90))
    assert model.match(old).dram > 0
    model.touch(old)
    assert model.match(old) == PrefixMatch(hbm=60)


def test_storage_tier_catches_what_dram_drops():
    model = ReplicaCacheModel(TierCapacity(hbm=50, dram=50, storage=500))
    chains = [chain(tag, 40) for tag in range(10)]
    for c in chains:
        model.touch(c)
    assert model.match(chains[0]).storage > 0
    assert sum(model.evicted) > 0


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.tuples(st.integers(10, 120), st.integers(0, 120), st.integers(0, 120)),
    operations=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 5), st.integers(1, 60)), min_size=1, max_size=40
    ),
)
def test_binary_search_match_equals_a_walk_over_the_prompt(capacity, operations):
    """Whatever was sent in whatever order, what the model holds of any chain is a tiered prefix."""
    model = ReplicaCacheModel(TierCapacity(*capacity))
    trunks = [chain(100 + t, 60) for t in range(6)]
    sent = []
    for branch, trunk, length in operations:
        # as with real chained hashes, a block's id is determined by its whole prefix
        half = length // 2
        hashes = trunks[trunk][:half] + chain(1000 + (branch * 6 + trunk) * 31 + half, length - half)
        model.touch(hashes)
        sent.append(hashes)
        for earlier in sent:
            assert model.match(earlier) == linear_match(model, earlier)


def test_memory_stays_bounded_under_a_random_workload():
    model = ReplicaCacheModel(TierCapacity(hbm=2000, dram=3000, storage=0))
    rng = random.Random(7)
    for _ in range(400):
        model.touch([rng.getrandbits(64) for _ in range(rng.randint(1, 400))])
        assert len(model) <= 5000


async def test_embedded_index_matches_per_replica_and_forgets_a_replica():
    index = EmbeddedIndex(TierCapacity(hbm=1000))
    prompt = chain(1, 50)
    index.record("m", "a", prompt)
    index.record("m", "b", prompt[:20])
    found = await index.match("m", prompt, ["a", "b", "c"])
    assert found == {"a": PrefixMatch(hbm=50), "b": PrefixMatch(hbm=20)}
    await index.forget_replica("a")
    assert await index.match("m", prompt, ["a", "b"]) == {"b": PrefixMatch(hbm=20)}
    index.set_capacity("b", TierCapacity(hbm=10))
    assert index.block_counts()["b"][Tier.HBM] <= 10
