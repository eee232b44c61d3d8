"""The SLO-adaptive controller on synthetic feedback, and the ramp schedule."""

import math

import pytest

from loadtest.swarm.controller import (
    AdaptiveController,
    AdaptiveSettings,
    PeriodFeedback,
    RampSchedule,
    SloTargets,
)

SLO = SloTargets(ttft_s=1.0, ttft_metric="p95")


def queueing_endpoint(capacity: int):
    """TTFT p95 of an endpoint that serves `capacity` users at 0.3 s and queues the rest."""

    def feedback(users: int) -> PeriodFeedback:
        ttft = 0.3 + 0.2 * max(0, users - capacity)
        return PeriodFeedback(users=users, completed=50, ttft_s=ttft, output_tokens_per_s=40.0)

    return feedback


def largest_inside_slo(capacity: int) -> int:
    return capacity + 3  # 0.3 + 0.2 * 3 = 0.9 s; one more user is 1.1 s


def drive(controller: AdaptiveController, endpoint, periods: int) -> None:
    for _ in range(periods):
        controller.observe(endpoint(controller.users))


@pytest.mark.parametrize("capacity", [5, 40, 300])
def test_converges_on_the_largest_count_inside_the_slo(capacity):
    controller = AdaptiveController(SLO, AdaptiveSettings(start_users=2, max_users=5000))
    drive(controller, queueing_endpoint(capacity), periods=60)
    best = largest_inside_slo(capacity)
    assert controller.converged
    assert best - max(1, math.ceil(0.05 * best)) <= controller.users <= best
    assert controller.good == controller.users and controller.bad is not None and controller.bad > best


def test_more_users_when_the_endpoint_is_fast_fewer_when_slow():
    fast = AdaptiveController(SLO, AdaptiveSettings(start_users=4, max_users=5000))
    slow = AdaptiveController(SLO, AdaptiveSettings(start_users=4, max_users=5000))
    drive(fast, queueing_endpoint(120), 60)
    drive(slow, queueing_endpoint(6), 60)
    assert fast.users > 5 * slow.users


def test_backs_off_after_a_violation_and_settles_after_each_change():
    controller = AdaptiveController(SLO, AdaptiveSettings(start_users=10, settle_periods=1))
    first = controller.observe(PeriodFeedback(users=10, completed=50, ttft_s=3.0))
    assert first.verdict == "violation" and first.users == 5
    assert controller.observe(PeriodFeedback(users=5, completed=50, ttft_s=3.0)).verdict == "settling"
    assert controller.observe(PeriodFeedback(users=5, completed=50, ttft_s=0.5)).verdict == "ok"
    assert controller.users == 7  # bisecting between 5 (good) and 10 (bad)


def test_capacity_that_drops_after_convergence_is_followed_down():
    controller = AdaptiveController(SLO, AdaptiveSettings(start_users=2, max_users=5000))
    drive(controller, queueing_endpoint(80), 60)
    assert controller.converged and controller.users > 80
    drive(controller, queueing_endpoint(20), 60)
    assert controller.converged
    assert largest_inside_slo(20) - 2 <= controller.users <= largest_inside_slo(20)


def test_thin_periods_are_held_unless_a_request_is_stuck_waiting():
    controller = AdaptiveController(SLO, AdaptiveSettings(start_users=8, min_requests=10))
    held = controller.observe(PeriodFeedback(users=8, completed=3, ttft_s=0.2))
    assert held.verdict == "hold" and held.users == 8
    stuck = controller.observe(PeriodFeedback(users=8, completed=0, oldest_waiting_s=4.0))
    assert stuck.verdict == "violation" and stuck.users == 4


def test_output_speed_and_errors_are_part_of_the_slo():
    slo = SloTargets(ttft_s=2.0, min_output_tokens_per_s=30.0, max_error_rate=0.1)
    slow_decode = AdaptiveController(slo, AdaptiveSettings(start_users=8))
    assert (
        slow_decode.observe(
            PeriodFeedback(users=8, completed=40, ttft_s=0.5, output_tokens_per_s=20.0)
        ).verdict
        == "violation"
    )
    failing = AdaptiveController(slo, AdaptiveSettings(start_users=8))
    assert (
        failing.observe(PeriodFeedback(users=8, completed=40, errors=10, ttft_s=0.5)).verdict == "violation"
    )
    assert slo.request_ok(1.5, 31.0) and not slo.request_ok(2.5, 31.0) and not slo.request_ok(1.0, 29.0)
    with pytest.raises(ValueError, match="needs an SLO"):
        AdaptiveController(SloTargets())


def test_ramp_adds_a_step_every_interval_up_to_the_cap():
    ramp = RampSchedule(start=2, step=3, interval_s=10.0, max_users=10)
    assert [ramp.users_at(t) for t in (0, 9.9, 10, 25, 30, 1000)] == [2, 2, 5, 8, 10, 10]
