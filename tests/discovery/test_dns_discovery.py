"""DNS discovery: a headless Service's name resolved every interval, each address a replica.

The system resolver is exercised with `localhost` (the one name every test machine resolves); the
changes a headless Service goes through as Pods come and go are given by a resolver that answers from
a table the test edits, the one seam `DnsDiscovery` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from gateway.config import ConfigError, DiscoveryConfig, GatewayConfig, load_config
from gateway.discovery import make_discovery
from gateway.discovery.dns import DnsDiscovery, resolve_all
from gateway.discovery.kubernetes import KubernetesDiscovery
from gateway.service import GatewayService
from loadtest.process import free_port
from tests.waiting import eventually


def dns_settings(**changes) -> DiscoveryConfig:
    fields = {"kind": "dns", "dns_name": "vllm-headless", "port": 8000, "interval_s": 0.02}
    return DiscoveryConfig(**(fields | changes))


class Table:
    """Answers for the name as a headless Service's records would be: edited by the test."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses: list[str] | socket.gaierror = addresses
        self.asked = 0

    async def __call__(self, name: str) -> list[str]:
        self.asked += 1
        assert name == "vllm-headless"
        if isinstance(self.addresses, socket.gaierror):
            raise self.addresses
        return list(self.addresses)


async def test_the_system_resolver_finds_localhost() -> None:
    assert "127.0.0.1" in await resolve_all("localhost")


async def test_addresses_come_and_go_with_the_records() -> None:
    table = Table(["127.0.0.3", "127.0.0.2"])
    published: list[list] = []

    async def publish(endpoints) -> None:
        published.append(endpoints)

    discovery = DnsDiscovery(dns_settings(kv_events_port=5557, kv_events_replay_port=5558), resolve=table)
    task = asyncio.create_task(discovery.run(publish))
    try:
        await eventually(lambda: published, what="the first list")
        first = published[-1]
        assert [e.name for e in first] == ["127.0.0.2:8000", "127.0.0.3:8000"]
        assert first[0].url == "http://127.0.0.2:8000"
        assert (first[0].kv_events, first[0].kv_events_replay) == (
            "tcp://127.0.0.2:5557",
            "tcp://127.0.0.2:5558",
        )

        table.addresses = ["127.0.0.2", "127.0.0.3", "::1"]
        await eventually(lambda: len(published[-1]) == 3, what="scale-up")
        assert published[-1][0].url == "http://127.0.0.2:8000"
        assert published[-1][2].url == "http://[::1]:8000"

        table.addresses = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        asked = table.asked
        await eventually(lambda: table.asked > asked + 3, what="retries")
        assert len(published[-1]) == 3, "a resolver hiccup keeps the last replicas"

        table.addresses = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        await eventually(lambda: published[-1] == [], what="no records, no replicas")
        publishes = len(published)
        table.addresses = []
        asked = table.asked
        await eventually(lambda: table.asked > asked + 3, what="more rounds")
        assert len(published) == publishes, "an unchanged answer publishes nothing"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_gateway_adds_what_localhost_resolves_to() -> None:
    port = free_port()
    config = GatewayConfig(
        discovery=DiscoveryConfig(kind="dns", dns_name="localhost", port=port, interval_s=0.05, models=["m"])
    )
    service = GatewayService(config)
    await service.start()
    try:
        await eventually(lambda: service.replicas.get(f"127.0.0.1:{port}"), what="the replica")
        assert service.replicas.get(f"127.0.0.1:{port}").url == f"http://127.0.0.1:{port}"
    finally:
        await service.stop()


def test_make_discovery_follows_the_kind() -> None:
    assert make_discovery(DiscoveryConfig()) is None
    assert isinstance(make_discovery(dns_settings()), DnsDiscovery)
    kubernetes = make_discovery(DiscoveryConfig(kind="kubernetes", label_selector="app=vllm"))
    assert isinstance(kubernetes, KubernetesDiscovery) and kubernetes.resource == "pods"


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"kind": "dns", "dns_name": "x"}, "discovery.port"),
        ({"kind": "kubernetes"}, "discovery.service or discovery.label_selector"),
        ({"kind": "kubernetes", "service": "a", "label_selector": "b=c"}, "not both"),
    ],
)
def test_incomplete_discovery_settings_are_refused(fields: dict, complaint: str) -> None:
    overrides = {f"discovery.{key}": value for key, value in fields.items()}
    with pytest.raises(ConfigError, match=complaint):
        load_config(None, overrides, environ={})
