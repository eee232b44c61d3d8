"""Request validation and response bodies of vLLM's OpenAI-compatible API.

Validation failures are 400 with type "Bad Request" (how vLLM answers a pydantic validation error); an
unknown model is 404 "NotFoundError" with `param: "model"`; a prompt over the context is 400
"BadRequestError" with `param: "input_tokens"` (or `"max_tokens"` when the prompt fits but the requested
output does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from gateway.chat_template import render_chat
from gateway.tokenizer import Tokenizer

CACHE_SALT_MAX_CHARS = 128
CACHE_SALT_FORBIDDEN = ("@", "/", "\\", "\0")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, error_type: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or HTTPStatus(status).phrase
        self.param = param

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.status,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


def validation_error(
    model: str, field: str, message: str, value: Any = None, kind: str = "value_error"
) -> ApiError:
    """A 400 shaped like the pydantic validation error vLLM reports."""
    detail = (
        f"1 validation error for {model}\n{field}\n  {message} [type={kind}, input_value={value!r}, "
        f"input_type={type(value).__name__}]"
    )  # fmt: skip
    return ApiError(HTTPStatus.BAD_REQUEST, detail, param=field)


def internal_error(message: str = "Internal server error") -> ApiError:
    return ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, message, "InternalServerError")


def parse_json_object(body: bytes, model: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"[{{'type': 'json_invalid', 'loc': ('body', {error.pos}), 'msg': 'JSON decode error', "
            f"'ctx': {{'error': {error.msg!r}}}}}]",
        ) from None
    if not isinstance(payload, dict):
        raise validation_error(model, "body", "Input should be a valid dictionary", payload, "dict_type")
    return payload


_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    dict: "dictionary",
}


def field(
    payload: dict[str, Any], name: str, types: tuple[type, ...], model: str, default: Any = None
) -> Any:
    """A field of the request, type-checked (a bool is not an integer, as pydantic's strict numbers)."""
    value = payload.get(name, default)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        expected = _TYPE_NAMES.get(types[0], types[0].__name__)
        raise validation_error(model, name, f"Input should be a valid {expected}", value, f"{expected}_type")
    return value


@dataclass(slots=True)
class GenerationRequest:
    """What a chat or completion request asks the engine for."""

    kind: str  # "chat" or "completion"
    model: str
    prompt_token_ids: list[int]
    max_tokens: int
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool
    cache_salt: str | None
    request_id: str | None


def check_cache_salt(value: Any, model: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise validation_error(
            model, "cache_salt", "Parameter 'cache_salt' must be a non-empty string if provided.", value
        )
    if len(value) > CACHE_SALT_MAX_CHARS:
        raise validation_error(
            model,
            "cache_salt",
            f"Parameter 'cache_salt' must be at most {CACHE_SALT_MAX_CHARS} characters.",
            value,
        )
    if any(char in value for char in CACHE_SALT_FORBIDDEN):
        raise validation_error(
            model,
            "cache_salt",
            "Parameter 'cache_salt' must not contain '@', '/', '\\' or NUL characters.",
            value,
        )
    return value


_NOT_MODELED = {
    "n": lambda v: v not in (None, 1),
    "best_of": lambda v: v not in (None, 1),
    "use_beam_search": lambda v: bool(v),
    "echo": lambda v: bool(v),
    "logprobs": lambda v: bool(v),
    "top_logprobs": lambda v: bool(v),
    "prompt_logprobs": lambda v: v is not None,
}


def parse_generation(
    payload: dict[str, Any],
    kind: str,
    tokenizer: Tokenizer,
    max_model_len: int,
    default_chat_max_tokens: int,
) -> GenerationRequest:
    request_model = "ChatCompletionRequest" if kind == "chat" else "CompletionRequest"
    model = field(payload, "model", (str,), request_model)
    stream = field(payload, "stream", (bool,), request_model, False)
    stream_options = field(payload, "stream_options", (dict,), request_model)
    if stream_options is not None and not stream:
        raise validation_error(
            request_model,
            "stream_options",
            "Value error, Stream options can only be defined when `stream=True`.",
            stream_options,
        )
    stream_options = stream_options or {}
    include_usage = field(stream_options, "include_usage", (bool,), request_model, False)
    continuous_usage = field(stream_options, "continuous_usage_stats", (bool,), request_model, False)
    for name, unsupported in _NOT_MODELED.items():
        if unsupported(payload.get(name)):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"'{name}' is not modeled by the simulator (it generates one deterministic sequence)",
                "BadRequestError",
                name,
            )
    cache_salt = check_cache_salt(payload.get("cache_salt"), request_model)
    request_id = field(payload, "request_id", (str,), request_model)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        field(payload, name, (int, float), request_model)
    for name in ("seed", "top_k", "min_tokens"):
        field(payload, name, (int,), request_model)

    if kind == "chat":
        prompt_token_ids = _chat_prompt(payload, tokenizer, request_model)
        max_tokens = field(payload, "max_completion_tokens", (int,), request_model)
        if max_tokens is None:
            max_tokens = field(payload, "max_tokens", (int,), request_model)
    else:
        prompt_token_ids = _completion_prompt(payload, tokenizer, request_model)
        max_tokens = field(payload, "max_tokens", (int,), request_model)
    max_tokens_given = max_tokens is not None
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"max_tokens must be at least 1, got {max_tokens}.",
            "BadRequestError",
            "max_tokens",
        )

    prompt_len = len(prompt_token_ids)
    if prompt_len >= max_model_len:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"This model's maximum context length is {max_model_len} tokens. However, your request has "
            f"{prompt_len} input tokens. Please reduce the length of the input messages.",
            "BadRequestError",
            "input_tokens",
        )
    if max_tokens is None:
        default = default_chat_max_tokens if kind == "chat" else COMPLETIONS_DEFAULT_MAX_TOKENS
        max_tokens = min(default, max_model_len - prompt_len)
    elif prompt_len + max_tokens > max_model_len:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. "
            f"This model's maximum context length is {max_model_len} tokens and your request has "
            f"{prompt_len} input tokens "
            f"({max_tokens} > {max_model_len} - {prompt_len}).",
            "BadRequestError",
            "max_tokens",
        )
    return GenerationRequest(
        kind=kind,
        model=model or "",
        prompt_token_ids=prompt_token_ids,
        max_tokens=max_tokens,
        max_tokens_given=max_tokens_given,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        cache_salt=cache_salt,
        request_id=request_id,
    )


