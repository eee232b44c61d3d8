"""The HTTP face of one replica: a lean ASGI app speaking vLLM's OpenAI-compatible API.

No web framework: a table of routes and hand-written validation, because streaming many short chunks
through a framework's routing and response classes costs several times the CPU (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.chat_template import render_chat
from loadtest.sim.config import ConfigError
from loadtest.sim.protocol import (
    SSE_DONE,
    ApiError,
    GenerationRequest,
    StreamFormatter,
    chat_response,
    completion_response,
    field,
    internal_error,
    parse_generation,
    parse_json_object,
    sse_error,
    usage,
)
from loadtest.sim.request import FINISH_ERROR, SimRequest

if TYPE_CHECKING:
    from loadtest.sim.replica import Replica

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class HttpRequest:
    __slots__ = ("body", "headers", "path", "query", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        self.scope = scope
        self.receive = receive
        self.body = body
        self.path: str = scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        self.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def interval_pieces(
    tokens: list[int], sent: int, interval: int, json_by_id: dict[int, bytes]
) -> tuple[list[bytes], list[int]]:
    """vLLM's --stream-interval: the first token alone, then `interval` tokens per chunk (the last chunk
    takes what is left). Returns each chunk's text as a JSON string and the output count at its end."""
    pieces, ends = [], []
    start = 0
    while start < len(tokens):
        size = 1 if sent + start == 0 else interval
        group = tokens[start : start + size]
        pieces.append(b'"' + b"".join(json_by_id[token][1:-1] for token in group) + b'"')
        start += len(group)
        ends.append(sent + start)
    return pieces, ends


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    response_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        response_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_body(send, status, orjson.dumps(payload), JSON, headers)


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


Handler = Callable[[HttpRequest, Send], Awaitable[None]]


