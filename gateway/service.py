"""The assembled gateway: configuration in, replicas, index, policy, router, proxy and monitor out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.auth import APIKeys, read_secret
from gateway.blocks import (
    NATIVE_CHAIN_HASHING,
    BlockHasher,
    ByteBlockHasher,
    TokenBlockHasher,
    Tokenize,
    default_memo_blocks,
    local_tokenize,
)
from gateway.chat_template import load_chat_template
from gateway.config import GatewayConfig, replica_capacity_tokens
from gateway.discovery import make_discovery
from gateway.discovery.base import Endpoint
from gateway.errors import APIError, bad_request
from gateway.health import CacheGeometry, ReplicaMonitor
from gateway.index.base import PrefixIndex, TierCapacity
from gateway.index.embedded import EmbeddedIndex
from gateway.index.redis_connect import make_redis_commands
from gateway.index.redis_store import RedisPrefixStore
from gateway.index.shared import SharedIndex
from gateway.kv_events.feeds import EventFeeds
from gateway.kv_events.precise_index import PreciseIndex
from gateway.kv_events.remote_tokenize import remote_tokenize
from gateway.metrics import GatewayMetrics
from gateway.policies import AffinitySettings, make_policy
from gateway.profiles import get_profile
from gateway.proxy import Proxy
from gateway.replicas import Replica, ReplicaSet
from gateway.router import Router
from gateway.tokenizer import load_tokenizer
from gateway.upstream import Upstream

log = logging.getLogger("kvgate")


class GatewayService:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.profile = get_profile(config.profile).scaled(config.tensor_parallel)
        self.metrics = GatewayMetrics()
        self.upstream = Upstream(config.upstream)
        self.replicas = ReplicaSet()
        self._configured_tokens: dict[str, dict[str, int | None]] = {}
        for entry in config.replicas:
            replica = self.replicas.add(
                Replica(
                    url=entry.url,
                    name=entry.name or "",
                    models=set(entry.models),
                    kv_events_endpoint=entry.kv_events,
                    kv_events_replay_endpoint=entry.kv_events_replay,
                )
            )
            self._configured_tokens[replica.name] = replica_capacity_tokens(
                entry, self.profile.kv_bytes_per_token
            )

        self.feeds: EventFeeds | None = None
        self.hasher: BlockHasher
        self.index: PrefixIndex
        if config.precise.enabled:
            precise = config.precise
            self.hasher = TokenBlockHasher(self._tokenizer(), precise.block_size, config.routing.max_blocks)
            precise_index = PreciseIndex(self._model_of, precise.block_size, precise.speculative_ttl_s)
            self.feeds = EventFeeds(precise_index, self.metrics.registry)
            self.index = precise_index
        else:
            memo_blocks = config.routing.hash_memo_blocks
            self.hasher = ByteBlockHasher(
                config.routing.block_bytes,
                config.routing.max_blocks,
                default_memo_blocks() if memo_blocks is None else memo_blocks,
            )
            self.index = self._approximate_index()
        for replica in self.replicas:
            self.index.set_capacity(replica.name, self._capacity(replica.name, None))

        routing = config.routing
        self.policy = make_policy(
            config.policy,
            self.profile,
            AffinitySettings(
                guard_factor=routing.guard_factor,
                guard_min_outstanding=routing.guard_min_outstanding,
                guard_kv_usage=routing.guard_kv_usage,
                guard_keep_tokens=routing.guard_keep_tokens,
                tie_tolerance=routing.tie_tolerance,
                work_weight=routing.work_weight,
                engine_token_budget=routing.engine_token_budget,
            ),
        )
        self.router = Router(self.replicas, self.index, self.policy, self.hasher, self.profile, self.metrics)
        self.monitor = ReplicaMonitor(
            self.replicas, self.upstream, config.health, on_geometry=self._learn_geometry, on_out=self._forget
        )
        retries, upstream_key = config.upstream.max_retries, config.upstream.api_key
        self.proxy = Proxy(self.upstream, self.router, self.monitor, self.metrics, retries, upstream_key)
        self.metrics.register_replicas(self.replicas)
        self.metrics.index_collector(self.index.block_counts, getattr(self.index, "evictions", dict))
        self.shutting_down = False
        self.shutdown_deadline = 0.0
        self._discovered: set[str] = set()
        self._background: set[asyncio.Future] = set()
        self._discovery_task: asyncio.Task | None = None
        auth = config.auth
        self.api_keys = APIKeys(auth.api_keys_file) if auth.api_keys_file else None
        self.admin_token = read_secret(config.admin_token, auth.admin_token_file)
        if self.api_keys is None:
            log.warning("client authentication is off: set auth.api_keys_file to require API keys")

    def _tokenizer(self) -> Tokenize:
        precise = self.config.precise
        if precise.tokenizer == "remote":
            return remote_tokenize(self.upstream, self.replicas)
        path = None if precise.tokenizer == "builtin" else precise.tokenizer
        return local_tokenize(load_tokenizer(path), load_chat_template(precise.chat_template))

    def _model_of(self, replica: str) -> str:
        found = self.replicas.get(replica)
        return min(found.models) if found and found.models else ""

    def _approximate_index(self) -> PrefixIndex:
        default = TierCapacity(hbm=self._blocks(self.config.routing.default_hbm_tokens))
        if self.config.index.backend == "embedded":
            return EmbeddedIndex(default)
        settings = self.config.index.redis
        store = RedisPrefixStore(
            make_redis_commands(settings), settings.key_prefix, settings.stride, settings.ttl_s
        )
        return SharedIndex(
            store, default, self.metrics.registry, settings.lookup_timeout_s, settings.max_pending_writes
        )

    def _blocks(self, tokens: float) -> int:
        return int(tokens / self.hasher.tokens_per_block)

    def _capacity(self, replica: str, geometry: CacheGeometry | None) -> TierCapacity:
        configured = self._configured_tokens.get(replica, {})
        learned_hbm = geometry.gpu_blocks * geometry.block_size if geometry else None
        learned_dram = geometry.cpu_blocks * geometry.block_size if geometry else None
        hbm = configured.get("hbm") or learned_hbm or self.config.routing.default_hbm_tokens
        dram = configured.get("dram") if configured.get("dram") is not None else learned_dram or 0
        storage = configured.get("storage") or 0
        return TierCapacity(self._blocks(hbm), self._blocks(dram), self._blocks(storage))

    def _learn_geometry(self, replica: Replica, geometry: CacheGeometry) -> None:
        capacity = self._capacity(replica.name, geometry)
        log.info(
            "replica %s: %d-token blocks, %d GPU blocks -> index capacity %s",
            replica.name,
            geometry.block_size,
            geometry.gpu_blocks,
            capacity,
        )
        self.index.set_capacity(replica.name, capacity)
        if self.config.precise.enabled and geometry.block_size != self.config.precise.block_size:
            log.error(
                "replica %s uses %d-token blocks but precise.block_size is %d: its events will not match",
                replica.name,
                geometry.block_size,
                self.config.precise.block_size,
            )

    async def start(self) -> None:
        await self.upstream.open()
        await self.monitor.start()
        if self.feeds is not None:
            await self.feeds.sync(self.replicas)
        discovery = make_discovery(self.config.discovery)
        if discovery is not None:
            self._discovery_task = asyncio.create_task(
                discovery.run(self.apply_endpoints), name="kvgate-discovery"
            )
        models = sorted(self.replicas.models()) or "(no models yet)"
        log.info("routing %s over %d replicas with policy %s", models, len(self.replicas), self.policy.name)
        if not NATIVE_CHAIN_HASHING:
            log.warning(
                "prompt blocks are hashed in Python (about 6x slower): this install was built without "
                "gateway._chainhash, which needs a C compiler and xxhash.h (libxxhash-dev)"
            )

    async def stop(self) -> None:
        if self._discovery_task is not None:
            self._discovery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery_task
            self._discovery_task = None
        await self.monitor.stop()
        if self.feeds is not None:
            await self.feeds.stop()
        await self.upstream.close()
        await self.index.close()

    async def apply_endpoints(self, endpoints: list[Endpoint]) -> None:
        """Make the discovered part of the replica set match `endpoints` (configured replicas stay)."""
        seen = set()
        for endpoint in endpoints:
            seen.add(endpoint.name)
            replica = self.replicas.get(endpoint.name)
            if replica is not None and replica.name in self._discovered and _moved(replica, endpoint):
                await self._remove(replica.name)
                replica = None
            if replica is None:
                if not endpoint.ready or endpoint.terminating:
                    continue
                replica = self.replicas.add(
                    Replica(
                        url=endpoint.url,
                        name=endpoint.name,
                        models=set(self.config.discovery.models),
                        kv_events_endpoint=endpoint.kv_events,
                        kv_events_replay_endpoint=endpoint.kv_events_replay,
                    )
                )
                self._discovered.add(replica.name)
                self.index.set_capacity(replica.name, self._capacity(replica.name, None))
                log.info("replica %s joined at %s", replica.name, replica.url)
                await self.monitor.check(replica)
            elif replica.name in self._discovered:
                draining = endpoint.terminating or not endpoint.ready
                if draining and not replica.draining:
                    log.info("replica %s is draining", replica.name)
                replica.draining = draining
        for name in self._discovered - seen:
            await self._remove(name)
        if self.feeds is not None:
            await self.feeds.sync(self.replicas)

    async def _remove(self, name: str) -> None:
        self._discovered.discard(name)
        self.replicas.remove(name)
        await self._forget_cache(name)
        log.info("replica %s left", name)

    async def _forget_cache(self, name: str) -> None:
        await self.index.forget_replica(name)
        if hasattr(self.policy, "cost"):
            self.policy.cost.forget(name)

    def _forget(self, replica: Replica) -> None:
        """A replica taken out of the pool: what the index knew of its cache goes (a restart empties it)."""
        task = asyncio.ensure_future(self._forget_cache(replica.name))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def resolve_model(self, requested: str | None) -> str:
        served = self.replicas.models()
        if requested is None:
            if len(served) == 1:
                return next(iter(served))
            raise bad_request("'model' is required: this gateway serves several models", "model")
        if requested not in served:
            raise APIError(404, f"The model `{requested}` does not exist.", "model")
        return requested

    def model_cards(self) -> list[dict]:
        cards: dict[str, dict] = {}
        for replica in self.replicas:
            for model in sorted(replica.models):
                card = replica.model_cards.get(model) or {
                    "id": model,
                    "object": "model",
                    "owned_by": "kvgate",
                }
                cards.setdefault(model, card)
        return [cards[name] for name in sorted(cards)]

    def tenant_of(self, token: str | None) -> str:
        """The tenant of a client's API key ('' when client authentication is off); 401 otherwise."""
        return "" if self.api_keys is None else self.api_keys.tenant_of(token)

    def ready(self) -> bool:
        return not self.shutting_down and any(replica.routable for replica in self.replicas)

    def begin_shutdown(self) -> None:
        """Stop being ready and refuse new requests; in-flight ones get `shutdown_grace_s` to finish."""
        if not self.shutting_down:
            self.shutting_down = True
            self.shutdown_deadline = time.monotonic() + self.config.shutdown_grace_s
            log.info("shutting down: refusing new requests, waiting for %d in flight", self.in_flight())

    def in_flight(self) -> int:
        return sum(replica.load.inflight for replica in self.replicas)

    def drained(self) -> bool:
        return self.shutting_down and (self.in_flight() == 0 or time.monotonic() >= self.shutdown_deadline)


def _moved(replica: Replica, endpoint: Endpoint) -> bool:
    """Same name, new address: a recreated Pod (a StatefulSet's keeps its name), with an empty cache."""
    return (replica.url, replica.kv_events_endpoint, replica.kv_events_replay_endpoint) != (
        endpoint.url.rstrip("/"),
        endpoint.kv_events,
        endpoint.kv_events_replay,
    )