def _chat_prompt(payload: dict[str, Any], tokenizer: Tokenizer, request_model: str) -> list[int]:
    messages = payload.get("messages")
    if messages is None:
        raise validation_error(request_model, "messages", "Field required", None, "missing")
    if not isinstance(messages, list):
        raise validation_error(
            request_model, "messages", "Input should be a valid list", messages, "list_type"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise validation_error(
                request_model,
                f"messages.{index}",
                "Input should be a message object with a string 'role'",
                message,
            )
    tools = field(payload, "tools", (list,), request_model)
    add_generation_prompt = field(payload, "add_generation_prompt", (bool,), request_model, True)
    prompt = render_chat(messages, tools, add_generation_prompt)
    return tokenizer.encode(prompt)


def _completion_prompt(payload: dict[str, Any], tokenizer: Tokenizer, request_model: str) -> list[int]:
    prompt = payload.get("prompt")
    if prompt is None:
        raise validation_error(request_model, "prompt", "Field required", None, "missing")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if any(not 0 <= t < 2**32 for t in prompt):
            raise validation_error(
                request_model, "prompt", "Token ids must be unsigned 32-bit integers", prompt
            )
        ids = list(prompt)
    elif isinstance(prompt, list):
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "the simulator serves one prompt per request", "BadRequestError", "prompt"
        )
    else:
        raise validation_error(
            request_model, "prompt", "Input should be a valid string or list of token ids", prompt
        )
    if not ids:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Prompt cannot be empty", "BadRequestError", "prompt")
    return ids


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body


def chat_response(
    response_id: str, created: int, model: str, text: str, finish_reason: str, usage_body: dict[str, Any]
) -> dict[str, Any]:
    usage_body.setdefault("prompt_tokens_details", None)
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "reasoning_content": None,
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_body,
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def completion_response(
    response_id: str, created: int, model: str, text: str, finish_reason: str, usage_body: dict[str, Any]
) -> dict[str, Any]:
    usage_body.setdefault("prompt_tokens_details", None)
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_body,
        "kv_transfer_params": None,
    }


class StreamFormatter:
    """SSE chunks of one streamed response. Each token is its own chunk; the prefix and suffix of a token
    chunk are built once, so a chunk costs one JSON string of the token's text."""

    __slots__ = ("_final_suffix", "_head", "_prefix", "_suffix", "kind")

    def __init__(self, kind: str, response_id: str, created: int, model: str) -> None:
        self.kind = kind
        model_json = orjson.dumps(model).decode()
        if kind == "chat":
            self._head = (
                f'{{"id":"{response_id}","object":"chat.completion.chunk","created":{created},'
                f'"model":{model_json},'
            )
            self._prefix = f'data: {self._head}"choices":[{{"index":0,"delta":{{"content":'.encode()
            self._suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
            self._final_suffix = b'},"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n'
        else:
            self._head = (
                f'{{"id":"{response_id}","object":"text_completion","created":{created},"model":{model_json},'
            )
            self._prefix = f'data: {self._head}"choices":[{{"index":0,"text":'.encode()
            self._suffix = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            self._final_suffix = b',"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n'

    def role_chunk(self) -> bytes:
        return (
            f'data: {self._head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},'
            f'"logprobs":null,"finish_reason":null}}]}}\n\n'
        ).encode()

    def token_chunk(self, text_json: bytes) -> bytes:
        return self._prefix + text_json + self._suffix

    def final_token_chunk(self, text_json: bytes, finish_reason: str) -> bytes:
        return self._prefix + text_json + self._final_suffix % finish_reason.encode()

    def token_chunk_with_usage(
        self, text_json: bytes, finish_reason: str | None, usage_body: dict[str, Any]
    ) -> bytes:
        choice = (
            b'{"index":0,"delta":{"content":' + text_json + b"}"
            if self.kind == "chat"
            else (b'{"index":0,"text":' + text_json)
        )
        reason = b"null" if finish_reason is None else b'"' + finish_reason.encode() + b'"'
        tail = b',"logprobs":null,"finish_reason":' + reason
        if finish_reason is not None or self.kind != "chat":
            tail += b',"stop_reason":null'
        return (
            b"data: "
            + self._head.encode()
            + b'"choices":['
            + choice
            + tail
            + b'}],"usage":'
            + orjson.dumps(usage_body)
            + b"}\n\n"
        )

    def usage_chunk(self, usage_body: dict[str, Any]) -> bytes:
        return (
            b"data: " + self._head.encode() + b'"choices":[],"usage":' + orjson.dumps(usage_body) + b"}\n\n"
        )


SSE_DONE = b"data: [DONE]\n\n"


def sse_error(error: ApiError) -> bytes:
    return b"data: " + error.body() + b"\n\n"
