"""Tokenizers shared by the simulator and the gateway's token-block hashing.

`ByteTokenizer` is the built-in, deterministic tokenizer: the UTF-8 bytes of the text cut into 4-byte
pieces, each piece one token whose id is the piece read as a big-endian unsigned 32-bit integer (the
last piece zero-padded). So one token is about 4 characters of English text, ids are stable across
processes and machines, and decoding is exact (NUL characters excepted: they are dropped). A block of
16 tokens is 64 bytes of text, which is why the gateway's default 64-character blocks line up with the
simulator's cache blocks.

`HFTokenizer` loads a Hugging Face `tokenizer.json` with the `tokenizers` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

BYTES_PER_TOKEN = 4


class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as a uint32 array: what the gateway's token-block hashing reads."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def count(self, text: str) -> int: ...


class ByteTokenizer:
    name = "builtin"

    def encode_array(self, text: str) -> np.ndarray:
        data = text.encode("utf-8")
        padding = -len(data) % BYTES_PER_TOKEN
        return np.frombuffer(data + b"\0" * padding, dtype=">u4").astype(np.uint32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def count(self, text: str) -> int:
        return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)

    def decode(self, ids: Sequence[int]) -> str:
        data = np.asarray(ids, dtype=np.uint64).astype(">u4").tobytes()
        return data.replace(b"\0", b"").decode("utf-8", errors="replace")


class HFTokenizer:
    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        self._tokenizer = _HFTokenizer.from_file(path)
        self.name = path

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.uint32)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


def token_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids as the prefix hashes see them: 4 little-endian bytes each, so 16 tokens are 64 bytes."""
    return np.asarray(token_ids, dtype="<u4").tobytes()


def load_tokenizer(path: str | None) -> Tokenizer:
    """The Hugging Face tokenizer at `path`, or the built-in one when no path is given."""
    return HFTokenizer(path) if path else ByteTokenizer()
