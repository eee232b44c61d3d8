"""One replica's HTTP listener: uvicorn (httptools parser; uvloop when the running loop is uvloop) serving the
ASGI app on a socket bound here, so that port 0 works and a replica can stop listening (refusing connections),
abort its open connections (dying) and listen again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn


class HttpServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None and any(s.is_serving() for s in self._server.servers)

    async def start(self) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            http="httptools",
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._ticker = asyncio.create_task(server.main_loop(), name=f"http-{self.port}")

    def stop_listening(self) -> None:
        """New connections are refused from now on; open ones carry on."""
        if self._server is not None:
            for listener in self._server.servers:
                listener.close()

    def abort_connections(self) -> None:
        """Reset every open connection, as a crashed process would."""
        if self._server is not None:
            for connection in list(self._server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()

    async def stop(self, force: bool = False) -> None:
        """Close the listener; `force` resets open connections at once, otherwise uvicorn lets responses
        in flight finish."""
        server = self._server
        if server is None:
            return
        server.should_exit = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if force:
            self.stop_listening()
            self.abort_connections()
            for listener in server.servers:
                await listener.wait_closed()
        else:
            await server.shutdown()
        self._server = None
