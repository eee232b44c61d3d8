"""The gateway's replica set and index follow Kubernetes discovery, end to end.

`LocalKubeAPIServer` stands in for the Kubernetes API server (there is no cluster on the test
machines); the gateway is the real one (`GatewayService`, and `kvgate serve` as a process) reaching it
through a kubeconfig. The discovered replicas live at loopback addresses on a port where nothing listens:
they join (their health check fails), drain and leave as the EndpointSlices say.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.config import DiscoveryConfig, GatewayConfig
from gateway.service import GatewayService
from loadtest.process import free_port, wait_for_port
from tests.discovery.kube_objects import NAMESPACE, SERVICE, endpoint_slice
from tests.kube_api_server import LocalKubeAPIServer, write_kubeconfig
from tests.waiting import eventually


@pytest.fixture
def api() -> LocalKubeAPIServer:
    with LocalKubeAPIServer() as server:
        yield server


def blocks_held(service: GatewayService, replica: str) -> int:
    return sum(service.index.block_counts().get(replica, {}).values())


def discovered(service: GatewayService) -> set[str]:
    return {replica.name for replica in service.replicas if replica.name.startswith("vllm-")}


async def joined_and_checked(service: GatewayService, names: set[str]) -> None:
    """Wait for `names` to join and fail their first health check (nothing listens at their address).

    Being taken out makes the gateway forget a replica's index entries, in a task of its own; the
    short sleep lets that run before a test records entries it means to follow.
    """
    await eventually(lambda: discovered(service) == names, what=f"replicas {sorted(names)}")
    await eventually(lambda: not any(service.replicas.get(name).healthy for name in names), what="checks")
    await asyncio.sleep(0.05)


async def test_replicas_join_drain_and_leave_with_their_index_entries(
    api: LocalKubeAPIServer, tmp_path: Path
) -> None:
    port = free_port()
    ports = {"http": port}
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, NAMESPACE)
    config = GatewayConfig(
        replicas=[f"http://127.0.0.1:{free_port()}"],
        discovery=DiscoveryConfig(
            kind="kubernetes", namespace=NAMESPACE, service=SERVICE, kubeconfig=str(kubeconfig), models=["m"]
        ),
    )
    pods = [("vllm-0", "127.0.0.2"), ("vllm-1", "127.0.0.3")]
    api.apply("endpointslices", endpoint_slice("vllm-a", pods, ports=ports))
    service = GatewayService(config)
    await service.start()
    try:
        await joined_and_checked(service, {"vllm-0", "vllm-1"})
        assert service.replicas.get("vllm-1").url == f"http://127.0.0.3:{port}"
        assert service.replicas.get("vllm-1").models == {"m"}

        pods.append(("vllm-2", "127.0.0.4"))
        api.apply("endpointslices", endpoint_slice("vllm-a", pods, ports=ports))
        await joined_and_checked(service, {"vllm-0", "vllm-1", "vllm-2"})
        for name in ("vllm-0", "vllm-1", "vllm-2"):
            service.index.record("m", name, [11, 12, 13])
        assert [blocks_held(service, name) for name in ("vllm-0", "vllm-1", "vllm-2")] == [3, 3, 3]

        api.apply(
            "endpointslices", endpoint_slice("vllm-a", pods, ports=ports, terminating=frozenset({"vllm-1"}))
        )
        await eventually(lambda: service.replicas.get("vllm-1").draining, what="vllm-1 draining")
        assert not service.replicas.get("vllm-1").routable
        assert blocks_held(service, "vllm-1") == 3, "a draining replica keeps its cache"

        del pods[1]
        api.apply("endpointslices", endpoint_slice("vllm-a", pods, ports=ports))
        await eventually(lambda: discovered(service) == {"vllm-0", "vllm-2"}, what="scale-down")
        assert "vllm-1" not in service.index.block_counts()
        matches = await service.index.match("m", [11, 12, 13], ["vllm-0", "vllm-1", "vllm-2"])
        assert matches.get("vllm-1") is None or matches["vllm-1"].blocks == 0
        assert matches["vllm-0"].blocks == 3

        pods[1] = ("vllm-2", "127.0.0.5")  # a StatefulSet Pod recreated under its name, at a new address
        api.apply("endpointslices", endpoint_slice("vllm-a", pods, ports=ports))
        await eventually(
            lambda: service.replicas.get("vllm-2").url == f"http://127.0.0.5:{port}", what="the move"
        )
        await joined_and_checked(service, {"vllm-0", "vllm-2"})
        assert blocks_held(service, "vllm-2") == 0, "a new Pod starts with an empty cache"
        assert blocks_held(service, "vllm-0") == 3

        api.delete("endpointslices", "vllm-a", NAMESPACE)
        await eventually(lambda: not discovered(service), what="the Service emptied")
        assert len(service.replicas) == 1, "configured replicas stay"
    finally:
        await service.stop()


def test_kvgate_serve_with_kubernetes_discovery_and_no_static_replicas(
    api: LocalKubeAPIServer, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, NAMESPACE)
    replica_port = free_port()
    api.apply(
        "endpointslices", endpoint_slice("vllm-a", [("vllm-0", "127.0.0.2")], ports={"http": replica_port})
    )
    gateway_port = free_port()
    settings = {
        "discovery.kind": "kubernetes",
        "discovery.namespace": NAMESPACE,
        "discovery.service": SERVICE,
        "discovery.kubeconfig": str(kubeconfig),
        "discovery.models": "[m]",
    }
    command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(gateway_port)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(gateway_port, timeout=20)
        url = f"http://127.0.0.1:{gateway_port}"
        models: list[dict] = []
        for _ in range(200):
            models = httpx.get(url + "/v1/models").json()["data"]
            if models:
                break
            time.sleep(0.05)
        assert [card["id"] for card in models] == ["m"]
        metrics = httpx.get(url + "/metrics").text
        assert 'kvgate_replica_healthy{replica="vllm-0"} 0.0' in metrics
        assert httpx.get(url + "/ready").status_code == 503, "its one replica does not answer"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal once done
    assert "Application shutdown complete" in output
    assert "listed 1 endpointslices" in output


def test_kvgate_serve_still_needs_replicas_without_discovery() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "no replicas configured" in result.stderr
