"""One simulated vLLM replica: engine, metrics, KV event publisher, fault state and HTTP listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gateway.profiles import Tier
from gateway.tokenizer import Tokenizer
from loadtest.sim.api import ReplicaAPI
from loadtest.sim.clock import SimClock
from loadtest.sim.config import SimConfig
from loadtest.sim.engine import Engine
from loadtest.sim.events import KVEventPublisher
from loadtest.sim.faults import FaultState
from loadtest.sim.metrics import ReplicaMetrics
from loadtest.sim.request import FINISH_ABORT
from loadtest.sim.server import HttpServer
from loadtest.sim.vocabulary import OutputVocabulary

logger = logging.getLogger(__name__)


class Replica:
    """Replica `index` of a fleet. `port` 0 (HTTP) or a KV events port of 0 picks free ports."""

    def __init__(
        self,
        index: int,
        config: SimConfig,
        clock: SimClock,
        tokenizer: Tokenizer,
        vocabulary: OutputVocabulary,
        host: str = "127.0.0.1",
        port: int = 0,
        kv_events_port: int | None = None,
        kv_events_replay_port: int | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.clock = clock
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        self.host = host
        self.port = port
        self.kv_events_port = kv_events_port
        self.kv_events_replay_port = kv_events_replay_port
        self.faults = FaultState(config.faults)
        self.api = ReplicaAPI(self)
        self.alive = False
        self._cleanup_task: asyncio.Future[None] | None = None
        self._revive_task: asyncio.Future[None] | None = None
        self._relisten_task: asyncio.Future[None] | None = None
        self.engine: Engine
        self.metrics: ReplicaMetrics
        self.publisher: KVEventPublisher | None = None
        self._server: HttpServer | None = None
        self._build_engine()

    # --- addresses -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def kv_events_endpoint(self) -> str | None:
        return self.publisher.endpoint if self.publisher else None

    @property
    def kv_events_replay_endpoint(self) -> str | None:
        return self.publisher.replay_endpoint if self.publisher else None

    # --- lifecycle -------------------------------------------------------------------------------------

    def _build_engine(self) -> None:
        config = self.config
        hbm_blocks = config.hbm_block_count()
        self.metrics = ReplicaMetrics(config, hbm_blocks)
        self.engine = Engine(config, self.clock, self.vocabulary, self.metrics, hbm_blocks=hbm_blocks)
        self.engine.slowdown = self.faults.settings.slowdown

    async def start(self) -> None:
        config = self.config
        if self.kv_events_port is not None:
            publisher = KVEventPublisher(
                encoding=config.kv_events_encoding,
                topic=config.kv_events_topic,
                bytes_hashes=config.kv_events_bytes_hashes,
                data_parallel_rank=config.data_parallel_rank,
                buffer_steps=config.kv_events_buffer_steps,
                replay_topic=config.kv_events_replay_topic,
            )
            publisher.start(self.host, self.kv_events_port, self.kv_events_replay_port)
            # Keep the ports a restart must bind again.
            self.kv_events_port = _port_of(publisher.endpoint)
            if publisher.replay_endpoint is not None:
                self.kv_events_replay_port = _port_of(publisher.replay_endpoint)
            self.publisher = publisher
            self.engine.publisher = publisher
        self.engine.start()
        await self._listen()
        self.alive = True

    async def _listen(self) -> None:
        server = HttpServer(self.api, self.host, self.port)
        await server.start()
        self.port = server.port
        self._server = server

    async def stop(self) -> None:
        """Shut down cleanly: requests in flight end (aborted), then the listener and the publisher close."""
        self.alive = False
        for task in (self._revive_task, self._relisten_task):
            if task is not None:
                task.cancel()
        if self._cleanup_task is not None:
            await self._cleanup_task
        self._abort_all()
        await self.engine.stop()
        if self._server is not None:
            await self._server.stop(force=True)
            self._server = None
        if self.publisher is not None:
            await self.publisher.close()
            self.publisher = None

    def die(self, restart_after: float | None = None) -> None:
        """Crash: open connections are reset and new ones refused. With `restart_after` (simulated
        seconds) the replica comes back, with an empty cache and fresh metrics, as a restarted process."""
        if not self.alive:
            return
        self.alive = False
        logger.warning("replica %d dies", self.index)
        server, self._server = self._server, None
        publisher, self.publisher = self.publisher, None
        if server is not None:
            server.stop_listening()
            server.abort_connections()
        self._abort_all()
        self._cleanup_task = asyncio.ensure_future(self._clean_up_after_death(server, self.engine, publisher))
        if restart_after is not None:
            self._revive_task = asyncio.ensure_future(self._revive_after(restart_after))

    async def _clean_up_after_death(
        self, server: HttpServer | None, engine: Engine, publisher: KVEventPublisher | None
    ) -> None:
        await engine.stop()
        if server is not None:
            await server.stop(force=True)
        if publisher is not None:
            await publisher.close()

    async def _revive_after(self, seconds: float) -> None:
        await self.clock.sleep(seconds)
        self._revive_task = None
        if not self.alive:
            await self.restart()

    async def restart(self) -> None:
        """Come back as a fresh process on the same ports: empty cache, fresh metrics, event seq from 0."""
        if self._revive_task is not None and self._revive_task is not asyncio.current_task():
            self._revive_task.cancel()
            self._revive_task = None
        if self.alive:
            await self.stop()
        if self._cleanup_task is not None:
            await self._cleanup_task
            self._cleanup_task = None
        self.faults.update({"die_after_tokens": None})
        self._build_engine()
        await self.start()

    def refuse_connections(self, seconds: float) -> None:
        """Stop listening for `seconds` simulated seconds; the engine, its cache and open streams carry on."""
        if self._server is None:
            return
        self._server.stop_listening()
        self._relisten_task = asyncio.ensure_future(self._listen_again_after(seconds))

    async def _listen_again_after(self, seconds: float) -> None:
        await self.clock.sleep(seconds)
        self._relisten_task = None
        if self._server is not None and self.alive:
            old = self._server
            await self._listen()
            await old.stop()

    def _abort_all(self) -> None:
        self.engine.abort_all(FINISH_ABORT)

    # --- faults and state ------------------------------------------------------------------------------

    def set_faults(self, **changes: Any) -> None:
        settings = self.faults.update(changes)
        self.engine.slowdown = settings.slowdown

    def clear_faults(self) -> None:
        self.faults.clear()
        self.engine.slowdown = 1.0

    def reset_prefix_cache(self) -> bool:
        return self.engine.reset_prefix_cache()

    def state(self) -> dict[str, Any]:
        engine = self.engine
        cache = engine.cache
        return {
            "index": self.index,
            "alive": self.alive,
            "url": self.url,
            "sim_time": self.clock.now(),
            "engine_time": engine.time,
            "steps": engine.steps,
            "running": len(engine.scheduler.running),
            "waiting": len(engine.scheduler.waiting),
            "kv_cache_usage": cache.usage,
            "cached_blocks": {
                tier.name: cache.cached_block_count(tier) for tier in (Tier.HBM, Tier.DRAM, Tier.STORAGE)
            },
            "capacity_blocks": {
                "HBM": cache.capacity,
                "DRAM": self.config.dram_blocks,
                "STORAGE": self.config.storage_blocks,
            },
            "kv_events_endpoint": self.kv_events_endpoint,
            "kv_events_replay_endpoint": self.kv_events_replay_endpoint,
            "faults": self.faults.as_dict(),
        }


def _port_of(endpoint: str | None) -> int | None:
    if endpoint is None:
        return None
    with contextlib.suppress(ValueError):
        return int(endpoint.rsplit(":", 1)[1])
    return None
