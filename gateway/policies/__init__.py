"""Routing policies: the affinity default and the baselines it is measured against."""

from __future__ import annotations

from typing import Literal, get_args

from gateway.policies.affinity import AffinityPolicy, AffinitySettings
from gateway.policies.base import Policy, Ranking, RouteContext
from gateway.policies.baselines import ConsistentHashPolicy, LeastLoadedPolicy, RandomPolicy, RoundRobinPolicy
from gateway.profiles import Profile

PolicyName = Literal["affinity", "round_robin", "random", "least_loaded", "consistent_hash"]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)


def make_policy(name: str, profile: Profile, affinity: AffinitySettings | None = None) -> Policy:
    if name == "affinity":
        return AffinityPolicy(profile, affinity)
    if name == "round_robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy()
    if name == "least_loaded":
        return LeastLoadedPolicy()
    if name == "consistent_hash":
        return ConsistentHashPolicy()
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")


__all__ = [
    "POLICY_NAMES",
    "AffinityPolicy",
    "AffinitySettings",
    "Policy",
    "PolicyName",
    "Ranking",
    "RouteContext",
    "make_policy",
]
