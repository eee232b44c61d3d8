"""A throwaway redis-server on a loopback port, for tests and benchmarks: no persistence, its log and
files in a directory of its own."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.process import free_port, stop_process, wait_for_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisProcess:
    """redis-server on 127.0.0.1:`port` with `extra` options; `start()` returns once it accepts connections.

    It can be started again on the same port and directory after it has been stopped or killed."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        address = ["--bind", "127.0.0.1", "--port", str(self.port)]
        no_persistence = ["--save", "", "--appendonly", "no"]
        files = ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        return [REDIS_SERVER, *address, *no_persistence, *files, *self.extra]

    def start(self) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, process=self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process:
            stop_process(self.process, timeout=5)
        self.process = None


@contextlib.contextmanager
def redis_server(
    directory: Path | None = None, *extra: str, port: int | None = None
) -> Iterator[RedisProcess]:
    """A started RedisProcess, stopped on exit; in a temporary directory when `directory` is None."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kvgate-redis-")))
        server = RedisProcess(directory, port or free_port(), list(extra)).start()
        stack.callback(server.stop)
        yield server
