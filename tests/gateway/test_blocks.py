import asyncio

import pytest

from gateway.blocks import ByteBlockHasher, chain_hashes
from gateway.request import parse_request


def chat(*contents: str, salt: str | None = None) -> bytes:
    import orjson

    body = {"model": "m", "messages": [{"role": "user", "content": c} for c in contents]}
    if salt:
        body["cache_salt"] = salt
    return orjson.dumps(body)


def blocks_of(raw: bytes, model: str = "m", tenant: str = "", hasher: ByteBlockHasher | None = None):
    request = parse_request("chat", raw)
    request.tenant = tenant
    return asyncio.run((hasher or ByteBlockHasher()).blocks(request, model))


def test_a_longer_conversation_shares_the_leading_hashes_of_the_shorter():
    short = blocks_of(chat("x" * 1000))
    longer = blocks_of(chat("x" * 1000, "y" * 1000))
    assert len(short.hashes) >= 15
    # the shorter prompt ends with the generation prompt, which the longer replaces: all but the last
    # block that contains it are shared
    shared = len(short.hashes) - 1
    assert longer.hashes[:shared] == short.hashes[:shared]
    assert len(longer.hashes) > len(short.hashes)


def test_different_text_diverges_from_the_first_different_block_on():
    a = blocks_of(chat("a" * 640))
    b = blocks_of(chat("a" * 320 + "b" * 320))
    first_diff = next(i for i, (x, y) in enumerate(zip(a.hashes, b.hashes, strict=False)) if x != y)
    assert 4 <= first_diff <= 6
    assert all(x != y for x, y in zip(a.hashes[first_diff:], b.hashes[first_diff:], strict=False))


@pytest.mark.parametrize("change", ["model", "salt", "tenant"])
def test_model_salt_and_tenant_change_every_hash(change):
    base = blocks_of(chat("z" * 2000))
    if change == "model":
        other = blocks_of(chat("z" * 2000), model="other")
    elif change == "salt":
        other = blocks_of(chat("z" * 2000, salt="tenant-a"))
    else:
        other = blocks_of(chat("z" * 2000), tenant="acme")
    assert len(other.hashes) == len(base.hashes)
    assert not set(other.hashes) & set(base.hashes)


def test_only_full_blocks_are_hashed_and_the_cap_bounds_the_work():
    assert len(chain_hashes(b"x" * 127, 64, 0, 100)) == 1
    assert len(chain_hashes(b"x" * 128, 64, 0, 100)) == 2
    huge = blocks_of(chat("w" * 4_000_000), hasher=ByteBlockHasher(64, max_blocks=256))
    assert len(huge.hashes) == 256
    assert huge.prompt_tokens > 900_000  # the whole prompt still counts, beyond the cap


def test_token_id_prompts_are_four_bytes_per_token():
    request = parse_request(
        "completion", b'{"model": "m", "prompt": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]}'
    )
    blocks = asyncio.run(ByteBlockHasher().blocks(request, "m"))
    assert len(blocks.hashes) == 1  # 17 tokens: one full block of 16
    assert blocks.prompt_tokens == 17