class ReplicaAPI:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.in_flight = 0
        self.routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self.chat_completions},
            "/v1/completions": {"POST": self.completions},
            "/v1/models": {"GET": self.models},
            "/health": {"GET": self.health},
            "/ping": {"GET": self.health, "POST": self.health},
            "/version": {"GET": self.version},
            "/load": {"GET": self.load},
            "/tokenize": {"POST": self.tokenize},
            "/detokenize": {"POST": self.detokenize},
            "/metrics": {"GET": self.metrics},
            "/reset_prefix_cache": {"POST": self.reset_prefix_cache},
            "/v1/chat/completions/render": {"POST": self.render_chat},
            "/v1/completions/render": {"POST": self.render_completion},
            "/model_info": {"GET": self.model_info},
            "/get_model_info": {"GET": self.model_info},
            "/server_info": {"GET": self.server_info},
            "/get_server_info": {"GET": self.server_info},
            "/admin/faults": {"GET": self.get_faults, "POST": self.set_faults, "DELETE": self.clear_faults},
            "/admin/kill": {"POST": self.kill},
            "/admin/refuse": {"POST": self.refuse},
            "/admin/state": {"GET": self.state},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        methods = self.routes.get(scope["path"])
        if methods is None and scope["path"].startswith("/admin/requests/"):
            methods = {"GET": self.request_record}
        if methods is None:
            await send_json(send, HTTPStatus.NOT_FOUND, {"detail": "Not Found"})
            return
        handler = methods.get(scope["method"])
        if handler is None:
            await send_json(send, HTTPStatus.METHOD_NOT_ALLOWED, {"detail": "Method Not Allowed"})
            return
        request = HttpRequest(scope, receive, await read_body(receive))
        try:
            await handler(request, send)
        except ApiError as error:
            await send_body(send, error.status, error.body())

    # --- generation ------------------------------------------------------------------------------------

    async def chat_completions(self, request: HttpRequest, send: Send) -> None:
        await self._generate(request, send, "chat")

    async def completions(self, request: HttpRequest, send: Send) -> None:
        await self._generate(request, send, "completion")

    async def _generate(self, http: HttpRequest, send: Send, kind: str) -> None:
        replica = self.replica
        config = replica.config
        faults = replica.faults
        if faults.settings.draining:
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE, "The server is draining", "ServiceUnavailableError"
            )
        payload = parse_json_object(
            http.body, "ChatCompletionRequest" if kind == "chat" else "CompletionRequest"
        )
        generation = parse_generation(
            payload, kind, replica.tokenizer, config.max_model_len, config.default_max_tokens
        )
        self._check_model(generation.model)
        if faults.should_fail():
            raise internal_error()
        if faults.settings.added_latency:
            await replica.clock.sleep(faults.settings.added_latency)
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        response_id = prefix + (generation.request_id or http.headers.get("x-request-id") or uuid.uuid4().hex)
        engine = replica.engine
        sim_request = engine.submit(
            response_id,
            generation.prompt_token_ids,
            generation.max_tokens,
            generation.cache_salt,
            faults.settings.stream_error_after_tokens,
        )
        self.in_flight += 1
        disconnect = asyncio.ensure_future(http.receive())
        disconnect.add_done_callback(lambda _: sim_request.wake())
        try:
            if generation.stream:
                await self._stream(generation, sim_request, response_id, send, disconnect)
            else:
                await self._respond(generation, sim_request, response_id, http, send, disconnect)
        finally:
            self.in_flight -= 1
            disconnect.cancel()
            if not sim_request.finished:
                engine.abort(sim_request)

    def _check_model(self, model: str) -> None:
        if model and model != self.replica.config.model:
            raise ApiError(
                HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.", "NotFoundError", "model"
            )

    def _served_model(self, generation: GenerationRequest) -> str:
        return generation.model or self.replica.config.model

    def _cached_tokens(self, sim_request: SimRequest) -> int | None:
        if not self.replica.config.enable_prompt_tokens_details:
            return None
        return sim_request.num_cached_tokens or 0

    async def _stream(
        self,
        generation: GenerationRequest,
        sim_request: SimRequest,
        response_id: str,
        send: Send,
        disconnect: asyncio.Future[Any],
    ) -> None:
        replica = self.replica
        faults = replica.faults.settings
        die_after = faults.die_after_tokens
        json_by_id = replica.vocabulary.json_by_id
        created = int(replica.clock.wall())
        formatter = StreamFormatter(generation.kind, response_id, created, self._served_model(generation))
        prompt_tokens = sim_request.num_prompt_tokens
        await send({"type": "http.response.start", "status": HTTPStatus.OK, "headers": SSE_HEADERS})
        sent = 0
        started = generation.kind != "chat"
        interval = replica.config.stream_interval
        while True:
            await sim_request.wait_for_output()
            if disconnect.done():
                return
            tokens = sim_request.take_pending()
            chunks: list[bytes] = []
            if not started and tokens:
                chunks.append(formatter.role_chunk())
                started = True
            if tokens:
                sim_request.stream_interval = interval
            limit = len(tokens)
            if die_after is not None:
                limit = min(limit, die_after - sent)
            finishing = sim_request.finished and limit == len(tokens) and not sim_request.pending
            if interval == 1:
                pieces = [json_by_id[tokens[index]] for index in range(limit)]
                ends = range(sent + 1, sent + limit + 1)
            else:
                pieces, ends = interval_pieces(tokens[:limit], sent, interval, json_by_id)
            for index, text_json in enumerate(pieces):
                last = finishing and index == len(pieces) - 1 and sim_request.finish_reason != FINISH_ERROR
                if generation.continuous_usage:
                    done = ends[index]
                    reason = sim_request.finish_reason if last else None
                    chunks.append(
                        formatter.token_chunk_with_usage(text_json, reason, usage(prompt_tokens, done, None))
                    )
                elif last:
                    chunks.append(
                        formatter.final_token_chunk(text_json, sim_request.finish_reason or "length")
                    )
                else:
                    chunks.append(formatter.token_chunk(text_json))
            sent += limit
            if die_after is not None and sent >= die_after:
                if chunks:
                    await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
                replica.die()
                return
            if finishing and sim_request.finish_reason == FINISH_ERROR:
                chunks.append(sse_error(internal_error()))
                chunks.append(SSE_DONE)
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})
                return
            if finishing:
                if generation.include_usage:
                    chunks.append(
                        formatter.usage_chunk(
                            usage(
                                prompt_tokens, sim_request.num_output_tokens, self._cached_tokens(sim_request)
                            )
                        )
                    )
                chunks.append(SSE_DONE)
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})
                return
            if chunks:
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})

    async def _respond(
        self,
        generation: GenerationRequest,
        sim_request: SimRequest,
        response_id: str,
        http: HttpRequest,
        send: Send,
        disconnect: asyncio.Future[Any],
    ) -> None:
        replica = self.replica
        faults = replica.faults.settings
        while not sim_request.finished:
            await sim_request.wait_for_output()
            if disconnect.done():
                return
            sim_request.take_pending()
            produced = sim_request.num_output_tokens
            if faults.die_after_tokens is not None and produced >= faults.die_after_tokens:
                replica.die()
                return
        if sim_request.finish_reason == FINISH_ERROR:
            raise internal_error()
        output = sim_request.output_token_ids
        text = replica.vocabulary.text(output)
        usage_body = usage(sim_request.num_prompt_tokens, len(output), self._cached_tokens(sim_request))
        created = int(replica.clock.wall())
        build = chat_response if generation.kind == "chat" else completion_response
        body = build(
            response_id,
            created,
            self._served_model(generation),
            text,
            sim_request.finish_reason or "length",
            usage_body,
        )
        await send_json(send, HTTPStatus.OK, body, self._load_report_header(http))

    def _load_report_header(self, http: HttpRequest) -> list[tuple[bytes, bytes]] | None:
        """vLLM's ORCA `endpoint-load-metrics` header, when the request asks for it."""
        report_format = http.headers.get("endpoint-load-metrics-format", "").strip().lower()
        if report_format not in ("text", "json"):
            return None
        metrics = self.replica.metrics
        named = {
            "kv_cache_usage_perc": float(metrics.kv_cache_usage_perc),
            "num_requests_waiting": float(metrics.num_requests_waiting),
        }
        if report_format == "text":
            value = "TEXT " + ", ".join(f"named_metrics.{name}={value}" for name, value in named.items())
        else:
            value = "JSON " + orjson.dumps({"named_metrics": named}).decode()
        return [(b"endpoint-load-metrics", value.encode())]

    # --- rendering (vLLM's GPU-less render endpoints, which vllm-router calls to hash prompts) ------------

    async def render_chat(self, request: HttpRequest, send: Send) -> None:
        await send_json(send, HTTPStatus.OK, self._render(request, "chat"))

    async def render_completion(self, request: HttpRequest, send: Send) -> None:
        await send_json(send, HTTPStatus.OK, [self._render(request, "completion")])

    def _render(self, http: HttpRequest, kind: str) -> dict[str, Any]:
        """The prompt's token ids and sampling parameters, as vLLM's render endpoints return a
        GenerateRequest."""
        config = self.replica.config
        payload = parse_json_object(
            http.body, "ChatCompletionRequest" if kind == "chat" else "CompletionRequest"
        )
        generation = parse_generation(
            payload, kind, self.replica.tokenizer, config.max_model_len, config.default_max_tokens
        )
        self._check_model(generation.model)
        return {
            "request_id": generation.request_id or uuid.uuid4().hex,
            "token_ids": generation.prompt_token_ids,
            "features": None,
            "sampling_params": {"n": 1, "max_tokens": generation.max_tokens, "ignore_eos": True},
            "model": self._served_model(generation),
            "stream": generation.stream,
            "stream_options": payload.get("stream_options"),
            "cache_salt": generation.cache_salt,
            "priority": 0,
            "kv_transfer_params": None,
        }

    # --- information -----------------------------------------------------------------------------------

    async def model_info(self, request: HttpRequest, send: Send) -> None:
        """SGLang's model card, which sglang-router reads to learn a worker's model."""
        config = self.replica.config
        body = {
            "model_path": config.model,
            "tokenizer_path": config.tokenizer or config.model,
            "served_model_name": config.model,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "max_context_length": config.max_model_len,
            "max_req_input_len": config.max_model_len - 1,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "supports_vision": False,
        }
        await send_json(send, HTTPStatus.OK, body)

    async def server_info(self, request: HttpRequest, send: Send) -> None:
        """SGLang's server description: the engine settings a router may read (parallelism, cache size)."""
        config = self.replica.config
        engine = self.replica.engine
        body = {
            "model_path": config.model,
            "served_model_name": config.model,
            "tokenizer_path": config.tokenizer or config.model,
            "tp_size": config.effective_tensor_parallel(),
            "dp_size": 1,
            "page_size": config.block_size,
            "context_length": config.max_model_len,
            "max_total_num_tokens": engine.cache.capacity * config.block_size,
            "max_running_requests": config.max_num_seqs,
            "chunked_prefill_size": config.max_num_batched_tokens,
            "version": config.vllm_version,
            "internal_states": [
                {
                    "num_requests_running": len(engine.scheduler.running),
                    "num_requests_waiting": len(engine.scheduler.waiting),
                    "kv_cache_usage": engine.cache.usage,
                }
            ],
        }
        await send_json(send, HTTPStatus.OK, body)

    async def models(self, request: HttpRequest, send: Send) -> None:
        config = self.replica.config
        created = int(self.replica.clock.wall())
        card = {
            "id": config.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": config.model,
            "parent": None,
            "max_model_len": config.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        await send_json(send, HTTPStatus.OK, {"object": "list", "data": [card]})

    async def health(self, request: HttpRequest, send: Send) -> None:
        status = HTTPStatus.SERVICE_UNAVAILABLE if self.replica.faults.settings.draining else HTTPStatus.OK
        await send_body(send, status, b"")

    async def version(self, request: HttpRequest, send: Send) -> None:
        await send_json(send, HTTPStatus.OK, {"version": self.replica.config.vllm_version})

    async def load(self, request: HttpRequest, send: Send) -> None:
        await send_json(send, HTTPStatus.OK, {"server_load": self.in_flight})

    async def metrics(self, request: HttpRequest, send: Send) -> None:
        await send_body(send, HTTPStatus.OK, self.replica.metrics.render(), CONTENT_TYPE_LATEST.encode())

    async def tokenize(self, request: HttpRequest, send: Send) -> None:
        payload = parse_json_object(request.body, "TokenizeRequest")
        self._check_model(field(payload, "model", (str,), "TokenizeRequest") or "")
        tokenizer = self.replica.tokenizer
        if "messages" in payload:
            messages = field(payload, "messages", (list,), "TokenizeChatRequest", [])
            tools = field(payload, "tools", (list,), "TokenizeChatRequest")
            add_generation_prompt = field(
                payload, "add_generation_prompt", (bool,), "TokenizeChatRequest", True
            )
            tokens = tokenizer.encode(render_chat(messages, tools, add_generation_prompt))
        else:
            prompt = field(payload, "prompt", (str,), "TokenizeCompletionRequest")
            if prompt is None:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST, "Either 'prompt' or 'messages' is required", param="prompt"
                )
            tokens = tokenizer.encode(prompt)
        token_strs = None
        if field(payload, "return_token_strs", (bool,), "TokenizeRequest", False):
            token_strs = [tokenizer.decode([token]) for token in tokens]
        body = {
            "count": len(tokens),
            "max_model_len": self.replica.config.max_model_len,
            "tokens": tokens,
            "token_strs": token_strs,
        }
        await send_json(send, HTTPStatus.OK, body)

    async def detokenize(self, request: HttpRequest, send: Send) -> None:
        payload = parse_json_object(request.body, "DetokenizeRequest")
        self._check_model(field(payload, "model", (str,), "DetokenizeRequest") or "")
        tokens = field(payload, "tokens", (list,), "DetokenizeRequest")
        if tokens is None or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in tokens
        ):
            raise ApiError(HTTPStatus.BAD_REQUEST, "'tokens' must be a list of token ids", param="tokens")
        await send_json(send, HTTPStatus.OK, {"prompt": self.replica.tokenizer.decode(tokens)})

    # --- control ---------------------------------------------------------------------------------------

    async def reset_prefix_cache(self, request: HttpRequest, send: Send) -> None:
        """vLLM's dev endpoint: 200 with no body (the reset is refused while requests hold blocks)."""
        self.replica.engine.reset_prefix_cache()
        await send_body(send, HTTPStatus.OK, b"")

    async def get_faults(self, request: HttpRequest, send: Send) -> None:
        await send_json(send, HTTPStatus.OK, self.replica.faults.as_dict())

    async def set_faults(self, request: HttpRequest, send: Send) -> None:
        payload = parse_json_object(request.body, "Faults")
        try:
            self.replica.set_faults(**payload)
        except ConfigError as error:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None
        await send_json(send, HTTPStatus.OK, self.replica.faults.as_dict())

    async def clear_faults(self, request: HttpRequest, send: Send) -> None:
        self.replica.clear_faults()
        await send_json(send, HTTPStatus.OK, self.replica.faults.as_dict())

    async def kill(self, request: HttpRequest, send: Send) -> None:
        """Die now (after answering), coming back after `restart_after` simulated seconds if given."""
        payload = parse_json_object(request.body or b"{}", "Kill")
        restart_after = field(payload, "restart_after", (int, float), "Kill")
        await send_json(send, HTTPStatus.OK, {"dying": True, "restart_after": restart_after})
        asyncio.get_running_loop().call_soon(self.replica.die, restart_after)

    async def refuse(self, request: HttpRequest, send: Send) -> None:
        """Refuse connections for `seconds` simulated seconds, keeping the cache."""
        payload = parse_json_object(request.body, "Refuse")
        seconds = field(payload, "seconds", (int, float), "Refuse")
        if seconds is None or seconds <= 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, "'seconds' must be a positive number", param="seconds")
        await send_json(send, HTTPStatus.OK, {"refusing_for": seconds})
        asyncio.get_running_loop().call_soon(self.replica.refuse_connections, seconds)

    async def state(self, request: HttpRequest, send: Send) -> None:
        await send_json(send, HTTPStatus.OK, self.replica.state())

    async def request_record(self, request: HttpRequest, send: Send) -> None:
        request_id = request.path.removeprefix("/admin/requests/")
        record = self.replica.engine.records.get(request_id)
        if record is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no finished request {request_id!r}", param="request_id")
        await send_json(send, HTTPStatus.OK, record)
