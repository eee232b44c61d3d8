"""`python -m gateway <command>` in a subprocess, started and stopped for tests, benchmarks and the demo.

`start()` returns once every URL it should serve answers its health path (or raises with what the
process wrote to stderr); `stop()` sends SIGINT, then SIGKILL after a timeout. The helpers any
throwaway server needs live here too: a free loopback port, waiting for it to listen, stopping a child.
"""

from __future__ import annotations

import asyncio
import contextlib
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, process: subprocess.Popen | None = None) -> None:
    """Return once 127.0.0.1:`port` accepts connections; give up at once if `process` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening on {port}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Send `sig` to a child process and wait for it, killing it if it outlives `timeout`; its status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class KvgateProcess:
    def __init__(
        self,
        args: Sequence[str],
        health_urls: Sequence[str],
        startup_timeout: float = 30.0,
        python: str = sys.executable,
        stdout: int | None = subprocess.DEVNULL,
    ) -> None:
        self.args = list(args)
        self.health_urls = list(health_urls)
        self.startup_timeout = startup_timeout
        self.python = python
        self.stdout = stdout
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def name(self) -> str:
        return f"kvgate {self.args[0]}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> KvgateProcess:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        }
        self._stderr = tempfile.NamedTemporaryFile(prefix="kvgate-", suffix=".log")  # noqa: SIM115 (closed in stop)
        command = [self.python, "-m", "gateway", *self.args]
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
        pending = list(self.health_urls)
        with httpx.Client(timeout=1.0) as client:
            while pending:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}: {self.stderr_text()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not healthy after {self.startup_timeout} s: {pending}")
                try:
                    if client.get(pending[0]).status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.TransportError:
                    pass
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        stop_process(process, signal.SIGINT, timeout)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return process.returncode

    def stderr_text(self) -> str:
        """What the process has written to stderr so far."""
        if self._stderr is None:
            return ""
        with open(self._stderr.name, "rb") as log:
            return log.read().decode(errors="replace").strip()

    def __enter__(self):
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self):
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


class GatewayProcess(KvgateProcess):
    """`kvgate serve` on `port` (a free one when None); ready when `/ready` answers 200."""

    def __init__(self, port: int | None = None, extra_args: Sequence[str] = (), **kwargs) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), *extra_args]
        super().__init__(args, [self.url + "/ready"], **kwargs)
