"""Every panel of every dashboard returns data from a real Prometheus scraping a live system.

All on loopback: three simulated vLLM replicas (`kvgate sim`, KV events on, a DRAM tier), Redis, and
two gateways (`kvgate serve`): one routes with the approximate index shared in Redis over replicas it
is given; the other routes on the replicas' KV events and discovers them through the stand-in for the
Kubernetes API server (`tests.kube_api_server`). A two-shard `kvgate swarm` run, one shard per
gateway, serves its client-side metrics while it runs. Prometheus scrapes all of them every second;
then each panel's PromQL, with the dashboard's variables filled in as Grafana would, is evaluated over
the run through Prometheus's HTTP API and must give at least one finite value.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.process import free_port, wait_for_port
from loadtest.sim.fleet import SimProcess, free_port_range
from scripts.render_dashboards import DASHBOARDS
from tests.discovery.kube_objects import NAMESPACE, SERVICE, endpoint_slice
from tests.kube_api_server import LocalKubeAPIServer, write_kubeconfig
from tests.prometheus_server import finite_values, prometheus

# The load generator comes from the swarm branch: until it is on main there is no load to measure.
pytest.importorskip("loadtest.swarm.cli", reason="kvgate swarm is not on this branch yet")

REPLICAS = 3
TIME_SCALE = "10"
MODEL = "sim-llama3-8b"
RATE_INTERVAL = "4s"
"""Grafana's $__rate_interval for a 1 s scrape interval: four scrapes."""


def grafana_variables(dashboard: dict) -> dict[str, str]:
    """The values Grafana would give the variables: every value of a query variable, else the default."""
    values = {"__rate_interval": RATE_INTERVAL}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]
        elif variable["type"] == "custom":
            values[variable["name"]] = variable["current"]["value"]
    return values


def fill_in(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    assert "$" not in expr, expr
    return expr


@contextlib.contextmanager
def gateway_process(directory: Path, name: str, config: dict) -> Iterator[str]:
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "log_level": "warning", "shutdown_grace_s": 1} | config
    config_path = directory / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = (directory / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=30)
        deadline = time.monotonic() + 30
        while httpx.get(url + "/ready", timeout=2).status_code != 200:
            assert process.poll() is None, (directory / f"{name}.log").read_text()
            assert time.monotonic() < deadline, f"gateway {name} never became ready"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_every_dashboard_panel_returns_data(tmp_path: Path, redis_url: str) -> None:
    events_base, replay_base = free_port_range(REPLICAS), free_port_range(REPLICAS)
    sim = SimProcess(
        replicas=REPLICAS,
        extra_args=[
            "--model", MODEL, "--time-scale", TIME_SCALE, "--dram-gib", "4",
            "--kv-events-port", str(events_base), "--kv-events-replay-port", str(replay_base),
        ],
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        api = stack.enter_context(LocalKubeAPIServer())
        sim.start()
        stack.callback(sim.stop)
        assert sim.port is not None
        for index in range(REPLICAS):
            ports = {
                "http": sim.port + index,
                "kv-events": events_base + index,
                "kv-replay": replay_base + index,
            }
            api.apply(
                "endpointslices", endpoint_slice(f"sim-{index}", [(f"sim-{index}", "127.0.0.1")], ports=ports)
            )

        fast_health = {"interval_s": 0.5, "scrape_interval_s": 0.5}
        approximate = stack.enter_context(
            gateway_process(
                tmp_path,
                "approximate",
                {
                    "replicas": sim.urls,
                    "index": {"backend": "redis", "redis": {"url": redis_url}},
                    "health": fast_health,
                },
            )
        )
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, NAMESPACE)
        precise = stack.enter_context(
            gateway_process(
                tmp_path,
                "precise",
                {
                    "discovery": {
                        "kind": "kubernetes",
                        "namespace": NAMESPACE,
                        "service": SERVICE,
                        "kubeconfig": str(kubeconfig),
                    },
                    "precise": {"enabled": True},
                    "health": fast_health,
                },
            )
        )

        shard_ports = [free_port(), free_port()]
        host_port = [url.removeprefix("http://") for url in (approximate, precise, *sim.urls)]
        jobs = {
            "kvgate": host_port[:2],
            "vllm": host_port[2:],
            "loadtest": [f"127.0.0.1:{port}" for port in shard_ports],
        }
        server = stack.enter_context(prometheus(tmp_path / "prometheus", jobs))
        started = time.time()
        shards = []
        for index, (endpoint, port) in enumerate(zip((approximate, precise), shard_ports, strict=True)):
            command = [
                sys.executable, "-m", "gateway", "swarm", "--endpoint", endpoint, "--model", MODEL,
                "--users", "6", "--duration", "120", "--time-scale", TIME_SCALE, "--think-scale", "0.2",
                "--slo-ttft", "5", "--seed", "3", "--shard", f"{index}/2",
                "--metrics-port", str(port), "--output", str(tmp_path / f"shard-{index}"),
                "--quiet", "--no-plots",
            ]  # fmt: skip
            log = stack.enter_context((tmp_path / f"shard-{index}.log").open("wb"))
            shard = subprocess.Popen(command, stdout=log, stderr=log)
            stack.callback(lambda shard=shard: shard.poll() is None and (shard.kill(), shard.wait()))
            shards.append(shard)
        for index, shard in enumerate(shards):
            assert shard.wait(timeout=90) == 0, (tmp_path / f"shard-{index}.log").read_text()
        time.sleep(1.5)  # a last scrape of the gateways and replicas
        finished = time.time()

        empty = []
        for path in sorted(DASHBOARDS.glob("*.json")):
            dashboard = json.loads(path.read_text())
            values = grafana_variables(dashboard)
            for panel in dashboard["panels"]:
                for target in panel.get("targets", []):
                    expr = fill_in(target["expr"], values)
                    if not finite_values(server.query_range(expr, started, finished)):
                        empty.append(f"{dashboard['title']} / {panel['title']} / {target['refId']}: {expr}")
        assert empty == [], "panels without data:\n" + "\n".join(empty)
