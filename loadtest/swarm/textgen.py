"""Made-up prompt text that tokenizes predictably and is a pure function of a key.

Every piece of text the swarm sends is a run of words drawn from `LEXICON`: 256 common three-letter
English words, each with a leading space, so every word is 4 UTF-8 bytes. That makes one word exactly
one token in the project's built-in tokenizer (4 bytes per token) and, in practice, one token in most
BPE vocabularies too (" cat", " run" are single tokens in GPT-2, Llama and Qwen vocabularies alike).

Text is a pure function of a 64-bit key: `words(key, n)` expands the key with SHAKE-128 into `n` bytes
and maps each byte to a word. Equal keys give byte-identical text on every machine and in every process,
so two requests built from the same key sequence share a byte-identical prefix.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import xxhash

WORD_BYTES = 4

_WORD_LIST = (
    "the and for are but not you all any can had her was one our out day get has him his how man new "
    "now old see two way who boy did its let put say she too use act add age ago aid aim air arm art "
    "ask bad bag bar bed bet big bit box bus buy car cat cow cry cup cut dad dog dry due ear eat egg "
    "end eye fan far fat few fit fix fly fun gap gas god gun guy hat hit hot ice ill job joy key kid "
    "lab law lay leg lie lip lot low mad map mix mom mud net nod nor nut odd off oil pan pay pen pet "
    "pie pig pin pit pop pot raw red rid row rub run sad sat sea set sit six sky son sun tax tea ten "
    "tie tip toe top toy try van war wet win yes yet zoo ant ape arc ash bay bee bin bow cab cap cod "
    "cot cub dam den dew dig dim dip dot dug dye elm fig fin fog fox fur gem gum hay hen hip hog hop "
    "hub hug hut ink inn jam jar jaw jet jog keg kit lad lap led lid log mat men met mop nap nun oak "
    "oar oat owl pad paw pea peg pub pun rag ram rat ray rib rim rod rot rug rye sap saw sew shy sip ski "
    "sly sob sow spy sub sum tab tag tan tap tar tin ton tub tug"
)
LEXICON: tuple[str, ...] = tuple(" " + word for word in _WORD_LIST.split())
assert len(LEXICON) == 256 and len(set(LEXICON)) == 256
assert all(len(word.encode()) == WORD_BYTES for word in LEXICON)

# The lexicon as 32-bit words in memory order, so a digest maps to text with one numpy gather.
_LEXICON_U32 = np.frombuffer("".join(LEXICON).encode("ascii"), dtype=np.uint32)


def text_key(*parts: object) -> int:
    """A 64-bit key for text identified by `parts` (a scope, an id, a position...)."""
    return xxhash.xxh3_64_intdigest("\x1f".join(map(str, parts)).encode())


def words(key: int, count: int) -> str:
    """`count` words (`count` tokens, `4 * count` bytes) determined by `key` alone."""
    if count <= 0:
        return ""
    digest = hashlib.shake_128(key.to_bytes(8, "little", signed=False)).digest(count)
    indices = np.frombuffer(digest, dtype=np.uint8)
    return _LEXICON_U32[indices].tobytes().decode("ascii")


@lru_cache(maxsize=32768)
def block_text(key: int, count: int) -> str:
    """`words(key, count)`, cached: replayed conversations resend the same blocks on every turn."""
    return words(key, count)
