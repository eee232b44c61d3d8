"""Sharding partitions the work, and merging shards equals computing over everything at once.

The requests come from the real agent workload (walked without an endpoint); their latencies are a
deterministic function of each request, as if measured. The unsharded side runs one ceiling tracker
over all requests in time order; each shard runs its own over its users' requests, writes its results
like a swarm run does, and `merge_runs` puts them back together.
"""

import math

import pytest

from loadtest.report.compare import comparison_markdown, comparison_rows
from loadtest.report.merge import MergeError, merge_runs
from loadtest.swarm.ceiling import CeilingTracker, ceiling_tokens
from loadtest.swarm.controller import SloTargets
from loadtest.swarm.plan import Send, walk
from loadtest.swarm.records import RequestRecord, write_records
from loadtest.swarm.runner import RunResult, write_outputs
from loadtest.swarm.shard import Shard
from loadtest.swarm.summary import RunData, build_summary, read_csv
from loadtest.swarm.workloads.agents import AgentSwarm
from loadtest.swarm.workloads.agents_config import parse_agents_config

SLO = SloTargets(ttft_s=0.8)
USERS = 9
CONFIG = parse_agents_config(
    {
        "agents": [
            {
                "name": "a",
                "system_prompt_tokens": 800,
                "tool_schema_tokens": 1500,
                "steps_per_turn": {"mean": 4, "max": 6},
            }
        ]
    }
)


def sent_requests() -> list[tuple[float, int, object]]:
    """(send time, user, planned request) of every user's first two visits."""
    workload = AgentSwarm(CONFIG)
    sent = []
    for user in range(USERS):
        t = 0.37 * user
        for _ in range(2):
            for _, action in walk(workload.next_session(user)):
                if isinstance(action, Send):
                    sent.append((t, user, action.request))
                    t += 1.3
    return sorted(sent, key=lambda item: (item[0], item[1]))


def as_records(sent, shard: int) -> tuple[list[RequestRecord], CeilingTracker]:
    tracker = CeilingTracker()
    records = []
    for request_id, (t, user, request) in enumerate(sent):
        prefix = tracker.observe(request_id, request.block_keys, request.sent_prefix_blocks)
        # Measured values depend on the request only, never on which shard sent it.
        ttft = 0.05 + (request.prompt_tokens % 997) * 1e-3
        failed = request.prompt_tokens % 13 == 5
        records.append(
            RequestRecord(
                request_id=request_id,
                shard=shard,
                user=user,
                session=request.session,
                kind=request.kind,
                phase="",
                start_s=t,
                end_s=t + ttft + 0.02 * request.max_tokens,
                e2e_s=ttft + 0.02 * request.max_tokens,
                ttft_s=None if failed else ttft,
                itl_s=None if failed else 0.02,
                max_token_gap_s=None if failed else 0.03,
                output_tokens_per_s=None if failed else 50.0,
                prompt_tokens=None if failed else request.prompt_tokens,
                completion_tokens=None if failed else request.max_tokens,
                cached_tokens=None if failed else request.prompt_tokens // 3,
                expected_prompt_tokens=request.prompt_tokens,
                max_tokens=request.max_tokens,
                blocks=len(request.block_keys),
                block_tokens=request.block_tokens,
                ceiling_tokens=ceiling_tokens(prefix, request.block_tokens, request.prompt_tokens),
                outcome="http_error" if failed else "ok",
                http_status=503 if failed else 200,
                error_type="overloaded" if failed else "",
                error_message="",
                slo_ok=not failed and SLO.request_ok(ttft, 50.0),
            )
        )
    return records, tracker


def run_data(records, span, label, shard="0/1"):
    timeline = [
        {
            "t_s": float(t),
            "users": 3,
            "target_users": 3,
            "subagents": 0,
            "in_flight": 1,
            "generator_cpu": 0.1,
            "loop_lag_s": 0.0,
        }
        for t in range(0, int(span) + 1, 5)
    ]
    meta = {
        "label": label,
        "started_unix": 1_700_000_000.0,
        "time_scale": 1.0,
        "shard": shard,
        "shards": [shard],
        "stop_reason": "duration reached",
        "wall_s": span,
        "load": {"period_s": 10.0},
    }
    return RunData(records=records, span_s=span, slo=SLO, period_s=10.0, meta=meta, timelines=[timeline])


