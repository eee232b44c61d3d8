"""The continuous-batching scheduler on its own: budgets, chunking, admission order and preemption."""

import pytest

from gateway.profiles import get_profile
from loadtest.sim.kv_cache import TieredKVCache
from loadtest.sim.request import RequestState, SimRequest
from loadtest.sim.scheduler import Scheduler

PROFILE = get_profile("h100-llama3-8b")


def make_scheduler(capacity: int = 4096, block_size: int = 16, max_num_seqs: int = 256, budget: int = 8192):
    cache = TieredKVCache(capacity, block_size)
    return Scheduler(cache, PROFILE, max_num_seqs, budget)


def make_request(name: str, prompt_tokens: int, max_tokens: int = 4, arrival: float = 0.0, base: int = 0):
    tokens = [base + i for i in range(prompt_tokens)]
    return SimRequest(name, tokens, max_tokens, block_size=16, root_hash=1, arrival_time=arrival)


def sample(request: SimRequest) -> None:
    """What the engine does after a step for a request whose known tokens are all computed."""
    if request.num_computed_tokens == request.num_tokens:
        request.append_output(7, 16)


def test_a_long_prompt_is_prefilled_in_budget_sized_chunks_that_cost_one_calibrated_pass():
    scheduler = make_scheduler()
    request = make_request("long", 32768)
    scheduler.add(request)
    chunks = []
    total = 0.0
    for _ in range(4):
        plan = scheduler.schedule(0.0)
        assert [c.request for c in plan.prefills] == [request]
        chunks.append(plan.prefills[0].num_new_tokens)
        total += plan.seconds(PROFILE)
        sample(request)
    assert chunks == [8192] * 4
    assert request.num_output_tokens == 1
    # Each step pays the prefill launch once; the chunks together cost one single-pass prefill.
    assert total == pytest.approx(PROFILE.prefill.seconds(32768) + 3 * PROFILE.prefill.fixed)
    assert total == pytest.approx(1.4, rel=0.2)


def test_decodes_go_first_and_prefills_share_what_budget_is_left():
    scheduler = make_scheduler(budget=1000)
    decoding = make_request("decoding", 100)
    scheduler.add(decoding)
    scheduler.schedule(0.0)
    sample(decoding)
    newcomer = make_request("newcomer", 5000, base=10_000)
    scheduler.add(newcomer)
    plan = scheduler.schedule(0.1)
    assert plan.decodes == [decoding]
    assert [(c.request, c.num_new_tokens) for c in plan.prefills] == [(newcomer, 999)]
    assert plan.decode_context_tokens == decoding.num_tokens


def test_requests_that_have_not_arrived_yet_wait_for_a_later_step():
    scheduler = make_scheduler()
    early, late = make_request("early", 50), make_request("late", 50, arrival=1.0, base=500)
    scheduler.add(early)
    scheduler.add(late)
    plan = scheduler.schedule(0.5)
    assert [c.request for c in plan.prefills] == [early]
    assert late.state is RequestState.WAITING


def test_max_num_seqs_caps_the_running_batch():
    scheduler = make_scheduler(max_num_seqs=2)
    for n in range(3):
        scheduler.add(make_request(f"r{n}", 20, base=100 * n))
    plan = scheduler.schedule(0.0)
    assert len(plan.prefills) == 2 and len(scheduler.waiting) == 1


def test_a_request_waits_when_kv_blocks_run_out():
    scheduler = make_scheduler(capacity=10)
    first, second = make_request("first", 150), make_request("second", 100, base=1000)
    scheduler.add(first)
    scheduler.add(second)
    plan = scheduler.schedule(0.0)
    assert [c.request for c in plan.prefills] == [first]
    assert list(scheduler.waiting) == [second]


def test_growing_decodes_preempt_the_latest_request_which_is_recomputed_later():
    scheduler = make_scheduler(capacity=4, max_num_seqs=8)
    older = make_request("older", 31, max_tokens=40)
    newer = make_request("newer", 31, max_tokens=40, base=100)
    scheduler.add(older)
    scheduler.add(newer)
    scheduler.schedule(0.0)
    sample(older)
    sample(newer)
    preempted = []
    for step in range(1, 20):
        plan = scheduler.schedule(step * 0.01)
        preempted.extend(plan.preempted)
        for request in plan.decodes + [c.request for c in plan.prefills]:
            sample(request)
        if preempted:
            break
    assert preempted == [newer]
    assert newer.state is RequestState.WAITING and scheduler.waiting[0] is newer
    assert newer.num_computed_tokens == 0 and newer.num_output_tokens > 0
    assert scheduler.num_preemptions == 1
    assert older.state is RequestState.RUNNING


def test_a_step_that_preempted_admits_no_one():
    scheduler = make_scheduler(capacity=4, max_num_seqs=8)
    older = make_request("older", 31, max_tokens=40)
    newer = make_request("newer", 31, max_tokens=40, base=100)
    scheduler.add(older)
    scheduler.add(newer)
    scheduler.schedule(0.0)
    sample(older)
    sample(newer)
    for step in range(1, 20):
        plan = scheduler.schedule(step * 0.01)
        for request in plan.decodes:
            sample(request)
        if plan.preempted:
            assert plan.admitted == []
            assert not plan.prefills
            break
    else:
        pytest.fail("no preemption happened")
