"""Figures from raw records, and the run's ceiling tracker."""

import numpy as np
import pytest

from loadtest.swarm.ceiling import CeilingTracker
from loadtest.swarm.controller import SloTargets
from loadtest.swarm.records import RequestRecord, read_records, write_records
from loadtest.swarm.stats import distribution, period_rows, summarize


def record(index: int, **overrides) -> RequestRecord:
    values = dict(
        request_id=index,
        shard=0,
        user=index % 3,
        session=f"s{index % 3}",
        kind="agent",
        phase="",
        start_s=float(index),
        end_s=float(index) + 2.0,
        e2e_s=2.0,
        ttft_s=0.1 * (index + 1),
        itl_s=0.02,
        max_token_gap_s=0.05,
        output_tokens_per_s=50.0,
        prompt_tokens=1000,
        completion_tokens=100,
        cached_tokens=600,
        expected_prompt_tokens=1000,
        max_tokens=100,
        blocks=62,
        block_tokens=16,
        ceiling_tokens=800,
        outcome="ok",
        http_status=200,
        error_type="",
        error_message="",
        slo_ok=True,
    )
    values.update(overrides)
    return RequestRecord(**values)


def test_distribution_matches_numpy_and_ignores_missing_values():
    values = [0.3, 0.1, None, 0.7, 0.2, float("nan")]
    figures = distribution(values)
    clean = np.array([0.3, 0.1, 0.7, 0.2])
    assert figures["count"] == 4 and figures["p95"] == pytest.approx(np.percentile(clean, 95))
    assert figures["max"] == 0.7 and distribution([])["p50"] is None


def test_summary_counts_outcomes_hit_rates_and_goodput():
    records = [record(i) for i in range(8)]
    records.append(
        record(8, outcome="http_error", http_status=429, ttft_s=None, prompt_tokens=None, slo_ok=False)
    )
    records.append(record(9, outcome="timeout", ttft_s=None, http_status=200, slo_ok=False))
    records.append(record(10, outcome="cancelled", ttft_s=None, slo_ok=False))
    records.append(record(11, slo_ok=False, ttft_s=5.0))
    summary = summarize(records, span_s=20.0, slo=SloTargets(ttft_s=1.0))
    assert summary["requests"] == {
        "finished": 11,
        "ok": 9,
        "failed": 2,
        "cancelled_at_stop": 1,
        "errors_by_kind": {"http_429": 1, "timeout": 1},
    }
    assert summary["throughput"]["requests_per_s"] == pytest.approx(9 / 20)
    assert summary["cache"]["hit_rate"] == pytest.approx(0.6)
    assert summary["cache"]["ceiling_hit_rate"] == pytest.approx(0.8)
    assert summary["cache"]["measured_over_ceiling"] == pytest.approx(0.75)
    assert summary["goodput"]["requests"] == 8 and summary["goodput"]["fraction"] == pytest.approx(8 / 11)


def test_hit_rate_is_unknown_when_the_server_never_reports_cached_tokens():
    records = [record(i, cached_tokens=None) for i in range(3)]
    assert summarize(records, 5.0, SloTargets())["cache"]["hit_rate"] is None
    records[0].cached_tokens = 900  # reported for some: the others count as 0 (vLLM 0.11 omits zeros)
    assert summarize(records, 5.0, SloTargets())["cache"]["hit_rate"] == pytest.approx(0.3)


def test_periods_take_the_requests_that_finished_in_them():
    records = [record(i, start_s=float(i), end_s=float(i) + 0.5) for i in range(25)]
    rows = period_rows(records, period_s=10.0, span_s=25.0, slo=SloTargets(ttft_s=1.0), users_at=lambda t: 4)
    assert [row["requests_ok"] for row in rows] == [10, 10, 5]
    assert rows[2]["end_s"] == 25.0 and rows[2]["requests_per_s"] == pytest.approx(1.0)
    assert [row["slo_ok"] for row in rows] == [True, False, False] and rows[0]["users"] == 4


def test_records_survive_the_csv_exactly(tmp_path):
    records = [record(i, ttft_s=1 / 3 + i, cached_tokens=None if i == 2 else 7) for i in range(4)]
    write_records(tmp_path / "requests.csv", records)
    assert read_records(tmp_path / "requests.csv") == records


def test_ceiling_is_the_prefix_sent_before_and_hints_are_trusted():
    tracker = CeilingTracker()
    assert tracker.observe(0, [1, 2, 3]) == 0
    assert tracker.observe(1, [1, 2, 3, 4, 5]) == 3
    assert tracker.observe(2, [1, 2, 9, 4]) == 2  # a prefix cache stops at the first unseen block
    assert tracker.observe(3, [1, 2, 3, 4, 5, 6], known_sent=5) == 5
    log = tracker.first_uses()
    assert log["key"].tolist() == [1, 2, 3, 4, 5, 9, 6]
    assert log["request_id"].tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert log["position"].tolist() == [0, 1, 2, 3, 4, 2, 5]
