"""The canonical text rendering of an OpenAI chat request.

kvgate renders chat requests as ChatML, the template of Qwen and many other models:

    <|im_start|>system
    # Tools
    [{"type": "function", ...}]<|im_end|>
    <|im_start|>system
    You are a coding agent.<|im_end|>
    <|im_start|>user
    Fix the bug.<|im_end|>
    <|im_start|>assistant
    <tool_call>{"id": "call_1", "name": "read_file", "arguments": "{}"}</tool_call><|im_end|>
    <|im_start|>tool
    <tool_response id="call_1">...</tool_response><|im_end|>
    <|im_start|>assistant

The tool schema comes first because it is the most stable part of an agent's prompt. Text parts are
joined; any other content part (an image, audio, a file) is rendered as a marker holding a digest of
its JSON, so equal attachments give equal text and unequal ones differ. JSON keeps the client's key
order: an engine sees the bytes the client sent, so a reordering is a real cache miss.

The simulator uses this template to turn chat requests into tokens, and the gateway uses it as the
canonical rendering that it cuts into prefix blocks, so a conversation's next turn renders to a text
that starts with the previous turn's prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import xxhash

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        if part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
            return part["text"]
        digest = xxhash.xxh3_64_hexdigest(orjson.dumps(part, option=orjson.OPT_SORT_KEYS))
        return f"<|{part.get('type', 'part')}:{digest}|>"
    return _json(part)


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, a list of parts, or nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_part_text(part) for part in content)
    return _json(content)


def _tool_call_text(call: Any) -> str:
    if not isinstance(call, Mapping):
        return f"<tool_call>{_json(call)}</tool_call>"
    function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
    body = {"id": call.get("id"), "name": function.get("name"), "arguments": function.get("arguments")}
    return f"<tool_call>{_json(body)}</tool_call>"


def render_message(message: Mapping[str, Any]) -> str:
    role = message.get("role", "user")
    text = content_text(message.get("content"))
    if role == "tool":
        text = f'<tool_response id="{message.get("tool_call_id", "")}">{text}</tool_response>'
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        text += "".join(_tool_call_text(call) for call in tool_calls)
    return f"{IM_START}{role}\n{text}{IM_END}\n"


def render_chat_parts(messages: Iterable[Mapping[str, Any]], tools: list[Any] | None = None) -> list[str]:
    """The rendering of a chat request's `tools` and each of its `messages`, without the generation
    prompt: a conversation's next turn starts with the same parts."""
    parts: list[str] = []
    if tools:
        parts.append(f"{IM_START}system\n# Tools\n{_json(tools)}{IM_END}\n")
    parts.extend(render_message(message) for message in messages)
    return parts


GENERATION_PROMPT = f"{IM_START}assistant\n"


def render_chat(
    messages: Iterable[Mapping[str, Any]],
    tools: list[Any] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render a chat request's `tools` and `messages` as one prompt string."""
    text = "".join(render_chat_parts(messages, tools))
    return text + GENERATION_PROMPT if add_generation_prompt else text


ChatRenderer = Callable[[list[Any], list[Any] | None], str]


def load_chat_template(source: str | None) -> ChatRenderer:
    """The renderer for `source`: None or 'chatml' for the template above, else the path of a Jinja
    template, or of a Hugging Face `tokenizer_config.json` whose `chat_template` is used (with its
    `bos_token` and `eos_token`), rendered as transformers renders it.
    """
    if source in (None, "", "chatml"):
        return render_chat
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    path = Path(source)
    text = path.read_text()
    variables: dict[str, Any] = {}
    if path.suffix == ".json":
        config = json.loads(text)
        template = config.get("chat_template")
        if isinstance(template, list):
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str):
            raise ValueError(f"{source} has no chat_template")
        text = template
        variables = {key: _token_text(config.get(key)) for key in ("bos_token", "eos_token")}

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    environment.globals["raise_exception"] = raise_exception
    compiled = environment.from_string(text)

    def render(messages: list[Any], tools: list[Any] | None = None) -> str:
        return compiled.render(messages=messages, tools=tools, add_generation_prompt=True, **variables)

    return render


def _token_text(token: Any) -> str:
    if isinstance(token, dict):
        return str(token.get("content", ""))
    return "" if token is None else str(token)
