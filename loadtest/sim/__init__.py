"""A vLLM-compatible replica simulator: OpenAI API, Prometheus metrics and KV cache events, with a paged,
tiered KV cache and a continuous-batching scheduler timed by GPU-calibrated latency profiles."""

from loadtest.sim.clock import SimClock
from loadtest.sim.config import ConfigError, FaultSettings, SimConfig
from loadtest.sim.engine import Engine, RequestRecord
from loadtest.sim.fleet import SimFleet, SimProcess, free_port_range
from loadtest.sim.replica import Replica

__all__ = [
    "ConfigError",
    "Engine",
    "FaultSettings",
    "Replica",
    "RequestRecord",
    "SimClock",
    "SimConfig",
    "SimFleet",
    "SimProcess",
    "free_port_range",
]
