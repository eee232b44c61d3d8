"""Kubernetes discovery with the real `kubernetes` client against a local stand-in for the API server.

There is no cluster on the test machines: `tests.kube_api_server.LocalKubeAPIServer` stands in for the
API server, speaking its list/watch protocol (lists with resourceVersions, chunked watch streams,
410 Gone for compacted versions), and the client reaches it through a kubeconfig, as it would a
cluster. The replicas' addresses are loopback ones; these tests only publish them, never connect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.config import DiscoveryConfig
from gateway.discovery.base import Endpoint
from gateway.discovery.kubernetes import Backoff, KubernetesDiscovery
from tests.discovery.kube_objects import NAMESPACE, SERVICE, endpoint_slice, pod
from tests.kube_api_server import LocalKubeAPIServer, write_kubeconfig
from tests.waiting import eventually


class Published:
    """What a discovery source published, in order; tests wait for the latest list to look a way."""

    def __init__(self) -> None:
        self.lists: list[list[Endpoint]] = []

    async def __call__(self, endpoints: list[Endpoint]) -> None:
        self.lists.append(endpoints)

    @property
    def latest(self) -> dict[str, Endpoint]:
        return {endpoint.name: endpoint for endpoint in self.lists[-1]} if self.lists else {}

    async def until(self, predicate: Callable[[dict[str, Endpoint]], bool]) -> None:
        await eventually(lambda: self.lists and predicate(self.latest), what="the published endpoints")


@pytest.fixture
def api() -> LocalKubeAPIServer:
    with LocalKubeAPIServer() as server:
        yield server


@pytest.fixture
def kubeconfig(api: LocalKubeAPIServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", api.url, NAMESPACE)


def settings(kubeconfig: Path, **changes) -> DiscoveryConfig:
    fields = {"kind": "kubernetes", "namespace": NAMESPACE, "service": SERVICE, "kubeconfig": str(kubeconfig)}
    return DiscoveryConfig(**(fields | changes))


@contextlib.asynccontextmanager
async def running(discovery: KubernetesDiscovery, published: Published) -> AsyncIterator[None]:
    task = asyncio.create_task(discovery.run(published))
    try:
        yield
        assert not task.done(), "discovery ended by itself"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)


def quick(kubeconfig: Path, **changes) -> KubernetesDiscovery:
    return KubernetesDiscovery(settings(kubeconfig, **changes), backoff=Backoff(0.05, 0.2))


async def test_slices_scale_up_and_down(api: LocalKubeAPIServer, kubeconfig: Path) -> None:
    api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-0", "127.0.0.1"), ("vllm-1", "127.0.0.2")]))
    api.apply("endpointslices", endpoint_slice("other", [("x-0", "127.0.9.9")], service="other"))
    published = Published()
    async with running(quick(kubeconfig), published):
        await published.until(lambda now: set(now) == {"vllm-0", "vllm-1"})
        first = published.latest["vllm-0"]
        assert first.url == "http://127.0.0.1:8000"
        assert first.kv_events == "tcp://127.0.0.1:5557"
        assert first.kv_events_replay == "tcp://127.0.0.1:5558"
        assert first.ready and not first.terminating

        pods = [("vllm-0", "127.0.0.1"), ("vllm-1", "127.0.0.2"), ("vllm-2", "127.0.0.3")]
        api.apply("endpointslices", endpoint_slice("vllm-a", pods))
        api.apply("endpointslices", endpoint_slice("vllm-b", [("vllm-3", "127.0.0.4")]))
        await published.until(lambda now: set(now) == {"vllm-0", "vllm-1", "vllm-2", "vllm-3"})

        api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-0", "127.0.0.1")]))
        api.delete("endpointslices", "vllm-b", NAMESPACE)
        await published.until(lambda now: set(now) == {"vllm-0"})
    assert api.list_count("endpointslices") == 1, "a healthy watch needs no second list"
    assert all(r.query["labelSelector"] == f"kubernetes.io/service-name={SERVICE}" for r in api.requests)


async def test_terminating_and_unready_endpoints_are_published_as_such(
    api: LocalKubeAPIServer, kubeconfig: Path
) -> None:
    pods = [("vllm-0", "127.0.0.1"), ("vllm-1", "127.0.0.2"), ("vllm-2", "127.0.0.3")]
    api.apply("endpointslices", endpoint_slice("vllm-a", pods))
    published = Published()
    async with running(quick(kubeconfig), published):
        await published.until(lambda now: len(now) == 3)
        api.apply(
            "endpointslices",
            endpoint_slice("vllm-a", pods, terminating=frozenset({"vllm-1"}), unready=frozenset({"vllm-2"})),
        )
        await published.until(lambda now: now["vllm-1"].terminating)
        assert not published.latest["vllm-1"].ready
        assert not published.latest["vllm-2"].ready and not published.latest["vllm-2"].terminating
        assert published.latest["vllm-0"].ready


async def test_port_by_number_and_by_name(api: LocalKubeAPIServer, kubeconfig: Path) -> None:
    api.apply(
        "endpointslices",
        endpoint_slice("vllm-a", [("vllm-0", "127.0.0.1")], ports={"api": 9000, "events": 7000}),
    )
    published = Published()
    discovery = quick(kubeconfig, port_name="api", kv_events_port_name="events")
    async with running(discovery, published):
        await published.until(lambda now: "vllm-0" in now)
    only = published.latest["vllm-0"]
    assert (only.url, only.kv_events, only.kv_events_replay) == (
        "http://127.0.0.1:9000",
        "tcp://127.0.0.1:7000",
        None,
    )

    published = Published()
    async with running(quick(kubeconfig, port=8123), published):
        await published.until(lambda now: "vllm-0" in now)
    assert published.latest["vllm-0"].url == "http://127.0.0.1:8123"


async def test_dual_stack_slices_give_one_endpoint_per_pod(api: LocalKubeAPIServer, kubeconfig: Path) -> None:
    api.apply("endpointslices", endpoint_slice("v6", [("vllm-0", "::1")], address_type="IPv6"))
    api.apply("endpointslices", endpoint_slice("v4", [("vllm-0", "127.0.0.1")]))
    api.apply("endpointslices", endpoint_slice("v6b", [("vllm-1", "::1")], address_type="IPv6"))
    published = Published()
    async with running(quick(kubeconfig), published):
        await published.until(lambda now: set(now) == {"vllm-0", "vllm-1"})
    assert published.latest["vllm-0"].url == "http://127.0.0.1:8000"
    assert published.latest["vllm-1"].url == "http://[::1]:8000"
    assert published.latest["vllm-1"].kv_events == "tcp://[::1]:5557"


async def test_pods_by_label_selector(api: LocalKubeAPIServer, kubeconfig: Path) -> None:
    api.apply("pods", pod("vllm-0", "127.0.0.1"))
    api.apply("pods", pod("vllm-1", "127.0.0.2", annotations={"kvgate.io/kv-events-port": "6000"}))
    api.apply("pods", pod("vllm-2", None, ready=False))
    api.apply("pods", pod("vllm-3", "127.0.0.4", ready=False))
    api.apply("pods", pod("done-0", "127.0.0.5", phase="Succeeded"))
    api.apply("pods", pod("web-0", "127.0.0.6", labels={"app": "web"}))
    published = Published()
    discovery = quick(kubeconfig, service=None, label_selector="app=vllm")
    async with running(discovery, published):
        await published.until(lambda now: set(now) == {"vllm-0", "vllm-1", "vllm-3"})
        now = published.latest
        assert now["vllm-0"].kv_events == "tcp://127.0.0.1:5557" and now["vllm-0"].ready
        assert now["vllm-1"].kv_events == "tcp://127.0.0.2:6000", "the annotation wins over the port name"
        assert not now["vllm-3"].ready

        api.apply("pods", pod("vllm-0", "127.0.0.1", deleting=True))
        api.apply("pods", pod("vllm-2", "127.0.0.3"))
        await published.until(lambda now: now["vllm-0"].terminating and "vllm-2" in now)
        api.delete("pods", "vllm-0", NAMESPACE)
        await published.until(lambda now: "vllm-0" not in now)
    assert all(r.query["labelSelector"] == "app=vllm" for r in api.requests if r.resource == "pods")


async def test_a_cleanly_closed_watch_is_opened_again_from_the_last_version(
    api: LocalKubeAPIServer, kubeconfig: Path
) -> None:
    api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-0", "127.0.0.1")]))
    published = Published()
    async with running(quick(kubeconfig), published):
        await published.until(lambda now: "vllm-0" in now)
        last_version = api.apply("endpointslices", endpoint_slice("vllm-b", [("vllm-1", "127.0.0.2")]))
        await published.until(lambda now: "vllm-1" in now)
        api.drop_watches()
        await eventually(lambda: api.watch_count("endpointslices") >= 2)
        api.apply("endpointslices", endpoint_slice("vllm-c", [("vllm-2", "127.0.0.3")]))
        await published.until(lambda now: "vllm-2" in now)
    rewatch = [r for r in api.requests if r.watch][1]
    assert int(rewatch.query["resourceVersion"]) >= last_version
    assert api.list_count("endpointslices") == 1


async def test_a_broken_watch_lists_again_and_catches_up(api: LocalKubeAPIServer, kubeconfig: Path) -> None:
    api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-0", "127.0.0.1"), ("vllm-1", "127.0.0.2")]))
    published = Published()
    async with running(quick(kubeconfig), published):
        await published.until(lambda now: len(now) == 2)
        await eventually(lambda: api.streaming_watches("endpointslices") == 1)
        api.hold_watches()
        api.drop_watches(abrupt=True)
        api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-1", "127.0.0.2")]))
        await eventually(lambda: api.list_count("endpointslices") == 2)
        await published.until(lambda now: set(now) == {"vllm-1"})
        api.release_watches()
        api.apply(
            "endpointslices", endpoint_slice("vllm-a", [("vllm-1", "127.0.0.2"), ("vllm-5", "127.0.0.6")])
        )
        await published.until(lambda now: set(now) == {"vllm-1", "vllm-5"})


@pytest.mark.parametrize("gone_as_status", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_lists_again(
    api: LocalKubeAPIServer, kubeconfig: Path, gone_as_status: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kvgate.discovery")
    api.gone_as_status = gone_as_status
    api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-0", "127.0.0.1")]))
    published = Published()
    async with running(quick(kubeconfig), published):
        await published.until(lambda now: "vllm-0" in now)
        await eventually(lambda: api.streaming_watches("endpointslices") == 1)
        api.hold_watches()
        api.drop_watches()
        api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-7", "127.0.0.8")]))
        api.compact()
        api.release_watches()
        await published.until(lambda now: set(now) == {"vllm-7"})
        assert api.list_count("endpointslices") == 2
        expired = [r for r in api.requests if r.watch][1]
        assert gone_as_status == (expired.status == 410)
        await eventually(lambda: api.watch_count("endpointslices") >= 3)
        api.apply(
            "endpointslices", endpoint_slice("vllm-a", [("vllm-7", "127.0.0.8"), ("vllm-8", "127.0.0.9")])
        )
        await published.until(lambda now: set(now) == {"vllm-7", "vllm-8"})
    assert any("410 Gone" in record.message for record in caplog.records)
    assert not [record for record in caplog.records if record.levelname == "WARNING"], "410 is no failure"


async def test_survives_an_api_server_restart(api: LocalKubeAPIServer, kubeconfig: Path) -> None:
    api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-0", "127.0.0.1"), ("vllm-1", "127.0.0.2")]))
    published = Published()
    async with running(quick(kubeconfig), published):
        await published.until(lambda now: len(now) == 2)
        port = api.port
        api.stop()
        lists_before = len(published.lists)
        api.apply("endpointslices", endpoint_slice("vllm-a", [("vllm-1", "127.0.0.2")]))
        await asyncio.sleep(0.5)  # retries against a closed port
        assert len(published.lists) == lists_before, "an unreachable API must not empty the replica set"
        api.start(port)
        await published.until(lambda now: set(now) == {"vllm-1"})


async def test_unauthorized_is_retried_without_ending(api: LocalKubeAPIServer, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    write_kubeconfig(config, api.url, NAMESPACE)
    config.write_text(config.read_text().replace("kvgate-test-token", "wrong-token"))
    published = Published()
    async with running(quick(config), published):
        await eventually(lambda: sum(r.status == 401 for r in api.requests) >= 2)
    assert published.lists == []
