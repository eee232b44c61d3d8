"""Parsing and validating the OpenAI requests the gateway routes.

The gateway checks what it relies on itself (the JSON shape, `model`, the prompt, `stream`,
`stream_options`, `cache_salt`, token limits) and forwards everything else untouched: the engine
validates its own parameters and its 400s reach the client as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Literal

import orjson

from gateway.chat_template import GENERATION_PROMPT, render_chat_parts
from gateway.errors import APIError, bad_request
from gateway.tokenizer import token_bytes

Kind = Literal["chat", "completion"]

CACHE_SALT_MAX_CHARS = 128
_CACHE_SALT_FORBIDDEN = ("@", "/", "\\", "\0")
_TOKEN_ID_LIMIT = 2**32


@dataclass(slots=True)
class InferenceRequest:
    kind: Kind
    body: dict[str, Any]
    model: str | None
    stream: bool
    client_wants_usage: bool
    cache_salt: str | None
    session_id: str | None
    max_output_tokens: int | None
    tenant: str = ""
    _prompt: bytes | None = field(default=None, repr=False)
    _boundaries: list[int] = field(default_factory=list, repr=False)

    def prompt_bytes(self) -> bytes:
        """The prompt as the engine will see it: ChatML text for chat, the text or token ids otherwise.

        Token-id prompts become 4 bytes per token, so 64 bytes are 16 tokens whichever way a prompt came.
        """
        if self._prompt is None:
            self._prompt, self._boundaries = _render_prompt(self.kind, self.body)
        return self._prompt

    def prompt_boundaries(self) -> list[int]:
        """Where in `prompt_bytes()` each rendered message of a chat request ends (the tool schema counts
        as one): the offsets at which a conversation's next turn can start to differ; empty for others."""
        self.prompt_bytes()
        return self._boundaries

    def upstream_body(self) -> bytes:
        """The body to send to the replica: the client's, plus `include_usage` on streams.

        The gateway always asks a stream for its usage chunk, to learn `cached_tokens`; the proxy strips
        that chunk again when the client did not ask for it.
        """
        body = self.body
        if self.stream and not self.client_wants_usage:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body = {**body, "stream_options": options}
        return orjson.dumps(body)


def completion_prompt(body: dict[str, Any]) -> str | list[int]:
    """A completions request's prompt as text or token ids; a batch of prompts routes by its first."""
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
        prompt = prompt[0]
    return prompt


def _render_prompt(kind: Kind, body: dict[str, Any]) -> tuple[bytes, list[int]]:
    if kind == "chat":
        parts = [part.encode() for part in render_chat_parts(body["messages"], body.get("tools"))]
        return b"".join(parts) + _GENERATION_PROMPT, list(accumulate(map(len, parts)))
    prompt = completion_prompt(body)
    if isinstance(prompt, str):
        return prompt.encode(), []
    return token_bytes(prompt), []


_GENERATION_PROMPT = GENERATION_PROMPT.encode()


def _optional(body: dict[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise bad_request(f"'{key}' must be {what}", key)
    if not isinstance(value, types):
        raise bad_request(f"'{key}' must be {what}", key)
    return value


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array of message objects", "messages")
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{position}] must be an object", "messages")
        if not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{position}].role must be a string", "messages")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(
                f"messages[{position}].content must be a string or an array of parts", "messages"
            )
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise bad_request(f"messages[{position}].tool_calls must be an array", "messages")


def _is_token_list(value: Any) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < _TOKEN_ID_LIMIT for t in value)


def _validate_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("'prompt' must not be empty", "prompt")
        return
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) and p for p in prompt):
            return
        if _is_token_list(prompt):
            return
        if all(isinstance(p, list) and p and _is_token_list(p) for p in prompt):
            return
    raise bad_request(
        "'prompt' must be a non-empty string, array of strings, array of token ids or array of such arrays",
        "prompt",
    )


def _validate_cache_salt(salt: Any) -> str | None:
    if salt is None:
        return None
    if not isinstance(salt, str) or not salt:
        raise bad_request("'cache_salt' must be a non-empty string", "cache_salt")
    if len(salt) > CACHE_SALT_MAX_CHARS:
        raise bad_request(f"'cache_salt' must be at most {CACHE_SALT_MAX_CHARS} characters", "cache_salt")
    if any(ch in salt for ch in _CACHE_SALT_FORBIDDEN):
        raise bad_request("'cache_salt' must not contain '@', '/', '\\' or NUL", "cache_salt")
    return salt


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    limit = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = _optional(body, key, int, "an integer")
        if value is not None:
            if value < 0:
                raise bad_request(f"'{key}' must be at least 0", key)
            limit = value  # max_completion_tokens, checked last, wins as in vLLM
    return limit


def parse_request(kind: Kind, raw: bytes, session_header: str | None = None) -> InferenceRequest:
    """Parse and check a chat or completions request body; raise `APIError` on bad input."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")

    model = _optional(body, "model", str, "a string")
    if kind == "chat":
        _validate_messages(body.get("messages"))
        if body.get("tools") is not None and not isinstance(body["tools"], list):
            raise bad_request("'tools' must be an array", "tools")
    else:
        _validate_prompt(body.get("prompt"))

    stream = _optional(body, "stream", bool, "a boolean") or False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object", "stream_options")
        include_usage = options.get("include_usage")
        if include_usage is not None and not isinstance(include_usage, bool):
            raise bad_request("'stream_options.include_usage' must be a boolean", "stream_options")
    wants_usage = bool(stream and options and options.get("include_usage"))

    session = session_header or _optional(body, "session_id", str, "a string") or _user(body)
    return InferenceRequest(
        kind=kind,
        body=body,
        model=model,
        stream=stream,
        client_wants_usage=wants_usage,
        cache_salt=_validate_cache_salt(body.get("cache_salt")),
        session_id=session,
        max_output_tokens=_max_output_tokens(body),
    )


def _user(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    return user if isinstance(user, str) and user else None


def check_body_size(length: int, limit: int) -> None:
    if length > limit:
        raise APIError(413, f"Request body of {length} bytes exceeds the limit of {limit} bytes")
