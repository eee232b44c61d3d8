"""The chain memo: a conversation's next turn reuses its previous prompt's chain, and the result is
always exactly what hashing the whole prompt gives."""

import asyncio

import orjson
import pytest

from gateway import blocks
from gateway.blocks import ByteBlockHasher, chain_seed
from gateway.chain_memo import ChainMemo, boundary_keys
from gateway.config import load_config
from gateway.request import parse_request
from gateway.service import GatewayService

TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]


def conversation(turns: int, salt: str | None = None, first: str = "Fix the failing test.") -> bytes:
    messages = [
        {"role": "system", "content": "You are a coding agent. " * 40},
        {"role": "user", "content": first},
    ]
    for turn in range(turns):
        messages.append({"role": "assistant", "content": f"step {turn}: " + "reading the code " * 30})
        messages.append({"role": "tool", "tool_call_id": f"call_{turn}", "content": f"file {turn} " * 200})
    body = {"model": "m", "messages": messages, "tools": TOOLS}
    if salt:
        body["cache_salt"] = salt
    return orjson.dumps(body)


def hashes(hasher: ByteBlockHasher, raw: bytes, tenant: str = "") -> list[int]:
    request = parse_request("chat", raw)
    request.tenant = tenant
    return asyncio.run(hasher.blocks(request, "m")).hashes


def test_each_turn_hashes_exactly_as_without_the_memo_and_reuses_the_previous_turn():
    memo_hasher = ByteBlockHasher(memo_blocks=100_000)
    for turns in range(6):
        raw = conversation(turns)
        request = parse_request("chat", raw)
        keys = boundary_keys(request.prompt_bytes(), request.prompt_boundaries(), 0)
        assert len(keys) == len(request.prompt_boundaries()) == 3 + 2 * turns  # tools, system, user, ...
        got = hashes(memo_hasher, raw)
        assert got == hashes(ByteBlockHasher(), raw)
    assert memo_hasher.memo is not None and len(memo_hasher.memo) == 6


def test_the_next_turn_finds_the_previous_turns_chain():
    hasher = ByteBlockHasher(memo_blocks=100_000)
    previous = hashes(hasher, conversation(3))
    request = parse_request("chat", conversation(4))
    keys = boundary_keys(request.prompt_bytes(), request.prompt_boundaries(), chain_seed("m", None, ""))
    assert hasher.memo is not None
    reused = hasher.memo.longest(keys)
    # everything of the previous prompt but the blocks its generation prompt reached into
    assert len(previous) - 1 <= len(reused) <= len(previous)
    assert reused == previous[: len(reused)]


def test_an_edit_inside_an_earlier_message_reuses_nothing_past_it():
    hasher = ByteBlockHasher(memo_blocks=100_000)
    hashes(hasher, conversation(3))
    edited = conversation(4, first="Fix the failing test, and the flaky one.")
    assert hashes(hasher, edited) == hashes(ByteBlockHasher(), edited)


@pytest.mark.parametrize("change", ["salt", "tenant"])
def test_a_chain_is_never_reused_across_salts_or_tenants(change):
    hasher = ByteBlockHasher(memo_blocks=100_000)
    base = hashes(hasher, conversation(2))
    if change == "salt":
        other = hashes(hasher, conversation(3, salt="tenant-b"))
        fresh = hashes(ByteBlockHasher(), conversation(3, salt="tenant-b"))
    else:
        other = hashes(hasher, conversation(3), tenant="acme")
        fresh = hashes(ByteBlockHasher(), conversation(3), tenant="acme")
    assert other == fresh
    assert not set(other) & set(base)


def test_completions_prompts_do_not_use_the_memo():
    hasher = ByteBlockHasher(memo_blocks=100_000)
    request = parse_request("completion", orjson.dumps({"model": "m", "prompt": "x" * 5000}))
    assert request.prompt_boundaries() == []
    asyncio.run(hasher.blocks(request, "m"))
    assert hasher.memo is not None and len(hasher.memo) == 0


def test_two_conversations_in_turn_always_find_their_previous_turn_in_a_memo_for_two_chains():
    """A hit does not refresh the chain it found: the turn stored next holds it, so the older one must
    be the first out, or each conversation would keep two chains and push the other out."""
    conversations = {name: [conversation(t, first=f"Task {name}") for t in range(6)] for name in "ab"}
    full = {name: [hashes(ByteBlockHasher(), raw) for raw in raws] for name, raws in conversations.items()}
    budget = len(full["a"][-1]) + len(full["b"][-1])
    hasher = ByteBlockHasher(memo_blocks=budget)
    seed = chain_seed("m", None, "")
    for turn in range(6):
        for name in "ab":
            raw = conversations[name][turn]
            request = parse_request("chat", raw)
            keys = boundary_keys(request.prompt_bytes(), request.prompt_boundaries(), seed)
            assert hasher.memo is not None
            found = hasher.memo.longest(keys)
            if turn > 0:
                assert len(found) >= len(full[name][turn - 1]) - 1, (name, turn)
            assert hashes(hasher, raw) == full[name][turn]


def test_the_memo_holds_at_most_its_budget_least_recently_used_out():
    memo = ChainMemo(max_blocks=1000)
    for key in range(30):
        memo.store((key, 64 * 100), list(range(key * 100, key * 100 + 100)))
        assert memo.blocks <= 1000
    assert len(memo) == 10
    assert memo.longest([(19, 6400)]) == []  # evicted
    assert memo.longest([(29, 6400)]) == list(range(2900, 3000))
    memo.store((20, 6400), [])  # the same prompt again: now the most recent
    memo.store((30, 6400), list(range(100)))
    assert memo.longest([(20, 6400)]) != [] and memo.longest([(21, 6400)]) == []
    memo.store((31, 6400), list(range(5000)))  # larger than the whole budget: not kept
    assert memo.longest([(31, 6400)]) == [] and memo.blocks <= 1000


def test_the_memo_is_on_by_default_only_where_blocks_are_hashed_in_python(monkeypatch):
    replicas = [{"url": "http://127.0.0.1:9", "models": ["m"]}]

    def memo_of(overrides: dict) -> ChainMemo | None:
        config = load_config(overrides={"replicas": replicas, **overrides}, environ={})
        hasher = GatewayService(config).hasher
        assert isinstance(hasher, ByteBlockHasher)
        return hasher.memo

    monkeypatch.setattr(blocks, "NATIVE_CHAIN_HASHING", True)
    assert memo_of({}) is None
    assert memo_of({"routing.hash_memo_blocks": 1000}).max_blocks == 1000
    monkeypatch.setattr(blocks, "NATIVE_CHAIN_HASHING", False)
    assert memo_of({}).max_blocks == blocks.PYTHON_HASHING_MEMO_BLOCKS
    assert memo_of({"routing.hash_memo_blocks": 0}) is None
