"""The gateway's configuration: one schema, filled from a YAML file, then environment, then flags.

Environment variables are `KVGATE_<KEY>` for top-level keys and `KVGATE_<SECTION>__<KEY>` for nested
ones (`KVGATE_ROUTING__BLOCK_BYTES=128`); values are read as YAML scalars, and `KVGATE_REPLICAS` takes
a comma-separated list of URLs. Every key is documented in docs/config.md; an unknown or invalid key
is an error that names it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.policies import PolicyName
from gateway.profiles import PROFILE_NAMES

ENV_PREFIX = "KVGATE_"
GIB = 1024**3


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator, naming the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaConfig(_Section):
    url: str
    name: str | None = Field(default=None, description="Name in metrics and logs; default host:port.")
    models: list[str] = Field(
        default_factory=list, description="Empty: learn them from the replica's /v1/models."
    )
    hbm_tokens: int | None = Field(
        default=None, ge=0, description="KV cache in GPU memory, in tokens; unset: read from the replica."
    )
    dram_tokens: int | None = Field(
        default=None, ge=0, description="CPU offload tier, in tokens; unset: none."
    )
    storage_tokens: int | None = Field(default=None, ge=0, description="Storage offload tier, in tokens.")
    hbm_gib: float | None = Field(
        default=None, ge=0, description="Or the GPU tier in GiB (profile's KV/token)."
    )
    dram_gib: float | None = Field(default=None, ge=0, description="Or the CPU tier in GiB.")
    storage_gib: float | None = Field(default=None, ge=0, description="Or the storage tier in GiB.")
    kv_events: str | None = Field(
        default=None, description="The replica's KV events publisher, tcp://host:port."
    )
    kv_events_replay: str | None = Field(default=None, description="Its replay endpoint, tcp://host:port.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")


class RoutingConfig(_Section):
    block_bytes: int = Field(
        default=64, gt=0, le=65536, description="Prompt bytes per hashed block (about 16 tokens at 64)."
    )
    max_blocks: int = Field(
        default=8192, gt=0, le=1_000_000, description="Blocks hashed per prompt at most: bounds the work."
    )
    hash_memo_blocks: int | None = Field(
        default=None,
        ge=0,
        description="Blocks of recent chat prompts' chains kept (about 48 B each) so that a conversation's "
        "next turn hashes only its new blocks; 0 turns the memo off. Unset: 262144 where blocks are "
        "hashed in Python, off where the C extension hashes them.",
    )
    guard_factor: float = Field(
        default=1.5,
        ge=1.0,
        description="Load guard: pass over a replica above this times the mean outstanding.",
    )
    guard_min_outstanding: float = Field(
        default=8.0, ge=0, description="Load guard: ...and with at least this many requests outstanding."
    )
    guard_kv_usage: float = Field(
        default=0.98, gt=0, le=1.0, description="Load guard: pass over a replica whose KV cache is this full."
    )
    guard_keep_tokens: float = Field(
        default=32768,
        ge=0,
        description="Load guard: spare a replica holding at least this many more of the prompt's tokens than "
        "any unguarded one (a conversation's own history, which leaving would compute again).",
    )
    tie_tolerance: float = Field(
        default=0.05,
        ge=0,
        le=1.0,
        description="Scores within this fraction of the best are ties (the bigger holder wins them).",
    )
    work_weight: float = Field(
        default=0.5,
        ge=0,
        description="Affinity scores a replica by its TTFT estimate plus this times the prefill it adds.",
    )
    engine_token_budget: int = Field(
        default=8192, gt=0, description="The engines' tokens per scheduler step (max_num_batched_tokens)."
    )
    default_hbm_tokens: int = Field(
        default=450_000, gt=0, description="Assumed GPU KV capacity until a replica reports its own."
    )


class RedisConfig(_Section):
    url: str = Field(default="redis://127.0.0.1:6379/0", description="redis://, rediss:// (TLS) or unix://.")
    password_file: str | None = Field(
        default=None, description="File holding the password (a mounted Secret)."
    )
    sentinels: list[str] = Field(
        default_factory=list, description="host:port of Sentinels; empty: no Sentinel."
    )
    sentinel_service: str = Field(default="mymaster", description="The master's name under Sentinel.")
    cluster: bool = Field(default=False, description="Redis Cluster (one hash slot per model).")
    tls_ca_file: str | None = Field(default=None, description="CA bundle to verify the server.")
    tls_cert_file: str | None = Field(default=None, description="Client certificate, for mutual TLS.")
    tls_key_file: str | None = Field(default=None, description="Client key, for mutual TLS.")
    key_prefix: str = Field(default="kvg", description="Prefix of every key (no braces).")
    stride: int = Field(default=16, ge=1, le=4096, description="Store every stride-th block of a chain.")
    ttl_s: int = Field(
        default=3600, ge=1, description="A replica's entries expire this long after its last use."
    )
    lookup_timeout_s: float = Field(
        default=0.05, gt=0, description="A slower lookup counts as a failure: route from the local view."
    )
    max_pending_writes: int = Field(
        default=10_000, ge=1, description="Records queued while Redis is down, at most."
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class IndexConfig(_Section):
    backend: Literal["embedded", "redis"] = Field(
        default="embedded", description="'embedded' (in process) or 'redis' (shared by gateway replicas)."
    )
    redis: RedisConfig = Field(default_factory=RedisConfig)


class PreciseConfig(_Section):
    enabled: bool = Field(default=False, description="Route on the engines' KV events instead of guesses.")
    tokenizer: str = Field(
        default="builtin",
        description="'builtin', 'remote' (the replica's /tokenize) or a tokenizer.json path.",
    )
    chat_template: str = Field(
        default="chatml", description="'chatml' or a Jinja template / tokenizer_config.json path."
    )
    block_size: int = Field(default=16, gt=0, description="The engines' KV block size in tokens.")
    speculative_ttl_s: float = Field(
        default=2.0,
        gt=0,
        description="How long a routing decision counts as cached before events confirm it.",
    )


class DiscoveryConfig(_Section):
    kind: Literal["static", "kubernetes", "dns"] = Field(
        default="static", description="static: `replicas` only; kubernetes: the API; dns: a headless Service."
    )
    models: list[str] = Field(
        default_factory=list, description="Models of discovered replicas; empty: read each one's /v1/models."
    )
    namespace: str = Field(default="default", description="The namespace to watch (kind: kubernetes).")
    service: str | None = Field(default=None, description="Watch this Service's EndpointSlices.")
    label_selector: str | None = Field(default=None, description="Or watch Pods matching this selector.")
    port: int | None = Field(default=None, ge=1, le=65535, description="The replicas' HTTP port, by number.")
    port_name: str = Field(default="http", description="Or by name on the EndpointSlice / container.")
    kv_events_port_name: str = Field(
        default="kv-events", description="The port name of the KV events publisher (a Pod annotation wins)."
    )
    kv_events_replay_port_name: str = Field(
        default="kv-replay", description="The port name of its replay endpoint (a Pod annotation wins)."
    )
    kv_events_port: int | None = Field(
        default=None, ge=1, le=65535, description="The replicas' KV events port, by number (kind: dns)."
    )
    kv_events_replay_port: int | None = Field(
        default=None, ge=1, le=65535, description="Their KV events replay port, by number (kind: dns)."
    )
    kubeconfig: str | None = Field(default=None, description="Empty: the in-cluster service account.")
    dns_name: str | None = Field(default=None, description="A headless Service's DNS name, for kind: dns.")
    interval_s: float = Field(default=5.0, gt=0, description="DNS re-resolution period.")

    @model_validator(mode="after")
    def _source_named(self) -> DiscoveryConfig:
        if self.kind == "kubernetes" and not (self.service or self.label_selector):
            raise ValueError("kind: kubernetes needs discovery.service or discovery.label_selector")
        if self.kind == "kubernetes" and self.service and self.label_selector:
            raise ValueError("set discovery.service or discovery.label_selector, not both")
        if self.kind == "dns" and not (self.dns_name and self.port):
            raise ValueError("kind: dns needs discovery.dns_name and discovery.port")
        return self


class UpstreamConfig(_Section):
    connect_timeout_s: float = Field(default=2.0, gt=0, description="Connecting to a replica.")
    read_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Waiting for a replica's next bytes (the first may follow a long prefill).",
    )
    max_retries: int = Field(
        default=2, ge=0, le=16, description="Other replicas to try when one fails before its first byte."
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0, description="Largest request body accepted.")
    max_connections: int = Field(default=1024, gt=0, description="Pooled keep-alive connections to replicas.")
    api_key: str | None = Field(
        default=None, description="Sent to replicas as a bearer token (vLLM --api-key)."
    )


class HealthConfig(_Section):
    interval_s: float = Field(default=2.0, gt=0, description="Active health check (/health) period.")
    scrape_interval_s: float = Field(default=1.0, gt=0, description="Replica /metrics scrape period.")
    failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive failed requests that take a replica out (passive health)."
    )
    cooldown_s: float = Field(
        default=5.0, ge=0, description="A replica taken out stays out at least this long."
    )
    timeout_s: float = Field(default=2.0, gt=0, description="Timeout of health checks and scrapes.")


class AuthConfig(_Section):
    api_keys_file: str | None = Field(
        default=None,
        description="Client API keys, '<tenant> <key>' per line; unset: no client authentication.",
    )
    inject_cache_salt: bool = Field(
        default=True,
        description="Give requests without a cache_salt their tenant's, isolating tenants in engines.",
    )
    admin_token_file: str | None = Field(default=None, description="The admin token, read from a file.")


class GatewayConfig(_Section):
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port to listen on.")
    policy: PolicyName = Field(default="affinity", description="Routing policy.")
    profile: str = Field(default="h100-llama3-8b", description="Latency profile of the replicas.")
    tensor_parallel: int = Field(
        default=1, ge=1, description="GPUs per replica (divides the profile's times)."
    )
    replicas: list[ReplicaConfig] = Field(
        default_factory=list, description="Static replicas (URLs or objects)."
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    precise: PreciseConfig = Field(default_factory=PreciseConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    admin_token: str | None = Field(default=None, description="Token for /debug endpoints (prefer the file).")
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="How long in-flight requests get to finish."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="The longest a client may take to send a body."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log verbosity."
    )

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        if name not in PROFILE_NAMES:
            raise ValueError(f"unknown profile; known: {', '.join(PROFILE_NAMES)}")
        return name

    @field_validator("replicas", mode="before")
    @classmethod
    def _urls_as_replicas(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [{"url": item.strip()} if isinstance(item, str) else item for item in value]
        return value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        value = raw if dotted == "replicas" else yaml.safe_load(raw) if raw else raw
        _set_dotted(tree, dotted, value)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"config key '{key}': {message}")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """File, then `KVGATE_*` environment, then `overrides` (dotted keys, from flags), validated."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys")
        tree = loaded
    tree = _merge(tree, _env_overrides(os.environ if environ is None else environ))
    flat: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(flat, dotted, value)
    tree = _merge(tree, flat)
    try:
        return GatewayConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def replica_capacity_tokens(replica: ReplicaConfig, kv_bytes_per_token: int) -> dict[str, int | None]:
    """The replica's configured tier sizes in tokens (GiB converted with the profile's KV bytes/token)."""

    def tokens(count: int | None, gib: float | None) -> int | None:
        if count is not None:
            return count
        return None if gib is None else int(gib * GIB / kv_bytes_per_token)

    return {
        "hbm": tokens(replica.hbm_tokens, replica.hbm_gib),
        "dram": tokens(replica.dram_tokens, replica.dram_gib),
        "storage": tokens(replica.storage_tokens, replica.storage_gib),
    }
