"""Block identities of prompts, for the hit-rate ceiling.

`RenderedChat` follows a chat conversation the way the simulator and the gateway see it: the ChatML
text of `gateway.chat_template`, cut into 64-byte blocks (16 tokens of the built-in tokenizer, the
simulator's cache block), each block's key chained on the previous one. Equal keys therefore mean
byte-identical prefixes, exactly what a prefix cache can reuse. Appending a message renders and hashes
only the new text, so following a growing agent history costs time in proportion to what was added.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from typing import Any

import xxhash

from gateway.chat_template import render_chat, render_message
from gateway.tokenizer import BYTES_PER_TOKEN

CHAT_BLOCK_TOKENS = 16
CHAT_BLOCK_BYTES = CHAT_BLOCK_TOKENS * BYTES_PER_TOKEN
GENERATION_PROMPT_BYTES = len(render_chat([], None, add_generation_prompt=True).encode())
_CHAIN_SEED = 0x6B76_6761_7465  # "kvgate"


class RenderedChat:
    """The rendered text of `tools` + messages so far (without the generation prompt), as chained keys."""

    __slots__ = ("_keys", "_last_key", "_length", "_tail")

    def __init__(self, tools: list[Any] | None = None) -> None:
        self._keys = array("Q")
        self._tail = b""
        self._length = 0
        self._last_key = _CHAIN_SEED
        if tools:
            self.append_text(render_chat([], tools, add_generation_prompt=False))

    def copy(self) -> RenderedChat:
        clone = RenderedChat.__new__(RenderedChat)
        clone._keys = array("Q", self._keys)
        clone._tail = self._tail
        clone._length = self._length
        clone._last_key = self._last_key
        return clone

    def append_message(self, message: Mapping[str, Any]) -> None:
        self.append_text(render_message(message))

    def append_text(self, text: str) -> None:
        data = self._tail + text.encode()
        self._length += len(data) - len(self._tail)
        full = len(data) - len(data) % CHAT_BLOCK_BYTES
        key = self._last_key
        keys = self._keys
        for offset in range(0, full, CHAT_BLOCK_BYTES):
            key = xxhash.xxh3_64_intdigest(data[offset : offset + CHAT_BLOCK_BYTES], seed=key)
            keys.append(key)
        self._last_key = key
        self._tail = data[full:]

    @property
    def block_keys(self) -> array:
        return self._keys

    @property
    def block_count(self) -> int:
        return len(self._keys)

    @property
    def rendered_bytes(self) -> int:
        return self._length

    def prompt_tokens(self) -> int:
        """Tokens of the full prompt (with the generation prompt) in the built-in tokenizer."""
        return -(-(self._length + GENERATION_PROMPT_BYTES) // BYTES_PER_TOKEN)
