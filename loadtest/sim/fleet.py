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
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType

import httpx

from gateway.tokenizer import load_tokenizer
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
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = probe.getsockname()[1]
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


class SimProcess:
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
        self.port = port
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.python = python
        self.stdout = stdout
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        assert self.port is not None
        return [f"http://{self.host}:{self.port + index}" for index in range(self.replicas)]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> SimProcess:
        if self.port is None:
            self.port = free_port_range(self.replicas, self.host)
        command = [
            self.python, "-m", "gateway", "sim",
            "--replicas", str(self.replicas), "--port", str(self.port), "--host", self.host,
            *self.extra_args,
        ]  # fmt: skip
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        self._stderr = tempfile.NamedTemporaryFile(prefix="kvgate-sim-", suffix=".log")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self.stdout, stderr=self._stderr, env=env)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.urls)
        with httpx.Client(timeout=1.0) as client:
            while pending:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"kvgate sim exited with {self.process.returncode}: {self.stderr_text()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"kvgate sim replicas not healthy after {self.startup_timeout} s: {pending}"
                    )
                try:
                    if client.get(pending[0] + "/health").status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.TransportError:
                    pass
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return process.returncode

    def stderr_text(self) -> str:
        """What the simulator has written to stderr so far."""
        if self._stderr is None:
            return ""
        with open(self._stderr.name, "rb") as log:
            return log.read().decode(errors="replace").strip()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimProcess:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
