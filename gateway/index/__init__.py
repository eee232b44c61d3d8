"""Prefix indexes: which replica holds which prompt blocks, and in which memory tier."""

from gateway.index.base import PrefixIndex, PrefixMatch, TierCapacity

__all__ = ["PrefixIndex", "PrefixMatch", "TierCapacity"]
