"""Endpoints from Kubernetes objects as the API serves them (JSON dicts): EndpointSlices and Pods.

A replica's HTTP port is `discovery.port` when set, else the port named `discovery.port_name`, else the
only port there is besides the KV events ones. Its KV events publisher and replay ports are the ports named
`kv_events_port_name` and `kv_events_replay_port_name`; a Pod may name them by number instead in the
annotations `kvgate.io/kv-events-port` and `kvgate.io/kv-replay-port`, which win. What cannot be made
an endpoint is told in `problems`, for the caller to log once rather than on every change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.config import DiscoveryConfig
from gateway.discovery.base import Endpoint

KV_EVENTS_PORT_ANNOTATION = "kvgate.io/kv-events-port"
KV_REPLAY_PORT_ANNOTATION = "kvgate.io/kv-replay-port"


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoint(
    host: str,
    name: str,
    ports: Mapping[str, int],
    settings: DiscoveryConfig,
    *,
    ready: bool,
    terminating: bool,
    annotations: Mapping[str, str] | None = None,
    problems: list[str],
) -> Endpoint | None:
    events_names = (settings.kv_events_port_name, settings.kv_events_replay_port_name)
    others = [number for port_name, number in ports.items() if port_name not in events_names]
    http_port = settings.port or ports.get(settings.port_name) or (others[0] if len(others) == 1 else None)
    if http_port is None:
        problems.append(f"replica {name} has no port named {settings.port_name!r} (set discovery.port)")
        return None
    annotations = annotations or {}
    events_port = _annotated_port(annotations, KV_EVENTS_PORT_ANNOTATION, name, problems) or ports.get(
        settings.kv_events_port_name
    )
    replay_port = _annotated_port(annotations, KV_REPLAY_PORT_ANNOTATION, name, problems) or ports.get(
        settings.kv_events_replay_port_name
    )
    return Endpoint(
        url=f"http://{join_host_port(host, http_port)}",
        name=name,
        ready=ready,
        terminating=terminating,
        kv_events=f"tcp://{join_host_port(host, events_port)}" if events_port else None,
        kv_events_replay=f"tcp://{join_host_port(host, replay_port)}" if replay_port else None,
    )


def _annotated_port(annotations: Mapping[str, str], key: str, name: str, problems: list[str]) -> int | None:
    value = annotations.get(key)
    if value is None:
        return None
    if value.strip().isdigit() and 0 < int(value) < 65536:
        return int(value)
    problems.append(f"replica {name}: annotation {key}={value!r} is not a port number")
    return None


def _named_ports(entries: Iterable[Mapping[str, Any]] | None, number_key: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    for entry in entries or ():
        number = entry.get(number_key)
        if isinstance(number, int) and (entry.get("protocol") or "TCP") == "TCP":
            ports[entry.get("name") or ""] = number
    return ports


def endpoints_from_slices(
    slices: Iterable[Mapping[str, Any]], settings: DiscoveryConfig, problems: list[str]
) -> list[Endpoint]:
    """One endpoint per backing Pod (or address) over all of a Service's EndpointSlices.

    A dual-stack Service has an IPv4 and an IPv6 slice listing the same Pods: IPv4 wins. A `ready`
    condition left unset means ready; `terminating` left unset means not terminating.
    """
    order = {"IPv4": 0, "IPv6": 1, "FQDN": 2}
    found: dict[str, Endpoint] = {}
    for endpoint_slice in sorted(slices, key=lambda s: order.get(s.get("addressType", ""), 3)):
        ports = _named_ports(endpoint_slice.get("ports"), "port")
        for entry in endpoint_slice.get("endpoints") or ():
            addresses = entry.get("addresses") or []
            if not addresses:
                continue
            target = entry.get("targetRef") or {}
            name = target.get("name") if target.get("kind", "Pod") == "Pod" else None
            name = name or addresses[0]
            if name in found:
                continue
            conditions = entry.get("conditions") or {}
            endpoint = _endpoint(
                addresses[0],
                name,
                ports,
                settings,
                ready=conditions.get("ready") is not False,
                terminating=conditions.get("terminating") is True,
                problems=problems,
            )
            if endpoint is not None:
                found[name] = endpoint
    return [found[name] for name in sorted(found)]


def endpoints_from_pods(
    pods: Iterable[Mapping[str, Any]], settings: DiscoveryConfig, problems: list[str]
) -> list[Endpoint]:
    """One endpoint per Pod that has an IP and has not finished; a deletion timestamp means draining."""
    found: list[Endpoint] = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        host = status.get("podIP")
        if not host or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ports: dict[str, int] = {}
        for container in (pod.get("spec") or {}).get("containers") or ():
            ports.update(_named_ports(container.get("ports"), "containerPort"))
        ready = status.get("phase") == "Running" and any(
            condition.get("type") == "Ready" and condition.get("status") == "True"
            for condition in status.get("conditions") or ()
        )
        endpoint = _endpoint(
            host,
            metadata.get("name") or host,
            ports,
            settings,
            ready=ready,
            terminating=metadata.get("deletionTimestamp") is not None,
            annotations=metadata.get("annotations") or {},
            problems=problems,
        )
        if endpoint is not None:
            found.append(endpoint)
    return sorted(found, key=lambda endpoint: endpoint.name)
