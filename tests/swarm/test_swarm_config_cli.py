"""Flags -> SwarmConfig -> workload and load settings; recorded traces; the metrics endpoint."""

import argparse
import urllib.request

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.cli import main as kvgate
from loadtest.analyze.ceilings import ceilings
from loadtest.analyze.events import RECORDED_TRACE_NAME, load_uses
from loadtest.swarm.ceiling import CeilingTracker
from loadtest.swarm.cli import add_arguments, config_from_args
from loadtest.swarm.config import SwarmConfig, build_load_settings, build_workload
from loadtest.swarm.driver import LiveState
from loadtest.swarm.plan import Send, walk
from loadtest.swarm.prometheus import SwarmMetrics
from loadtest.swarm.trace_record import TraceRecorder
from loadtest.swarm.workloads.agents import AgentSwarm
from loadtest.swarm.workloads.agents_config import load_agents_config
from loadtest.swarm.workloads.replay import MooncakeReplay
from tests.swarm.swarm_helpers import MOONCAKE_CONVERSATION, needs_traces
from tests.swarm.test_swarm_stats import record


def parse(*flags: str) -> SwarmConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(flags)))


def test_flags_set_their_config_fields_and_others_keep_defaults():
    config = parse(
        "--endpoint", "http://127.0.0.1:9",
        "--mode", "adaptive",
        "--users", "6",
        "--slo-ttft", "1.5",
        "--slo-ttft-metric", "max",
        "--assessment-period", "10",
        "--hit-rates", "0,0.5,1",
        "--time-scale", "20",
        "--no-subagents",
        "--no-plots",
        "--quiet",
    )  # fmt: skip
    assert config.endpoint == "http://127.0.0.1:9" and config.mode == "adaptive" and config.users == 6
    assert config.slo_ttft_s == 1.5 and config.slo_ttft_metric == "max" and config.period_s == 10.0
    assert config.hit_rates == [0.0, 0.5, 1.0] and config.time_scale == 20.0
    assert config.include_subagents is False and config.plots is False and config.quiet is True
    assert config.duration_s == SwarmConfig().duration_s and config.max_requests == SwarmConfig().max_requests


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"workload": "replay"}, "needs trace files"),
        ({"mode": "adaptive"}, "needs slo_ttft_s"),
        ({"mode": "rate"}, "needs rate"),
        ({"shard": "3/3"}, "shard"),
        ({"workload": "agents", "api": "completions"}, "chat API"),
        ({"duration_s": 0}, "duration_s"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_inconsistent_configs_are_refused_with_the_field_named(fields, message):
    with pytest.raises(ValidationError, match=message):
        SwarmConfig(**fields)


def test_cli_reports_config_errors_without_a_traceback(capsys):
    assert kvgate(["swarm", "--mode", "adaptive", "--quiet"]) == 2
    assert "needs slo_ttft_s" in capsys.readouterr().err


def test_adaptive_shards_split_the_user_counts():
    config = SwarmConfig(mode="adaptive", slo_ttft_s=1.0, users=8, max_users=100, shard="1/4")
    settings = build_load_settings(config, build_workload(config))
    assert settings.adaptive.start_users == 2 and settings.adaptive.max_users == 25


@needs_traces
def test_mooncake_replays_on_its_recorded_schedule_by_default():
    config = SwarmConfig(workload="replay", trace=[str(MOONCAKE_CONVERSATION)], speedup=10.0)
    workload = build_workload(config)
    assert isinstance(workload, MooncakeReplay)
    assert build_load_settings(config, workload).mode == "trace"
    offsets = [offset for offset, _ in zip(range(50), workload.schedule(), strict=False)]
    assert offsets == sorted(offsets)
    with pytest.raises(ValueError, match="no recorded schedule"):
        build_load_settings(SwarmConfig(mode="trace"), build_workload(SwarmConfig()))


def test_a_recorded_run_trace_gives_the_ceiling_the_run_tracked(tmp_path):
    workload = AgentSwarm(load_agents_config())
    tracker = CeilingTracker()
    recorder = TraceRecorder(tmp_path / RECORDED_TRACE_NAME)
    (tmp_path / "summary.json").write_text("{}")
    seen = total = 0
    t = 0.0
    for user in range(4):
        for _, action in walk(workload.next_session(user)):
            if isinstance(action, Send):
                request = action.request
                seen += tracker.observe(total, request.block_keys, request.sent_prefix_blocks)
                recorder.write(
                    t,
                    request.block_keys,
                    request.block_tokens,
                    request.prompt_tokens,
                    request.max_tokens,
                    request.session,
                    request.kind,
                )
                total += 1
                t += 0.5
    recorder.close()
    trace, uses = load_uses([tmp_path])
    assert trace.format == "mooncake" and uses.requests == total
    (infinite,) = ceilings(uses, (np.inf,))
    assert infinite.hit_blocks == seen  # chained keys: per-block and prefix counts agree
    assert set(uses.tokens.tolist()) == {16}


def test_metrics_are_served_with_prefixed_names_units_and_totals():
    live = LiveState(users=12, in_flight=3)
    metrics = SwarmMetrics(live)
    metrics.observe(record(0))
    metrics.observe(record(1, outcome="timeout", ttft_s=None, slo_ok=False))
    port = metrics.serve("127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.stop()
    assert "kvgate_loadtest_users 12.0" in text
    assert 'kvgate_loadtest_requests_total{outcome="ok"} 1.0' in text
    assert 'kvgate_loadtest_requests_total{outcome="timeout"} 1.0' in text
    assert (
        "kvgate_loadtest_ttft_seconds_bucket" in text and "kvgate_loadtest_goodput_requests_total 1.0" in text
    )
    assert (
        "kvgate_loadtest_hit_rate_ratio 0.6" in text and "kvgate_loadtest_hit_rate_ceiling_ratio 0.8" in text
    )
