"""Prompt -> prefix blocks: the chained hashes the index is keyed by.

A prompt is cut into fixed-size blocks and each full block is hashed with xxh3-64, seeded by the
previous block's hash, so a block's hash stands for the whole prefix up to and including it: two
prompts share their leading hashes exactly as far as they share their text. The first block is seeded
by the model, the request's `cache_salt` and the tenant, so requests that the engine would never let
share a cache never share hashes either.

The default unit is 64 bytes of UTF-8 (64 characters of ASCII text, about 16 tokens, the engine's
block): bytes rather than characters because they track tokens better across scripts and are cheaper
to slice. Only the first `max_blocks` blocks are hashed, so a 1M-token prompt costs bounded work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import xxhash

from gateway.chain_memo import ChainMemo, boundary_keys
from gateway.chat_template import ChatRenderer
from gateway.request import InferenceRequest, completion_prompt
from gateway.tokenizer import Tokenizer, token_bytes

try:
    from gateway._chainhash import extend_chain as _extend_chain_native
except ImportError:  # built without a C compiler or xxhash.h: the Python loop gives the same hashes
    _extend_chain_native = None

_hash = xxhash.xxh3_64_intdigest

NATIVE_CHAIN_HASHING = _extend_chain_native is not None

PYTHON_HASHING_MEMO_BLOCKS = 262_144


def default_memo_blocks() -> int:
    """The chain memo's size where the configuration does not set it: on where the chain is hashed in
    Python (it spares a next turn 0.4 ms at the median), off where the C extension hashes it (in six
    runs it cost an unseen prompt more than it saved a next turn: docs/benchmarks.md)."""
    return 0 if NATIVE_CHAIN_HASHING else PYTHON_HASHING_MEMO_BLOCKS


BYTES_PER_TOKEN_ESTIMATE = 4.0


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    hashes: list[int]
    """Chained hashes of the leading full blocks, at most `max_blocks` of them."""
    tokens_per_block: float
    prompt_tokens: int
    """The whole prompt's length in tokens (estimated for byte blocks), beyond the cap too."""

    @property
    def hashed_tokens(self) -> float:
        return len(self.hashes) * self.tokens_per_block


class BlockHasher(Protocol):
    tokens_per_block: float

    async def blocks(self, request: InferenceRequest, model: str) -> PromptBlocks: ...


@lru_cache(maxsize=4096)
def chain_seed(model: str, cache_salt: str | None, tenant: str) -> int:
    return _hash(f"{model}\0{cache_salt or ''}\0{tenant}".encode())


def chain_hashes(
    data: bytes, block_size: int, seed: int, max_blocks: int, leading: list[int] | None = None
) -> list[int]:
    """xxh3-64 of each full `block_size`-byte block, chained through the seed argument. `leading`, the
    chain of the first blocks when already known, is extended in place from where it ends. In C when
    the extension is built (a 32k-token prompt in 0.06-0.09 ms instead of 0.40-0.55 ms), else in Python."""
    hashes = leading if leading is not None else []
    end_block = min(len(data) // block_size, max_blocks)
    if len(hashes) >= end_block:
        return hashes
    parent = hashes[-1] if hashes else seed
    if _extend_chain_native is not None:
        _extend_chain_native(hashes, data, block_size, len(hashes), end_block, parent)
        return hashes
    return python_chain_hashes(data, block_size, parent, end_block, hashes)


def python_chain_hashes(
    data: bytes, block_size: int, parent: int, end_block: int, hashes: list[int]
) -> list[int]:
    """The same chain in pure Python: blocks len(hashes)..end_block-1, the first seeded by `parent`."""
    view = memoryview(data)
    append = hashes.append
    for start in range(len(hashes) * block_size, end_block * block_size, block_size):
        parent = _hash(view[start : start + block_size], parent)
        append(parent)
    return hashes


class ByteBlockHasher:
    """The default, tokenizer-free unit: fixed-size byte blocks of the canonical prompt. With a memo
    (`memo_blocks` > 0), a chat prompt that extends one hashed recently hashes only its new blocks."""

    def __init__(self, block_bytes: int = 64, max_blocks: int = 8192, memo_blocks: int = 0) -> None:
        if block_bytes <= 0 or max_blocks <= 0:
            raise ValueError("block_bytes and max_blocks must be positive")
        self.block_bytes = block_bytes
        self.max_blocks = max_blocks
        self.tokens_per_block = block_bytes / BYTES_PER_TOKEN_ESTIMATE
        self.memo = ChainMemo(memo_blocks) if memo_blocks > 0 else None

    async def blocks(self, request: InferenceRequest, model: str) -> PromptBlocks:
        data = request.prompt_bytes()
        seed = chain_seed(model, request.cache_salt, request.tenant)
        return PromptBlocks(
            hashes=self._chain(data, request.prompt_boundaries(), seed),
            tokens_per_block=self.tokens_per_block,
            prompt_tokens=max(1, round(len(data) / BYTES_PER_TOKEN_ESTIMATE)),
        )

    def _chain(self, data: bytes, boundaries: list[int], seed: int) -> list[int]:
        memo, size = self.memo, self.block_bytes
        if memo is None or not boundaries:
            return chain_hashes(data, size, seed, self.max_blocks)
        keys = boundary_keys(data, boundaries, seed)
        hashes = chain_hashes(data, size, seed, self.max_blocks, memo.longest(keys))
        memo.store(keys[-1], hashes[: boundaries[-1] // size])
        return hashes


class TokenBlockHasher:
    """Precise mode's unit: the engine's own blocks of `block_size` tokens, hashed as the precise index
    re-hashes the engine's `BlockStored` token ids, so a request's hashes meet the engine's reports.

    Requests are tokenized as the engine tokenizes them, by `tokenize(request, model)`: locally (chat
    rendered by the simulator's ChatML or the model's Jinja chat template, then the tokenizer) or by a
    replica's own `/tokenize`.
    """

    def __init__(self, tokenize: Tokenize, block_size: int = 16, max_blocks: int = 8192) -> None:
        self.tokenize = tokenize
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.tokens_per_block = float(block_size)

    async def blocks(self, request: InferenceRequest, model: str) -> PromptBlocks:
        ids = await self.tokenize(request, model)
        seed = chain_seed(model, request.cache_salt, "")
        return PromptBlocks(
            hashes=chain_hashes(token_bytes(ids), self.block_size * 4, seed, self.max_blocks),
            tokens_per_block=self.tokens_per_block,
            prompt_tokens=max(1, len(ids)),
        )


Tokenize = Callable[[InferenceRequest, str], Awaitable[Sequence[int]]]


def local_tokenize(tokenizer: Tokenizer, render: ChatRenderer) -> Tokenize:
    """Tokenize locally, into an array: a 100k-token prompt as a list of ints and back to bytes for
    hashing cost 4.7 ms with the built-in tokenizer, as an array 0.1 ms."""

    async def tokenize(request: InferenceRequest, model: str) -> Sequence[int]:
        body = request.body
        if request.kind == "chat":
            return tokenizer.encode_array(render(body["messages"], body.get("tools")))
        prompt = completion_prompt(body)
        return tokenizer.encode_array(prompt) if isinstance(prompt, str) else prompt

    return tokenize
