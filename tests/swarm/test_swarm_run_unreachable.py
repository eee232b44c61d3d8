"""Whole runs against a port nobody listens on: every bound holds and every output is written.

Nothing stands in for an endpoint here: the real client connects to a loopback port that is bound
but not listening, so each request is refused at once with a connection error, which is enough to drive
the load modes, the bounds, the controller and the output writers end to end.
"""

import socket
import time

import pytest
from rich.console import Console

from gateway.cli import main as kvgate
from loadtest.swarm.client import StreamingClient
from loadtest.swarm.clock import WorkloadClock
from loadtest.swarm.config import SwarmConfig
from loadtest.swarm.driver import LoadSettings, SwarmDriver
from loadtest.swarm.progress import ProgressDisplay
from loadtest.swarm.runner import RunResult, run_swarm
from loadtest.swarm.shard import Shard
from loadtest.swarm.summary import read_csv
from loadtest.swarm.workloads.agents import AgentSwarm
from loadtest.swarm.workloads.agents_config import load_agents_config
from tests.swarm.test_swarm_stats import record


@pytest.fixture
def refusing_endpoint():
    """A loopback port that is bound (so no other process can take it) but not listening: every
    connection is refused at once."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


@pytest.fixture
def config(tmp_path, refusing_endpoint):
    def make(**fields) -> SwarmConfig:
        defaults = dict(
            endpoint=refusing_endpoint,
            model="any",
            request_timeout_s=10.0,
            start_spread_s=0.0,
            output_dir=str(tmp_path / "run"),
            plots=False,
        )
        return SwarmConfig(**{**defaults, **fields})

    return make


async def test_the_request_budget_is_exact_and_every_output_is_written(tmp_path, config):
    result = await run_swarm(
        config(users=3, max_requests=25, duration_s=600, time_scale=20.0, plots=True, record_trace=True)
    )
    summary = result.summary
    assert summary["stop_reason"] == "request budget spent"
    assert summary["requests"]["failed"] == 25 and summary["requests"]["errors_by_kind"] == {
        "connection_error": 25
    }
    assert summary["requests_sent"] == 25 and summary["time_scale"] == 20.0
    names = {path.name for path in (tmp_path / "run").iterdir()}
    assert {
        "summary.json",
        "requests.csv",
        "periods.csv",
        "timeline.csv",
        "first_use.npy",
        "config.json",
        "trace.jsonl.gz",
        "ttft_over_time.png",
        "ttft_cdf.png",
        "users_over_time.png",
        "hit_rate.png",
    } <= names
    reloaded = RunResult.load(tmp_path / "run")
    assert len(reloaded.records()) == 25 and reloaded.summary == summary
    assert "api_key" not in (tmp_path / "run" / "config.json").read_text()


async def test_the_duration_bound_stops_a_run_that_has_budget_left(tmp_path, config):
    began = time.perf_counter()
    result = await run_swarm(config(users=2, duration_s=0.6, max_requests=10**6))
    assert result.summary["stop_reason"] == "duration reached"
    assert result.summary["span_s"] >= 0.55 and time.perf_counter() - began < 10
    assert result.summary["users"]["max"] == 2


async def test_open_loop_rate_sends_at_the_asked_rate(tmp_path, config):
    result = await run_swarm(
        config(mode="rate", rate=5.0, arrival="constant", duration_s=20.0, time_scale=25.0)
    )
    sent = result.summary["requests_sent"]
    assert 80 <= sent <= 5 * 20 + 1


async def test_adaptive_mode_backs_off_when_everything_fails(tmp_path, config):
    result = await run_swarm(
        config(
            mode="adaptive",
            users=8,
            slo_ttft_s=1.0,
            period_s=10.0,
            duration_s=60.0,
            time_scale=50.0,
            adaptive_settle_periods=0,
        )
    )
    control = read_csv(tmp_path / "run" / "control.csv")
    assert control and all(step["verdict"] == "violation" for step in control)
    assert [int(step["next_users"]) for step in control[:3]] == [4, 2, 1]
    assert result.summary["adaptive"]["users"] == 1


@pytest.mark.parametrize("shard", ["0/2", "1/2"])
async def test_a_shard_runs_its_share_of_the_users(tmp_path, config, shard):
    result = await run_swarm(config(users=5, duration_s=0.4, shard=shard))
    users = {record.user for record in result.records()}
    assert users == ({0, 2, 4} if shard == "0/2" else {1, 3})


def test_the_cli_prints_the_summary_and_fails_when_nothing_succeeded(tmp_path, refusing_endpoint, capsys):
    status = kvgate(
        ["swarm", "--endpoint", refusing_endpoint, "--model", "m", "--users", "2", "--duration", "0.4",
         "--start-spread", "0", "--output", str(tmp_path / "cli"), "--no-plots", "--quiet"]
    )  # fmt: skip
    assert status == 1
    out = capsys.readouterr().out
    assert "connection_error" in out and "stopped" in out and str(tmp_path / "cli") in out


def test_the_live_display_renders_what_the_driver_knows():
    clock = WorkloadClock()
    driver = SwarmDriver(
        LoadSettings(), AgentSwarm(load_agents_config()), StreamingClient("http://x"), clock, Shard()
    )
    for index in range(2500):
        driver.live.recent.append(record(index, end_s=clock.now()))
    driver.live.users, driver.live.last_decision = 7, "ok: inside the SLO -> 10 users"
    console = Console(record=True, width=120)
    console.print(ProgressDisplay(driver, "test").render())
    text = console.export_text()
    assert (
        "7 running" in text and "measured 60.0%" in text and "ceiling 80.0%" in text and "-> 10 users" in text
    )
