"""Everything one swarm run needs, as one validated object (`kvgate swarm` flags map onto it 1:1).

`SwarmConfig` is what the library entry point `run_swarm` takes; `build_workload` and
`build_load_settings` turn it into the workload and the driver's settings.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loadtest.swarm.controller import AdaptiveSettings, RampSchedule, SloTargets, TtftMetric
from loadtest.swarm.driver import LoadSettings, Mode
from loadtest.swarm.shard import Shard
from loadtest.swarm.traces import load_trace
from loadtest.swarm.workloads.agents import AgentSwarm
from loadtest.swarm.workloads.agents_config import AgentsConfig, load_agents_config
from loadtest.swarm.workloads.base import Workload
from loadtest.swarm.workloads.replay import MooncakeReplay, ReplayOptions, WekaReplay
from loadtest.swarm.workloads.sweep import Sweep, SweepOptions


class SwarmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # endpoint
    endpoint: str = "http://127.0.0.1:8000"
    """Base URL of the endpoint; several separated by commas are spread over as `endpoint_spread` says."""
    endpoint_spread: Literal["user", "request"] = "user"
    """user: each user sticks to one endpoint (user id modulo their number), as a client-side session
    affinity would; request: every request takes the next endpoint in turn, as a Kubernetes Service in
    front of several gateway replicas spreads a conversation's turns over them."""
    model: str | None = None
    """None: the first model the endpoint lists at /v1/models."""
    api_key: str | None = Field(default_factory=lambda: os.environ.get("OPENAI_API_KEY"))
    api: Literal["chat", "completions"] = "chat"
    request_timeout_s: float = Field(default=600.0, gt=0)
    max_connections: int = Field(default=0, ge=0)
    """0: no limit on pooled connections."""
    ignore_eos: bool = False
    """Send vLLM's `ignore_eos: true` so every request generates exactly its max_tokens."""
    extra_body: dict[str, Any] = Field(default_factory=dict)

    # workload
    workload: Literal["agents", "replay", "sweep"] = "agents"
    agents_config: str | None = None
    """Path of the agent workload YAML (None: the shipped defaults)."""
    agents: AgentsConfig | None = None
    """An agent workload given as an object (wins over `agents_config`)."""
    trace: list[str] = Field(default_factory=list)
    trace_format: Literal["auto", "weka", "mooncake"] = "auto"
    include_subagents: bool = True
    shared_prefix: bool = False
    prewarm: bool = False
    recycle: bool = False
    order: Literal["cycle", "random"] = "cycle"
    max_output_tokens: int | None = Field(default=None, ge=1)
    speedup: float = Field(default=1.0, gt=0)
    sweep: Literal["hit-rate", "working-set"] = "hit-rate"
    context_tokens: int = Field(default=8000, ge=64)
    output_tokens: int = Field(default=64, ge=1)
    hit_rates: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    working_set_tokens: int = Field(default=400_000, ge=1)
    working_set_min_tokens: int = Field(default=100_000, ge=1)
    working_set_max_tokens: int = Field(default=2_000_000, ge=1)
    working_set_steps: int = Field(default=5, ge=1)
    working_set_hit_rate: float = Field(default=0.9, ge=0, le=1)
    phase_duration_s: float = Field(default=60.0, gt=0)

    # load
    mode: Mode | None = None
    """None: `trace` for a Mooncake replay, `fixed` otherwise."""
    users: int = Field(default=8, ge=0)
    """fixed: users; adaptive: users to start with."""
    ramp_start: int = Field(default=1, ge=0)
    ramp_step: int = Field(default=1, ge=0)
    ramp_interval_s: float = Field(default=30.0, gt=0)
    max_users: int = Field(default=1000, ge=1)
    rate: float | None = Field(default=None, gt=0)
    arrival: Literal["poisson", "constant"] = "poisson"
    slo_ttft_s: float | None = Field(default=None, gt=0)
    slo_ttft_metric: TtftMetric = "p95"
    slo_output_tokens_per_s: float | None = Field(default=None, gt=0)
    slo_max_error_rate: float = Field(default=0.05, ge=0, le=1)
    adaptive_growth: float = Field(default=1.5, gt=1)
    adaptive_backoff: float = Field(default=0.5, gt=0, lt=1)
    adaptive_min_requests: int = Field(default=10, ge=1)
    adaptive_settle_periods: int = Field(default=1, ge=0)
    period_s: float = Field(default=30.0, gt=0)
    duration_s: float = Field(default=300.0, gt=0)
    max_requests: int = Field(default=1_000_000, ge=1)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    time_scale: float = Field(default=1.0, gt=0)
    think_scale: float = Field(default=1.0, ge=0)
    max_think_s: float | None = Field(default=None, ge=0)
    start_spread_s: float = Field(default=5.0, ge=0)
    seed: int = 0
    shard: str = "0/1"

    # outputs
    output_dir: str | None = None
    """None: kvgate-results/swarm-<UTC time>."""
    label: str | None = None
    quiet: bool = True
    plots: bool = True
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    record_trace: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SwarmConfig:
        Shard.parse(self.shard)
        if not self.endpoints:
            raise ValueError("endpoint: give at least one URL")
        if self.workload == "replay" and not self.trace:
            raise ValueError("the replay workload needs trace files (trace)")
        if self.workload == "agents" and self.api != "chat":
            raise ValueError("the agents workload sends tool calls, which need the chat API")
        if self.mode == "adaptive" and self.slo_ttft_s is None and self.slo_output_tokens_per_s is None:
            raise ValueError("the adaptive mode needs slo_ttft_s, slo_output_tokens_per_s or both")
        if self.mode == "rate" and self.rate is None:
            raise ValueError("the rate mode needs rate")
        return self

    @property
    def endpoints(self) -> list[str]:
        return [url.strip() for url in self.endpoint.split(",") if url.strip()]

    @property
    def parsed_shard(self) -> Shard:
        return Shard.parse(self.shard)

    @property
    def slo(self) -> SloTargets:
        return SloTargets(
            ttft_s=self.slo_ttft_s,
            ttft_metric=self.slo_ttft_metric,
            min_output_tokens_per_s=self.slo_output_tokens_per_s,
            max_error_rate=self.slo_max_error_rate,
        )


