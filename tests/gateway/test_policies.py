import time
from collections import Counter

import pytest

from gateway.blocks import PromptBlocks
from gateway.index.base import PrefixMatch
from gateway.policies import AffinityPolicy, AffinitySettings, RouteContext, make_policy
from gateway.policies.cost import SCALE_MEMORY_S
from gateway.profiles import get_profile
from gateway.replicas import RECENT_HALF_LIFE_S, Replica

PROFILE = get_profile("h100-llama3-8b")


def fleet(n: int = 4) -> list[Replica]:
    return [Replica(url=f"http://10.0.0.{i}:8000", models={"m"}) for i in range(n)]


def context(replicas, matches=None, prompt_blocks=1000, session=None, key=12345) -> RouteContext:
    blocks = PromptBlocks(
        hashes=list(range(prompt_blocks)), tokens_per_block=16.0, prompt_tokens=prompt_blocks * 16
    )
    return RouteContext("m", blocks, replicas, matches or {}, session, key)


def test_round_robin_rotates_through_every_replica():
    replicas = fleet()
    policy = make_policy("round_robin", PROFILE)
    firsts = [policy.rank(context(replicas)).replicas[0].name for _ in range(8)]
    assert firsts[:4] == [r.name for r in replicas] and firsts[4:] == firsts[:4]


def test_random_reaches_every_replica():
    replicas = fleet()
    policy = make_policy("random", PROFILE)
    assert {policy.rank(context(replicas)).replicas[0].name for _ in range(200)} == {r.name for r in replicas}


def test_least_loaded_prefers_the_fewest_outstanding_by_either_count():
    replicas = fleet()
    replicas[0].load.inflight = 5
    replicas[1].scraped.waiting = 3
    replicas[2].load.inflight = 1
    replicas[3].load.inflight = 2
    ranking = make_policy("least_loaded", PROFILE).rank(context(replicas))
    assert [r.name for r in ranking.replicas] == [replicas[i].name for i in (2, 3, 1, 0)]


def test_consistent_hash_keeps_a_session_and_moves_only_a_lost_replicas_sessions():
    replicas = fleet(5)
    policy = make_policy("consistent_hash", PROFILE)
    sessions = [f"s{i}" for i in range(300)]
    before = {s: policy.rank(context(replicas, session=s)).replicas[0].name for s in sessions}
    assert before == {s: policy.rank(context(replicas, session=s)).replicas[0].name for s in sessions}
    assert len(set(before.values())) == 5
    lost = replicas[0].name
    after = {s: policy.rank(context(replicas[1:], session=s)).replicas[0].name for s in sessions}
    assert all(after[s] == before[s] for s in sessions if before[s] != lost)


def test_affinity_sends_a_prompt_to_the_replica_holding_most_of_it():
    replicas = fleet()
    matches = {replicas[2].name: PrefixMatch(hbm=900), replicas[1].name: PrefixMatch(hbm=100)}
    ranking = AffinityPolicy(PROFILE).rank(context(replicas, matches))
    assert ranking.replicas[0] is replicas[2]
    assert ranking.reason == "affinity"
    assert ranking.predicted_cached_tokens == 900 * 16
    assert ranking.replicas[1] is replicas[1]  # retries go to the next best holder


def test_affinity_prices_tiers_hbm_before_dram_before_a_miss():
    replicas = fleet(3)
    matches = {replicas[0].name: PrefixMatch(dram=900), replicas[1].name: PrefixMatch(hbm=900)}
    ranking = AffinityPolicy(PROFILE).rank(context(replicas, matches))
    assert [r.name for r in ranking.replicas] == [replicas[i].name for i in (1, 0, 2)]
    costs = {e.replica: e for e in ranking.estimates}
    assert costs[replicas[0].name].fetch_s > 0 == costs[replicas[1].name].fetch_s
    assert costs[replicas[0].name].ttft_s < costs[replicas[2].name].ttft_s / 3


def test_affinity_cold_prompt_goes_to_the_least_queued_replica():
    replicas = fleet(3)
    replicas[0].load.queued_prefill_seconds = 2.0
    replicas[1].load.queued_prefill_seconds = 0.5
    replicas[2].load.queued_prefill_seconds = 1.0
    ranking = AffinityPolicy(PROFILE).rank(context(replicas))
    assert ranking.reason == "cold" and ranking.replicas[0] is replicas[1]


