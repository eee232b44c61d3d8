"""Several simulated replicas, in this process or in a `kvgate sim` subprocess.

In-process, for tests and the demo:

    async with SimFleet(SimConfig(time_scale=100), replicas=4) as fleet:
        fleet.urls                       # ["http://127.0.0.1:41234", ...]
        fleet.replicas[0].engine         # the engine: cache, scheduler, per-request records
        fleet.replicas[1].set_faults(error_rate=0.5)
        fleet.replicas[2].die()          # crash; `await fleet.replicas[2].restart()` brings it back empty

In a subprocess, for benchmarks (the simulator gets its own core):

    with SimProcess(replicas=8, extra_args=["--time-scale", "50"]) as sim:
        sim.urls
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

from gateway.tokenizer import load_tokenizer
from loadtest.process import KvgateProcess, free_port
from loadtest.sim.clock import SimClock
from loadtest.sim.config import SimConfig
from loadtest.sim.replica import Replica
from loadtest.sim.vocabulary import OutputVocabulary


class SimFleet:
    """`replicas` replicas sharing one simulated clock, on `host`. `port` 0 gives each a free port, otherwise
    replica i listens on port + i; KV events likewise (`config.kv_events_port`, 0 for free ports)."""

    def __init__(
        self,
        config: SimConfig | None = None,
        replicas: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: SimClock | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.config.validate()
        if replicas < 1:
            raise ValueError("a fleet needs at least one replica")
        self.host = host
        self.clock = clock or SimClock(self.config.time_scale)
        tokenizer = load_tokenizer(self.config.tokenizer)
        vocabulary = OutputVocabulary(tokenizer)
        config_ = self.config
        self.replicas = [
            Replica(
                index,
                config_,
                self.clock,
                tokenizer,
                vocabulary,
                host=host,
                port=port + index if port else 0,
                kv_events_port=_offset(config_.kv_events_port, index),
                kv_events_replay_port=_offset(config_.kv_events_replay_port, index),
            )
            for index in range(replicas)
        ]

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    def __len__(self) -> int:
        return len(self.replicas)

    async def start(self) -> None:
        started: list[Replica] = []
        try:
            for replica in self.replicas:
                await replica.start()
                started.append(replica)
        except BaseException:
            await asyncio.gather(*(replica.stop() for replica in started), return_exceptions=True)
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(replica.stop() for replica in self.replicas), return_exceptions=True)

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _offset(base: int | None, index: int) -> int | None:
    if base is None:
        return None
    return base + index if base else 0


def free_port_range(count: int, host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A base port such that base .. base+count-1 are free right now."""
    for _ in range(attempts):
        base = free_port(host)
        if base + count > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for offset in range(count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((host, base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"found no {count} consecutive free ports")


class SimProcess(KvgateProcess):
    """`python -m gateway sim` in a subprocess; `start()` returns once every replica's /health answers."""

    def __init__(
        self,
        replicas: int = 1,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
        python: str = sys.executable,
        stdout: int | None = subprocess.DEVNULL,
    ) -> None:
        self.replicas = replicas
        self.host = host
        self.port = port if port is not None else free_port_range(replicas, host)
        args = ["sim", "--replicas", str(replicas), "--port", str(self.port), "--host", host, *extra_args]
        super().__init__(args, [url + "/health" for url in self.urls], startup_timeout, python, stdout)

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.host}:{self.port + index}" for index in range(self.replicas)]
