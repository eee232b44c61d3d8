"""Fault knobs of one replica, for reliability tests of whatever sits in front of it.

- `error_rate`: that fraction of generation requests is answered 500 before the first byte.
- `added_latency`: simulated seconds every generation request waits before it reaches the engine (a slow
  network or proxy: it adds to the client's TTFT, not to the engine's metrics).
- `slowdown`: factor on every scheduler step's time (a throttled or degraded GPU).
- `die_after_tokens`: the replica dies once a response has streamed that many tokens: every open connection
  is aborted and new ones are refused, until `restart_after` simulated seconds have passed (never, when
  unset, until restarted through the library or CLI), and it comes back with an empty cache.
- `stream_error_after_tokens`: a response that has streamed that many tokens ends with an error event
  (`data: {"error": ...}` then `[DONE]`), as vLLM reports a failed KV load mid-generation.
- `draining`: new generation requests and `/health` get 503, requests in flight finish.

Refusing connections for a while without losing the cache is a call (`refuse_connections(seconds)`), not a
knob; so is resetting the prefix cache.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from loadtest.sim.config import ConfigError, FaultSettings

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "error_rate": (int, float),
    "added_latency": (int, float),
    "slowdown": (int, float),
    "die_after_tokens": (int, type(None)),
    "restart_after": (int, float, type(None)),
    "stream_error_after_tokens": (int, type(None)),
    "draining": (bool,),
}


class FaultState:
    def __init__(self, settings: FaultSettings | None = None, seed: int | None = None) -> None:
        self.settings = dataclasses.replace(settings) if settings else FaultSettings()
        self.settings.validate()
        self._random = random.Random(seed)

    def should_fail(self) -> bool:
        rate = self.settings.error_rate
        return rate > 0 and self._random.random() < rate

    def update(self, changes: dict[str, Any]) -> FaultSettings:
        """Apply a partial update (unknown names and wrong types raise ConfigError, changing nothing)."""
        for name, value in changes.items():
            expected = _FIELD_TYPES.get(name)
            if expected is None:
                raise ConfigError(f"unknown fault {name!r}; known: {', '.join(_FIELD_TYPES)}")
            if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
                raise ConfigError(f"fault {name!r} has the wrong type: {type(value).__name__}")
        updated = dataclasses.replace(self.settings, **changes)
        updated.validate()
        self.settings = updated
        return updated

    def clear(self) -> FaultSettings:
        self.settings = FaultSettings()
        return self.settings

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.settings)