def test_affinity_leaves_a_holder_with_a_long_queue_for_a_small_prompt():
    replicas = fleet(2)
    replicas[0].load.queued_prefill_seconds = 3.0  # a deep queue of prefills already sent there
    matches = {replicas[0].name: PrefixMatch(hbm=100)}
    ranking = AffinityPolicy(PROFILE).rank(context(replicas, matches, prompt_blocks=110))
    assert ranking.replicas[0] is replicas[1]


def test_load_guard_spreads_a_hot_prefix_to_a_second_replica():
    replicas = fleet(4)
    hot = replicas[0]
    hot.load.inflight = 20
    for other in replicas[1:]:
        other.load.inflight = 2
    matches = {hot.name: PrefixMatch(hbm=1000)}
    ranking = AffinityPolicy(PROFILE, AffinitySettings(guard_factor=1.5, guard_min_outstanding=8)).rank(
        context(replicas, matches)
    )
    assert ranking.replicas[0] is not hot
    assert ranking.reason == "load_guard"
    assert ranking.replicas[-1] is hot  # still there, last, for retries


def test_the_load_guard_spares_a_conversations_own_history_but_spreads_a_shared_prefix():
    def first_choice(
        holder_blocks: int, kv_usage: float = 0.0, keep_tokens: float = 32768, full_twin: bool = False
    ):
        replicas = fleet(4)
        holder = replicas[0]
        holder.load.inflight = 20
        holder.scraped.kv_usage = kv_usage
        for other in replicas[1:]:
            other.load.inflight = 2
        # every replica holds the shared system prompt (1,000 blocks); the holder, the conversation too
        matches = {r.name: PrefixMatch(hbm=1000) for r in replicas[1:]} | {
            holder.name: PrefixMatch(hbm=holder_blocks)
        }
        if full_twin:  # another copy of the conversation, on a replica whose KV cache is full
            replicas[1].scraped.kv_usage = 0.99
            matches[replicas[1].name] = PrefixMatch(hbm=holder_blocks)
        policy = AffinityPolicy(PROFILE, AffinitySettings(guard_keep_tokens=keep_tokens))
        ranking = policy.rank(context(replicas, matches, prompt_blocks=holder_blocks + 100))
        return ranking.replicas[0] is holder, ranking.reason

    assert first_choice(holder_blocks=6000) == (True, "affinity")  # 80k tokens only it holds: it stays
    assert first_choice(holder_blocks=2000) == (False, "load_guard")  # 16k more: that spreads
    assert first_choice(holder_blocks=6000, keep_tokens=float("inf"))[0] is False
    assert first_choice(holder_blocks=6000, kv_usage=0.99)[0] is False  # a full cache guards regardless
    # the history is measured against the replicas the request could go to, not a guarded one
    assert first_choice(holder_blocks=6000, full_twin=True) == (True, "affinity")


def test_kv_cache_nearly_full_guards_a_replica():
    replicas = fleet(2)
    replicas[0].scraped.kv_usage = 0.99
    matches = {replicas[0].name: PrefixMatch(hbm=1000)}
    assert AffinityPolicy(PROFILE).rank(context(replicas, matches)).replicas[0] is replicas[1]


def test_ties_break_by_rendezvous_so_independent_gateways_agree():
    replicas = fleet(6)
    choices = Counter()
    for key in range(200):
        one = AffinityPolicy(PROFILE).rank(context(replicas, key=key)).replicas[0].name
        two = AffinityPolicy(PROFILE).rank(context(list(reversed(replicas)), key=key)).replicas[0].name
        assert one == two
        choices[one] += 1
    assert len(choices) == 6 and max(choices.values()) < 80


def test_a_holder_with_a_short_queue_keeps_a_prompt_a_cold_replica_would_start_a_little_sooner():
    def first_choice(work_weight: float):
        holder, cold = fleet(2)
        policy = AffinityPolicy(PROFILE, AffinitySettings(work_weight=work_weight))
        matches = {holder.name: PrefixMatch(hbm=900)}
        unscaled = {e.replica: e.unscaled_s for e in policy.rank(context([holder, cold], matches)).estimates}
        # queued work that makes the holder's TTFT 20% longer than a cold prefill elsewhere
        holder.load.queued_prefill_seconds = unscaled[cold.name] * 1.2 - unscaled[holder.name]
        return policy.rank(context([holder, cold], matches)).replicas[0] is holder

    assert first_choice(work_weight=0.5)  # the cold prefill would delay whatever queues behind it
    assert not first_choice(work_weight=0.0)  # TTFT alone


