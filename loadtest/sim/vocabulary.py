"""What the simulator generates: deterministic, readable words, each one token of the served tokenizer.

With the built-in tokenizer every word is exactly four bytes, so each generated token is one built-in token
and the text re-tokenizes to the same ids. With a Hugging Face tokenizer the words that encode to a single
token (with a leading space) are used. The n-th word of a response depends only on the prompt and n, so a
repeated prompt gets the same answer, as greedy sampling would give.
"""

from __future__ import annotations

import orjson
import xxhash

from gateway.tokenizer import BYTES_PER_TOKEN, ByteTokenizer, Tokenizer

FOUR_BYTE_WORDS = (
    "the ", "and ", "for ", "fix ", "bug ", "run ", "add ", "new ", "old ", "use ", "get ", "set ", "all ",
    "one ", "two ", "not ", "now ", "its ", "can ", "log ", "key ", "map ", "row ", "end ", "top ", "let ",
    "try ", "out ", "was ", "has ", "see ", "may ", "way ", "put ", "few ", "own ", "too ", "any ", "via ",
    "per ", "sum ", "max ", "min ", "raw ", "api ", "cli ", "dev ", "src ", "doc ", "env ", "ids ", "job ",
    "ok. ", "so, ", "it. ", "is. ", "to. ", "up. ", "on, ", "in, ", "at, ", "by, ", "or, ", "if, ",
)  # fmt: skip


class OutputVocabulary:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        words: list[tuple[int, str]] = []
        if isinstance(tokenizer, ByteTokenizer):
            for word in FOUR_BYTE_WORDS:
                assert len(word.encode()) == BYTES_PER_TOKEN
                words.append((tokenizer.encode(word)[0], word))
        else:
            seen: set[int] = set()
            for word in FOUR_BYTE_WORDS:
                ids = tokenizer.encode(" " + word.strip())
                if len(ids) != 1 or ids[0] in seen:
                    continue
                text = tokenizer.decode(ids)
                if text.strip() != word.strip():  # an unknown-word token such as [UNK] is no word
                    continue
                seen.add(ids[0])
                words.append((ids[0], text))
            if len(words) < 8:
                raise ValueError(f"tokenizer {tokenizer.name} encodes too few common words as single tokens")
        self.token_ids = [token_id for token_id, _ in words]
        self.text_by_id = dict(words)
        self.json_by_id = {token_id: orjson.dumps(text) for token_id, text in words}

    def token_at(self, seed: int, position: int) -> int:
        index = xxhash.xxh3_64_intdigest(position.to_bytes(4, "little"), seed & 0xFFFFFFFFFFFFFFFF)
        return self.token_ids[index % len(self.token_ids)]

    def text(self, token_ids: list[int]) -> str:
        text_by_id = self.text_by_id
        return "".join(text_by_id[token_id] for token_id in token_ids)
