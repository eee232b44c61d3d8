"""The inference endpoints, `POST /v1/chat/completions` and `/v1/completions`, as a lean ASGI handler.

They sit in front of the FastAPI app, which serves every other endpoint and documents these two in its
OpenAPI schema. Served through FastAPI's routing, middleware stack and StreamingResponse they cost
the gateway about 40% more CPU per request (profiled with py-spy at 100 streamed requests/s), and every
request waits for that CPU: the gateway's budget is 1 ms of added time to first token.

The flow reads top to bottom: body -> request -> tenant -> model -> routing decision -> proxy -> reply.
Once the body is read, a client that disconnects cancels the handler, whose relay then closes the
upstream connection so the engine aborts the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.auth import bearer_token, tenant_salt
from gateway.errors import APIError
from gateway.proxy import Reply
from gateway.request import Kind, check_body_size, parse_request
from gateway.service import GatewayService

log = logging.getLogger("kvgate")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES: dict[str, Kind] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
JSON = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected before its request was complete: there is no one to answer."""


class InferenceEndpoints:
    def __init__(self, app: ASGIApp, gateway: GatewayService) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _send_error(send, APIError(405, "Method Not Allowed: use POST."), [(b"allow", b"POST")])
            return
        arrived = time.monotonic()
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        try:
            raw = await self._read_body(receive, headers)
        except ClientGone:
            return
        except APIError as error:
            await _send_error(send, error)
            return
        await self._answer(kind, scope["path"], headers, raw, arrived, receive, send)

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        config = self.gateway.config
        limit = config.upstream.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit():
            check_body_size(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    check_body_size(size, limit)
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            raise APIError(
                408, f"The request body took longer than {config.body_timeout_s:g} s to arrive."
            ) from None
        return b"".join(chunks)

    async def _answer(
        self,
        kind: Kind,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        arrived: float,
        receive: Receive,
        send: Send,
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        finished = False
        reply: Reply | None = None
        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(lambda _: None if finished else handler.cancel())
        try:
            try:
                reply = await self._process(kind, path, headers, raw, arrived)
            except APIError as error:
                finished = True
                await _send_error(send, error)
                return
            except Exception:
                finished = True
                log.exception("unexpected error serving a request")
                await _send_error(send, APIError(500, "Internal error in the gateway; it has been logged."))
                return
            await _send_start(send, reply)
            if reply.stream is None:
                finished = True
                await send({"type": "http.response.body", "body": reply.body})
                return
            async for chunk in reply.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finished = True
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise  # cancelled from outside (shutdown), not by the client leaving
            handler.uncancel()  # the client left: the relay has closed the upstream request
        finally:
            finished = True
            watcher.cancel()
            if reply is not None and reply.close is not None:
                reply.close()

    async def _process(
        self, kind: Kind, path: str, headers: dict[str, str], raw: bytes, arrived: float
    ) -> Reply:
        gateway = self.gateway
        if gateway.shutting_down:
            raise APIError(503, "The gateway is shutting down; retry on another instance.")
        tenant = gateway.tenant_of(bearer_token(headers.get("authorization")))
        request = parse_request(kind, raw, headers.get("x-session-id"))
        if tenant:
            request.tenant = tenant
            if gateway.config.auth.inject_cache_salt and request.cache_salt is None:
                request.cache_salt = request.body["cache_salt"] = tenant_salt(tenant)
        model = gateway.resolve_model(request.model)
        decision = await gateway.router.route(request, model)
        return await gateway.proxy.forward(path, request, decision, arrived, headers)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_start(send: Send, reply: Reply) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers.items()]
    if reply.stream is None:
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})


async def _send_error(send: Send, error: APIError, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = error.json()
    headers = [*JSON, (b"content-length", str(len(body)).encode()), *extra]
    with contextlib.suppress(OSError):
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
