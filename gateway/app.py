"""The HTTP face of the gateway: OpenAI-compatible endpoints, health, readiness, metrics, debug."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from gateway import __version__
from gateway.auth import bearer_token, tenant_salt
from gateway.config import GatewayConfig
from gateway.errors import APIError
from gateway.request import Kind, check_body_size, parse_request
from gateway.service import GatewayService

log = logging.getLogger("kvgate")

_CHAT_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer"},
        "max_completion_tokens": {"type": "integer"},
        "cache_salt": {"type": "string"},
        "tools": {"type": "array"},
    },
}
_COMPLETION_SCHEMA = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "model": {"type": "string"},
        "prompt": {"oneOf": [{"type": "string"}, {"type": "array"}]},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer"},
        "cache_salt": {"type": "string"},
    },
}


def _json_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _error_response(error: APIError) -> Response:
    return Response(error.json(), status_code=error.status, media_type="application/json")


def create_app(config: GatewayConfig, service: GatewayService | None = None) -> FastAPI:
    gateway = service or GatewayService(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="kvgate", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> Response:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> Response:
        return _error_response(APIError(error.status_code, str(error.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> Response:
        return _error_response(APIError(400, f"Invalid request: {error.errors()}"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> Response:
        log.exception("unexpected error serving a request")
        return _error_response(APIError(500, "Internal error in the gateway; it has been logged."))

    async def read_body(request: Request) -> bytes:
        limit = config.upstream.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit():
            check_body_size(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    check_body_size(size, limit)
                    chunks.append(chunk)
        except TimeoutError:
            raise APIError(
                408, f"The request body took longer than {config.body_timeout_s:g} s to arrive."
            ) from None
        return b"".join(chunks)

    def tenant_of(request: Request) -> str:
        if gateway.api_keys is None:
            return ""
        return gateway.api_keys.tenant_of(bearer_token(request.headers.get("authorization")))

    async def serve(kind: Kind, path: str, request: Request) -> Response:
        arrived = time.monotonic()
        if gateway.shutting_down:
            raise APIError(503, "The gateway is shutting down; retry on another instance.")
        tenant = tenant_of(request)
        raw = await read_body(request)
        parsed = parse_request(kind, raw, request.headers.get("x-session-id"))
        if tenant:
            parsed.tenant = tenant
            if config.auth.inject_cache_salt and parsed.cache_salt is None:
                parsed.cache_salt = parsed.body["cache_salt"] = tenant_salt(tenant)
        model = gateway.resolve_model(parsed.model)
        decision = await gateway.router.route(parsed, model)
        return await gateway.proxy.forward(path, parsed, decision, arrived, dict(request.headers))

    @app.post("/v1/chat/completions", openapi_extra=_json_body(_CHAT_SCHEMA))
    async def chat_completions(request: Request) -> Response:
        return await serve("chat", "/v1/chat/completions", request)

    @app.post("/v1/completions", openapi_extra=_json_body(_COMPLETION_SCHEMA))
    async def completions(request: Request) -> Response:
        return await serve("completion", "/v1/completions", request)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        tenant_of(request)
        return JSONResponse({"object": "list", "data": gateway.model_cards()})

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        routable = sum(1 for replica in gateway.replicas if replica.routable)
        status = 200 if gateway.ready() else 503
        return JSONResponse({"ready": status == 200, "routable_replicas": routable}, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/debug/route", openapi_extra=_json_body({"type": "object"}))
    async def debug_route(request: Request) -> Response:
        _require_admin(gateway.admin_token, request)
        kind: Kind = "completion" if request.query_params.get("kind") == "completion" else "chat"
        parsed = parse_request(kind, await read_body(request), request.headers.get("x-session-id"))
        model = gateway.resolve_model(parsed.model)
        decision = await gateway.router.route(parsed, model)
        return JSONResponse(_explain(decision))

    return app


def _require_admin(admin_token: str | None, request: Request) -> None:
    if not admin_token:
        raise APIError(403, "Admin endpoints are disabled: set admin_token to enable them.")
    offered = bearer_token(request.headers.get("authorization")) or ""
    if not hmac.compare_digest(
        hashlib.sha256(offered.encode()).digest(), hashlib.sha256(admin_token.encode()).digest()
    ):
        raise APIError(401, "A valid admin token is required: Authorization: Bearer <admin_token>.")


def _explain(decision) -> dict:
    context = decision.context
    estimates = {e.replica: e for e in decision.ranking.estimates}
    replicas = []
    for replica in decision.ranking.replicas:
        match = context.match_of(replica)
        row = {
            "replica": replica.name,
            "matched_blocks": {
                "hbm": match.hbm,
                "dram": match.dram,
                "storage": match.storage,
                "shared": match.shared,
            },
            "inflight": replica.load.inflight,
            "queued_prefill_tokens": replica.load.queued_prefill_tokens,
            "scraped": {
                "waiting": replica.scraped.waiting,
                "running": replica.scraped.running,
                "kv_usage": replica.scraped.kv_usage,
            },
        }
        estimate = estimates.get(replica.name)
        if estimate is not None:
            row["estimate"] = {
                "cached_tokens": estimate.cached_tokens,
                "queue_s": estimate.queue_s,
                "fetch_s": estimate.fetch_s,
                "prefill_s": estimate.prefill_s,
                "ttft_s": estimate.ttft_s,
                "load_guarded": estimate.guarded,
            }
        replicas.append(row)
    return {
        "model": decision.model,
        "prompt_tokens": decision.blocks.prompt_tokens,
        "hashed_blocks": len(decision.blocks.hashes),
        "decision": {
            "replica": decision.ranking.replicas[0].name,
            "reason": decision.ranking.reason,
            "predicted_cached_tokens": decision.ranking.predicted_cached_tokens,
        },
        "candidates": replicas,
    }