def build_workload(config: SwarmConfig) -> Workload:
    shard = config.parsed_shard
    if config.workload == "agents":
        agents = config.agents or load_agents_config(config.agents_config)
        return AgentSwarm(agents, shard)
    if config.workload == "sweep":
        return Sweep(
            SweepOptions(
                kind=config.sweep,
                api=config.api,
                context_tokens=config.context_tokens,
                output_tokens=config.output_tokens,
                phase_duration_s=config.phase_duration_s,
                order=config.order,
                hit_rates=tuple(config.hit_rates),
                working_set_tokens=config.working_set_tokens,
                working_set_min_tokens=config.working_set_min_tokens,
                working_set_max_tokens=config.working_set_max_tokens,
                working_set_steps=config.working_set_steps,
                working_set_hit_rate=config.working_set_hit_rate,
                seed=config.seed,
            ),
            shard,
        )
    options = ReplayOptions(
        api=config.api,
        include_subagents=config.include_subagents,
        shared_prefix=config.shared_prefix,
        prewarm=config.prewarm,
        recycle=config.recycle,
        order=config.order,
        max_output_tokens=config.max_output_tokens,
        speedup=config.speedup,
        seed=config.seed,
    )
    trace = load_trace(config.trace, config.trace_format)
    if trace.format == "weka":
        return WekaReplay(trace.conversations, options, shard)
    return MooncakeReplay(trace.timed_requests, options, shard)


def resolved_mode(config: SwarmConfig, workload: Workload) -> Mode:
    if config.mode is not None:
        return config.mode
    return "trace" if workload.has_schedule else "fixed"


def build_load_settings(config: SwarmConfig, workload: Workload) -> LoadSettings:
    mode = resolved_mode(config, workload)
    shard = config.parsed_shard
    adaptive = None
    if mode == "adaptive":
        start = max(1, shard.local_share(max(config.users, shard.count)))
        maximum = max(start, shard.local_share(config.max_users))
        adaptive = AdaptiveSettings(
            start_users=start,
            min_users=1,
            max_users=maximum,
            growth=config.adaptive_growth,
            backoff=config.adaptive_backoff,
            min_requests=config.adaptive_min_requests,
            settle_periods=config.adaptive_settle_periods,
        )
    ramp = None
    if mode == "ramp":
        ramp = RampSchedule(config.ramp_start, config.ramp_step, config.ramp_interval_s, config.max_users)
    if mode == "trace" and not workload.has_schedule:
        raise ValueError(
            f"the {workload.name} workload has no recorded schedule; --mode trace is for Mooncake traces"
        )
    return LoadSettings(
        mode=mode,
        users=config.users,
        ramp=ramp,
        adaptive=adaptive,
        rate=config.rate,
        arrival=config.arrival,
        max_users=max(1, shard.local_share(config.max_users)),
        slo=config.slo,
        period_s=config.period_s,
        duration_s=config.duration_s,
        max_requests=config.max_requests,
        drain_timeout_s=config.drain_timeout_s,
        think_scale=config.think_scale,
        max_think_s=config.max_think_s,
        start_spread_s=config.start_spread_s,
        seed=config.seed,
    )
