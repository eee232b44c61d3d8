"""One event stream per replica that publishes KV events, started and stopped with the replica set."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import zmq.asyncio
from prometheus_client import Counter

from gateway.kv_events.decode import EventBatch
from gateway.kv_events.precise_index import PreciseIndex
from gateway.kv_events.subscriber import EventStream
from gateway.replicas import Replica

log = logging.getLogger("kvgate.kv_events")


class EventFeeds:
    def __init__(self, index: PreciseIndex, registry) -> None:
        self.index = index
        self.context = zmq.asyncio.Context()
        self.streams: dict[str, EventStream] = {}
        self.counted = Counter(
            "kvgate_kv_events",
            "KV event batches by replica and outcome: applied, gap, replayed, gap_unrecovered, restart, "
            "out_of_order, malformed, undecodable, error.",
            ["replica", "kind"],
            registry=registry,
        )

    def _apply(self, replica: str, batch: EventBatch) -> None:
        self.index.apply(replica, batch.data_parallel_rank, batch.events)
        self.counted.labels(replica, "applied").inc()

    def _count(self, replica: str, kind: str) -> None:
        self.counted.labels(replica, kind).inc()

    async def sync(self, replicas: Iterable[Replica]) -> None:
        """Follow every replica that has an events endpoint; stop following those that left."""
        wanted = {r.name: r for r in replicas if r.kv_events_endpoint}
        for name in list(self.streams):
            if name not in wanted:
                await self.streams.pop(name).stop()
                await self.index.forget_replica(name)
        for name, replica in wanted.items():
            if name not in self.streams:
                stream = EventStream(
                    name,
                    replica.kv_events_endpoint,
                    apply=self._apply,
                    clear=self.index.clear_replica,
                    count=self._count,
                    replay_endpoint=replica.kv_events_replay_endpoint,
                    context=self.context,
                )
                stream.start()
                self.streams[name] = stream
                log.info("following KV events of %s at %s", name, replica.kv_events_endpoint)

    async def stop(self) -> None:
        for stream in self.streams.values():
            await stream.stop()
        self.streams.clear()
        self.context.term()
