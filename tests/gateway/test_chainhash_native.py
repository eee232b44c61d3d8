"""The C chain (gateway._chainhash) against the Python loop and xxhash itself: same hashes, same edges.

The README's test command builds the extension (scripts/test.sh installs gcc and libxxhash-dev), so an
import failure here is a build that silently fell back to Python, and fails.
"""

import array

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _chainhash, blocks
from gateway.blocks import chain_hashes, python_chain_hashes


def reference_chain(data: bytes, block_size: int, seed: int, count: int) -> list[int]:
    hashes, parent = [], seed
    for k in range(count):
        parent = xxhash.xxh3_64_intdigest(data[k * block_size : (k + 1) * block_size], parent)
        hashes.append(parent)
    return hashes


def test_the_gateway_uses_the_native_chain():
    assert blocks.NATIVE_CHAIN_HASHING


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=3000),
    block_size=st.sampled_from([1, 7, 16, 64, 200]),
    seed=st.integers(0, 2**64 - 1),
    max_blocks=st.integers(0, 80),
    leading=st.integers(0, 10),
)
def test_native_and_python_chains_are_the_same_hashes(data, block_size, seed, max_blocks, leading):
    full = min(len(data) // block_size, max_blocks)
    expected = reference_chain(data, block_size, seed, full)
    known = expected[: min(leading, full)]
    assert chain_hashes(data, block_size, seed, max_blocks) == expected
    assert chain_hashes(data, block_size, seed, max_blocks, list(known)) == expected
    parent = known[-1] if known else seed
    assert python_chain_hashes(data, block_size, parent, full, list(known)) == expected


def test_any_bytes_like_prompt_hashes_the_same():
    ids = array.array("I", range(1, 200))
    as_bytes = ids.tobytes()
    expected = reference_chain(as_bytes, 64, 5, len(as_bytes) // 64)
    for data in (as_bytes, bytearray(as_bytes), memoryview(as_bytes), ids):
        hashes: list[int] = []
        _chainhash.extend_chain(hashes, data, 64, 0, len(as_bytes) // 64, 5)
        assert hashes == expected


@pytest.mark.parametrize(
    "block_size, start, end",
    [(0, 0, 1), (-64, 0, 1), (64, -1, 1), (64, 2, 1), (64, 0, 3)],
)
def test_out_of_range_blocks_raise_instead_of_reading_past_the_data(block_size, start, end):
    with pytest.raises(ValueError):
        _chainhash.extend_chain([], b"x" * 128, block_size, start, end, 0)


def test_wrong_argument_types_raise_type_errors():
    with pytest.raises(TypeError):
        _chainhash.extend_chain((), b"x" * 128, 64, 0, 1, 0)
    with pytest.raises(TypeError):
        _chainhash.extend_chain([], "text", 64, 0, 1, 0)
