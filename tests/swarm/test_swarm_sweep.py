"""Hit-rate and working-set sweeps: each request's ceiling is the phase's target."""

import pytest

from gateway.chat_template import render_chat
from gateway.tokenizer import ByteTokenizer
from loadtest.swarm.ceiling import CeilingTracker
from loadtest.swarm.plan import Send, walk
from loadtest.swarm.shard import Shard
from loadtest.swarm.workloads.sweep import Sweep, SweepOptions


def next_request(workload: Sweep, user: int = 0):
    ((_, action),) = walk(workload.next_session(user))
    assert isinstance(action, Send)
    return action.request


def test_hit_rate_phases_serve_their_target_after_the_prewarm():
    options = SweepOptions(
        kind="hit-rate", context_tokens=4096, working_set_tokens=40_000, hit_rates=(0.0, 0.5, 0.9)
    )
    workload = Sweep(options)
    tracker = CeilingTracker()
    prewarm = workload.prewarm()
    assert len(prewarm) == 40_000 // 4096 and all(r.max_tokens == 1 for r in prewarm)
    for index, request in enumerate(prewarm):
        tracker.observe(-1 - index, request.block_keys)
    phases = workload.phases()
    assert [p.name for p in phases] == ["hit-rate=0", "hit-rate=0.5", "hit-rate=0.9"]
    for index, target in enumerate(options.hit_rates):
        workload.begin_phase(index)
        for request_id in range(25):
            request = next_request(workload)
            prefix = tracker.observe(request_id + 1000 * index, request.block_keys)
            ceiling = prefix * request.block_tokens / request.prompt_tokens
            assert ceiling == pytest.approx(target, abs=64 / 4096)
            assert request.phase == phases[index].name
            assert ByteTokenizer().count(render_chat(request.payload["messages"])) == options.context_tokens


def test_working_set_phases_grow_and_cycle_through_their_prompts():
    options = SweepOptions(
        kind="working-set",
        context_tokens=1000,
        working_set_min_tokens=4000,
        working_set_max_tokens=64_000,
        working_set_steps=3,
    )
    workload = Sweep(options)
    phases = workload.phases()
    sizes = [phase.settings["working_set_prompts"] for phase in phases]
    assert sizes == [4, 16, 64] and workload.prewarm() == []
    for index, size in enumerate(sizes):
        workload.begin_phase(index)
        sessions = [next_request(workload).session for _ in range(size * 2)]
        assert sessions[:size] == [f"prompt-{p}" for p in range(size)] == sessions[size:]


def test_sweep_shards_split_the_working_set():
    options = SweepOptions(
        kind="working-set",
        context_tokens=1000,
        working_set_min_tokens=12_000,
        working_set_max_tokens=12_000,
        working_set_steps=1,
    )
    prompts = [set() for _ in range(3)]
    for index in range(3):
        workload = Sweep(options, Shard(index, 3))
        prompts[index] = {next_request(workload).session for _ in range(12)}
    assert set.union(*prompts) == {f"prompt-{p}" for p in range(12)}
    assert sum(len(p) for p in prompts) == 12
