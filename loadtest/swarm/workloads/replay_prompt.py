"""Prompts for recorded requests: text made from hash ids, with the recorded token count.

Each hash id becomes a block of `block_tokens` words (see `loadtest.swarm.textgen`) determined by the
id's key alone, so requests whose id lists share a prefix share a byte-identical text prefix. A WEKA
request lists full blocks only; its partial last block (`in % 64` tokens) is text of its own. A
Mooncake request's last id is its partial block, which is simply cut short.

The chat template adds a few tokens around the text (`<|im_start|>user\\n`...); the builder takes them
off the text so the rendered prompt has the recorded token count in the built-in tokenizer. When the
request starts with its conversation's system/tool prefix, those blocks go into a system message and
the rest into one user message; otherwise everything is one user message. `/v1/completions` sends the
text alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.chat_template import render_chat
from gateway.tokenizer import BYTES_PER_TOKEN
from loadtest.swarm.plan import Api
from loadtest.swarm.textgen import WORD_BYTES, block_text, words


def _template_overhead_tokens(roles: tuple[str, ...]) -> int:
    rendered = render_chat([{"role": role, "content": ""} for role in roles])
    return -(-len(rendered.encode()) // BYTES_PER_TOKEN)


_OVERHEAD_TOKENS = {
    ("user",): _template_overhead_tokens(("user",)),
    ("system", "user"): _template_overhead_tokens(("system", "user")),
}


def template_overhead_tokens(api: Api, system_message: bool) -> int:
    """Tokens the chat template adds around the text of a replayed request (0 for completions)."""
    if api == "completions":
        return 0
    return _OVERHEAD_TOKENS[("system", "user") if system_message else ("user",)]


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    payload: dict
    prompt_tokens: int


def build_prompt(
    api: Api,
    block_keys: Sequence[int],
    block_tokens: int,
    input_tokens: int,
    tail_key: int,
    system_blocks: int = 0,
) -> BuiltPrompt:
    """A request whose rendered prompt has `input_tokens` tokens, made of the blocks of `block_keys`
    (then `tail_key`'s words if the blocks are fewer than the tokens), the first `system_blocks` of
    them as the system message."""
    roles = ("system", "user") if system_blocks > 0 else ("user",)
    overhead = template_overhead_tokens(api, system_message=system_blocks > 0)
    word_count = max(1, input_tokens - overhead)
    full_blocks = min(len(block_keys), word_count // block_tokens)
    parts = [block_text(key, block_tokens) for key in block_keys[:full_blocks]]
    remaining = word_count - full_blocks * block_tokens
    if remaining:
        if full_blocks < len(block_keys):
            # Words of a key are a prefix of its longer runs, so a cut block is a prefix of the full one.
            parts.append(block_text(block_keys[full_blocks], block_tokens)[: remaining * WORD_BYTES])
        else:
            parts.append(words(tail_key, remaining))
    prompt_tokens = word_count + overhead
    if api == "completions":
        return BuiltPrompt({"prompt": "".join(parts)}, prompt_tokens)
    if roles == ("user",):
        return BuiltPrompt({"messages": [{"role": "user", "content": "".join(parts)}]}, prompt_tokens)
    split = min(system_blocks, len(parts))
    messages = [
        {"role": "system", "content": "".join(parts[:split])},
        {"role": "user", "content": "".join(parts[split:])},
    ]
    return BuiltPrompt({"messages": messages}, prompt_tokens)