def test_a_tie_goes_to_the_replica_holding_more_of_the_prompt_then_to_the_less_loaded():
    holder, other = fleet(2)
    policy = AffinityPolicy(PROFILE)
    matches = {holder.name: PrefixMatch(hbm=20)}
    plain = policy.rank(context([holder, other], matches))
    unscaled = {e.replica: e.unscaled_s for e in plain.estimates}
    # a queue that makes the holder 3% dearer than the other: within the tie tolerance
    holder.load.queued_prefill_seconds = unscaled[other.name] * 1.03 - unscaled[holder.name]
    for key in range(50):
        ranking = policy.rank(context([holder, other], matches, key=key))
        assert ranking.replicas[0] is holder and ranking.reason == "affinity"

    replicas = fleet(3)
    for busy in replicas[:2]:
        busy.load.inflight = 3
    assert {
        AffinityPolicy(PROFILE).rank(context(replicas, key=key)).replicas[0].name for key in range(50)
    } == {replicas[2].name}


def test_a_tie_goes_to_the_replica_sent_fewer_requests_lately_which_counts_half_after_a_half_life():
    replicas = fleet(3)
    now = time.monotonic()
    for replica, sent in zip(replicas, (3, 1, 0), strict=True):
        for _ in range(sent):
            replica.load.note_request(now)
    replicas[2].load.inflight = 2  # busier this instant, but carrying fewer conversations
    policy = AffinityPolicy(PROFILE)
    assert {policy.rank(context(replicas, key=key)).replicas[0].name for key in range(50)} == {
        replicas[2].name
    }

    load = replicas[1].load
    assert load.recent_requests(now + RECENT_HALF_LIFE_S) == pytest.approx(0.5)
    load.note_request(now + RECENT_HALF_LIFE_S)
    assert load.recent_requests(now + 3 * RECENT_HALF_LIFE_S) == pytest.approx(1.5 / 4)


def test_a_replica_observed_slower_than_its_peers_loses_traffic_then_recovers():
    replicas = fleet(2)
    policy = AffinityPolicy(PROFILE)
    slow, fast = replicas
    now = time.monotonic()
    for _ in range(30):
        policy.cost.observe(slow.name, 1.0, 4.0, now=now)
        policy.cost.observe(fast.name, 1.0, 1.0, now=now)
    assert policy.cost.scale(slow.name, now=now) > 2.5 * policy.cost.scale(fast.name, now=now)
    matches = {slow.name: PrefixMatch(hbm=300)}  # the slow one holds part of the prompt
    ranking = policy.rank(context(replicas, matches))
    estimates = {e.replica: e for e in ranking.estimates}
    assert estimates[slow.name].unscaled_s < estimates[fast.name].unscaled_s  # cheaper on paper...
    assert ranking.replicas[0] is fast  # ...but it really runs slower
    later = now + 10 * SCALE_MEMORY_S
    assert policy.cost.scale(slow.name, now=later) == policy.cost.scale(fast.name, now=later)


def test_small_differences_between_replicas_do_not_move_traffic():
    replicas = fleet(2)
    policy = AffinityPolicy(PROFILE)
    a, b = replicas
    for step in range(50):  # a is 15% slower than b, with noise: within the dead band
        policy.cost.observe(a.name, 1.0, 1.15 * (1.1 if step % 2 else 0.9), now=0.0)
        policy.cost.observe(b.name, 1.0, 1.0 * (0.9 if step % 2 else 1.1), now=0.0)
    assert policy.cost.scale(a.name, now=0.0) == policy.cost.scale(b.name, now=0.0)


def test_the_pool_scale_follows_replicas_that_all_run_faster_than_the_profile():
    policy = AffinityPolicy(PROFILE)
    for step in range(200):
        policy.cost.observe(f"r{step % 4}", 1.0, 0.01, now=0.0)  # a simulator at time scale 100
    assert policy.cost.pool_scale == pytest.approx(0.01, rel=0.01)
    assert policy.cost.relative("r1", now=0.0) == 1.0


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("best", PROFILE)
