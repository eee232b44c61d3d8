"""The HTTP face of the gateway: OpenAI-compatible endpoints, health, readiness, metrics, debug."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from gateway import __version__
from gateway.auth import bearer_token
from gateway.config import GatewayConfig
from gateway.errors import APIError
from gateway.inference import InferenceEndpoints
from gateway.request import Kind, parse_request
from gateway.service import GatewayService

log = logging.getLogger("kvgate")

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string"},
        "content": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]
        },
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": {"type": "string"},
    },
}
_COMMON = {
    "model": {"type": "string"},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": {"type": "integer", "minimum": 0},
    "cache_salt": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^@/\\\\\\x00]*$"},
}
_CHAT_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "max_completion_tokens": {"type": "integer", "minimum": 0},
        "tools": {"type": "array", "items": {"type": "object"}},
    },
}
_COMPLETION_SCHEMA = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        **_COMMON,
        "prompt": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "integer", "minimum": 0, "maximum": 4294967295},
                },
            ]
        },
    },
}
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "integer"},
            },
        }
    },
}


def _json_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _error_response(error: APIError) -> Response:
    return Response(error.json(), status_code=error.status, media_type="application/json")


def create_app(config: GatewayConfig, service: GatewayService | None = None) -> InferenceEndpoints:
    """The gateway's ASGI app: the lean inference endpoints in front of a FastAPI app for the rest."""
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

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        gateway.tenant_of(bearer_token(request.headers.get("authorization")))
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

    @app.post("/debug/route", openapi_extra=_json_body(_CHAT_SCHEMA))
    async def debug_route(request: Request) -> Response:
        _require_admin(gateway.admin_token, request)
        kind: Kind = "completion" if request.query_params.get("kind") == "completion" else "chat"
        parsed = parse_request(kind, await request.body(), request.headers.get("x-session-id"))
        model = gateway.resolve_model(parsed.model)
        decision = await gateway.router.route(parsed, model)
        return JSONResponse(_explain(decision))

    app.openapi = lambda: _openapi_with_inference(app, sorted(gateway.replicas.models()))
    return InferenceEndpoints(app, gateway)


def _openapi_with_inference(app: FastAPI, models: list[str]) -> dict:
    """FastAPI's schema, plus the two inference endpoints that the lean ASGI handler serves, with the
    models the gateway serves right now."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    error = {
        "description": "An OpenAI-shaped error",
        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
    }
    model = {"type": "string", "enum": models} if models else {"type": "string"}
    for path, body in (("/v1/chat/completions", _CHAT_SCHEMA), ("/v1/completions", _COMPLETION_SCHEMA)):
        body = {**body, "properties": {**body["properties"], "model": model}}
        responses = {"200": {"description": "The completion, or a text/event-stream of chunks"}}
        responses |= {str(code): error for code in (400, 401, 404, 408, 413, 502, 503)}
        schema["paths"][path] = {"post": {**_json_body(body), "responses": responses}}
    return schema


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
                "score_s": estimate.score_s,
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
