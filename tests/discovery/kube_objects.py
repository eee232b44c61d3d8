"""EndpointSlices and Pods as the Kubernetes API serves them, for the discovery tests."""

from __future__ import annotations

from typing import Any

SERVICE = "vllm"
NAMESPACE = "inference"


def endpoint_slice(
    name: str,
    pods: list[tuple[str, str]],
    *,
    terminating: frozenset[str] = frozenset(),
    unready: frozenset[str] = frozenset(),
    service: str = SERVICE,
    ports: dict[str, int] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    """A slice of `service` listing `(pod name, address)` pairs, with the conditions a controller sets."""
    ports = {"http": 8000, "kv-events": 5557, "kv-replay": 5558} if ports is None else ports
    endpoints = []
    for pod, address in pods:
        is_terminating = pod in terminating
        endpoints.append(
            {
                "addresses": [address],
                "conditions": {
                    "ready": not is_terminating and pod not in unready,
                    "serving": pod not in unready,
                    "terminating": is_terminating,
                },
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE},
                "nodeName": "node-a",
            }
        )
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "x"},
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [
            {"name": port_name, "port": number, "protocol": "TCP"} for port_name, number in ports.items()
        ],
    }


def pod(
    name: str,
    address: str | None,
    *,
    ready: bool = True,
    deleting: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: dict[str, int] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    ports = {"http": 8000, "kv-events": 5557} if ports is None else ports
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "labels": {"app": "vllm"} if labels is None else labels,
        "annotations": annotations or {},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if address:
        status["podIP"] = address
        status["podIPs"] = [{"ip": address}]
    return {
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai",
                    "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()],
                }
            ]
        },
        "status": status,
    }
