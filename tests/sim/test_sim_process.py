"""`kvgate sim` as a process: the subprocess helper, CLI flags, and the Quickstart's sample request."""

import subprocess
import sys

import httpx
import pytest

from loadtest.sim import SimProcess


def test_sim_process_serves_every_replica_and_stops_cleanly():
    extra = ["--time-scale", "100", "--model", "tiny", "--hbm-blocks", "600", "--max-model-len", "4096"]
    sim = SimProcess(replicas=3, extra_args=extra)
    with sim:
        assert len(sim.urls) == 3
        for url in sim.urls:
            assert httpx.get(url + "/health").status_code == 200
        models = httpx.get(sim.urls[2] + "/v1/models").json()
        assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 4096
        reply = httpx.post(
            sim.urls[1] + "/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 3}
        ).json()
        assert reply["usage"]["completion_tokens"] == 3
        metrics = httpx.get(sim.urls[1] + "/metrics").text
        assert 'num_gpu_blocks="600"' in metrics
    assert sim.process is None


def test_sim_process_reports_a_refused_configuration():
    sim = SimProcess(replicas=1, extra_args=["--hbm-blocks", "10"], startup_timeout=20)
    with pytest.raises(RuntimeError, match="max_model_len"):
        sim.start()


def test_sample_request_prints_both_results_and_exits_zero():
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "sim", "--replicas", "2", "--port", "0", "--sample-request"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    first = next(line for line in lines if line.strip().startswith("first"))
    second = next(line for line in lines if line.strip().startswith("second"))
    assert "cached_tokens 0," in first
    assert "cached_tokens 0," not in second and "cached_tokens" in second
