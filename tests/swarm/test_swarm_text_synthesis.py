"""Prompt text made from hash ids: byte-identical for equal id prefixes, and the recorded length."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat_template import render_chat
from gateway.tokenizer import ByteTokenizer
from loadtest.swarm.plan import Send, walk
from loadtest.swarm.textgen import LEXICON, WORD_BYTES, text_key, words
from loadtest.swarm.traces import load_mooncake, load_trace
from loadtest.swarm.workloads.replay import MooncakeReplay, ReplayOptions, WekaReplay
from loadtest.swarm.workloads.replay_prompt import build_prompt
from tests.swarm.swarm_helpers import MOONCAKE_CONVERSATION, WEKA_DIR, needs_traces

TOKENIZER = ByteTokenizer()


def rendered(request) -> str:
    """The exact prompt the simulator renders and tokenizes."""
    if request.api == "completions":
        return request.payload["prompt"]
    return render_chat(request.payload["messages"], request.payload.get("tools"))


def test_every_word_is_one_token_and_text_is_a_pure_function_of_its_key():
    assert all(TOKENIZER.count(word) == 1 for word in LEXICON)
    text = words(text_key("scope", 42), 100)
    assert len(text.encode()) == 100 * WORD_BYTES and TOKENIZER.count(text) == 100
    assert text == words(text_key("scope", 42), 100)
    assert text != words(text_key("scope", 43), 100)
    assert words(text_key("scope", 42), 250).startswith(text)  # a shorter run is a prefix


@given(
    shared=st.lists(st.integers(0, 10**6), max_size=12),
    tail_a=st.lists(st.integers(0, 10**6), max_size=6),
    tail_b=st.lists(st.integers(0, 10**6), max_size=6),
    extra_a=st.integers(0, 63),
    extra_b=st.integers(0, 63),
    api=st.sampled_from(["chat", "completions"]),
)
@settings(max_examples=60, deadline=None)
def test_equal_id_prefixes_give_byte_identical_prompt_prefixes(shared, tail_a, tail_b, extra_a, extra_b, api):
    block = 64

    def prompt(ids, extra):
        keys = [text_key("conversation", i) for i in ids]
        built = build_prompt(api, keys, block, len(ids) * block + extra + 40, text_key("tail", len(ids)))
        return built.payload["prompt"] if api == "completions" else render_chat(built.payload["messages"])

    first = prompt(shared + tail_a, extra_a)
    second = prompt(shared + tail_b, extra_b)
    common = len(shared) * block * WORD_BYTES
    header = 0 if api == "completions" else len("<|im_start|>user\n")
    assert first[: header + common] == second[: header + common]


@needs_traces
@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("shared_prefix", [False, True])
def test_replayed_weka_requests_have_the_recorded_token_count(api, shared_prefix):
    trace = load_trace(
        [WEKA_DIR / name for name in ("trace_0279.json.gz", "trace_0007.json.gz", "trace_0291.json.gz")]
    )
    workload = WekaReplay(trace.conversations, ReplayOptions(api=api, shared_prefix=shared_prefix))
    recorded = {
        conversation.id: [r.input_tokens for r in conversation.top_level_requests]
        + [r.input_tokens for sub in conversation.subagents for r in sub.requests]
        for conversation in trace.conversations
    }
    checked = 0
    while (session := workload.next_session(0)) is not None:
        sent = [action.request for _, action in walk(session) if isinstance(action, Send)]
        top = [r for r in sent if r.kind == "replay"]
        subs = [r for r in sent if r.kind == "subagent"]
        for request, expected in zip(top + subs, recorded[session.id], strict=True):
            tokens = TOKENIZER.count(rendered(request))
            assert abs(tokens - expected) <= 0.02 * expected, (session.id, tokens, expected)
            assert tokens == request.prompt_tokens
            checked += 1
    assert checked == sum(len(counts) for counts in recorded.values())


@needs_traces
def test_replayed_mooncake_requests_have_the_recorded_token_count():
    records = load_mooncake(MOONCAKE_CONVERSATION)[:400]
    workload = MooncakeReplay(records, ReplayOptions())
    for (_, request), record in zip(workload.schedule(), records, strict=True):
        tokens = TOKENIZER.count(rendered(request))
        assert abs(tokens - record.input_tokens) <= 0.02 * record.input_tokens
        assert request.max_tokens == record.output_tokens


@needs_traces
def test_consecutive_turns_of_a_conversation_share_their_common_blocks_byte_for_byte():
    trace = load_trace([WEKA_DIR / "trace_0001.json.gz"])
    workload = WekaReplay(trace.conversations, ReplayOptions())
    requests = [a.request for _, a in walk(workload.next_session(0)) if isinstance(a, Send)][:12]
    ids = [r.hash_ids for r in trace.conversations[0].top_level_requests[:12]]
    for (previous, current), (old_ids, new_ids) in zip(
        itertools.pairwise(requests), itertools.pairwise(ids), strict=True
    ):
        common = next(
            (i for i, (a, b) in enumerate(zip(old_ids, new_ids, strict=False)) if a != b),
            min(len(old_ids), len(new_ids)),
        )
        old_text = "".join(message["content"] for message in previous.payload["messages"])
        new_text = "".join(message["content"] for message in current.payload["messages"])
        # The previous prompt lost a few words at its end to the chat template's tokens, so the texts
        # agree on the common blocks, or on all of the previous text where it ends inside them.
        agreed = min(common * 64 * WORD_BYTES, len(old_text))
        assert agreed > 0.99 * common * 64 * WORD_BYTES
        assert old_text[:agreed] == new_text[:agreed]
        system, user = (message["content"] for message in previous.payload["messages"])
        shared_render = rendered(previous).index(user) + agreed - len(system)
        assert rendered(current)[:shared_render] == rendered(previous)[:shared_render]
        assert current.sent_prefix_blocks == common