def assert_same(merged, expected, where: str) -> None:
    """Equal, except that floats may differ in the last bits (sums taken in another order)."""
    if isinstance(expected, dict):
        assert merged.keys() == expected.keys(), where
        for key in expected:
            assert_same(merged[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, float):
        assert merged == pytest.approx(expected, rel=1e-12, abs=1e-12), where
    else:
        assert merged == expected, where


def test_shards_partition_users_conversations_and_records():
    for count in (1, 2, 3, 5):
        shards = [Shard(index, count) for index in range(count)]
        users = sorted(shard.global_user(local) for shard in shards for local in range(shard.local_share(23)))
        assert users == list(range(23))
        items = list(range(41))
        picked = [item for shard in shards for item in shard.select(items)]
        assert sorted(picked) == items
        assert sum(shard.local_share(17) for shard in shards) == 17
    assert Shard.parse("2/4") == Shard(2, 4)
    with pytest.raises(ValueError):
        Shard.parse("4/4")


def test_merging_shards_equals_one_process_sending_everything(tmp_path):
    sent = sent_requests()
    span = max(t for t, _, _ in sent) + 10.0
    everything, _ = as_records(sent, shard=0)
    expected = build_summary(run_data(everything, span, "all"))
    directories = []
    local_ceiling = 0
    for index in range(3):
        shard_sent = [item for item in sent if item[1] % 3 == index]
        records, tracker = as_records(shard_sent, shard=index)
        local_ceiling += sum(record.ceiling_tokens for record in records if record.outcome == "ok")
        directory = tmp_path / f"shard-{index}"
        directory.mkdir()
        write_records(directory / "requests.csv", records)
        tracker.save(directory / "first_use.npy")
        write_outputs(directory, run_data(records, span, directory.name, f"{index}/3"), plots=False)
        directories.append(directory)
    # Each shard alone missed the system/tool blocks the others had sent first.
    assert local_ceiling < expected["cache"]["ceiling_tokens"]
    merged = merge_runs(directories, tmp_path / "merged", plots=False)
    for section in (
        "requests",
        "throughput",
        "latency_s",
        "cache",
        "goodput",
        "by_kind",
        "output_tokens_per_s_per_request",
    ):
        assert_same(merged.summary[section], expected[section], section)
    assert merged.summary["shards"] == ["0/3", "1/3", "2/3"]
    assert merged.summary["users"]["max"] == 9
    merged_periods = read_csv(tmp_path / "merged" / "periods.csv")
    assert [row["requests_ok"] for row in merged_periods] == [
        str(sum(1 for r in everything if r.outcome == "ok" and math.floor(r.end_s // 10) == p))
        for p in range(len(merged_periods))
    ]
    reloaded = RunResult.load(tmp_path / "merged")
    assert len(reloaded.records()) == len(everything)
    rows = dict(comparison_rows([reloaded.summary, expected]))
    assert rows["hit rate ceiling"][0] == rows["hit rate ceiling"][1]
    assert "| TTFT p95 |" in comparison_markdown([reloaded, expected])


def test_merge_refuses_duplicate_or_mismatched_shards(tmp_path):
    sent = sent_requests()[:20]
    records, tracker = as_records(sent, 0)
    for name, shard in (("a", "0/2"), ("b", "0/2"), ("c", "1/3")):
        directory = tmp_path / name
        directory.mkdir()
        write_records(directory / "requests.csv", records)
        tracker.save(directory / "first_use.npy")
        write_outputs(directory, run_data(records, 30.0, name, shard), plots=False)
    with pytest.raises(MergeError, match="twice"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    with pytest.raises(MergeError, match="split differently"):
        merge_runs([tmp_path / "a", tmp_path / "c"], tmp_path / "out")
