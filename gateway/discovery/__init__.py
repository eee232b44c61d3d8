"""Where replicas come from: a static list, Kubernetes EndpointSlices or Pods, or DNS."""

from __future__ import annotations

from gateway.config import DiscoveryConfig
from gateway.discovery.base import Discovery


def make_discovery(settings: DiscoveryConfig) -> Discovery | None:
    """The source `discovery.kind` names; None for `static`, where the configured replicas are all."""
    if settings.kind == "kubernetes":
        from gateway.discovery.kubernetes import KubernetesDiscovery

        return KubernetesDiscovery(settings)
    if settings.kind == "dns":
        from gateway.discovery.dns import DnsDiscovery

        return DnsDiscovery(settings)
    return None
