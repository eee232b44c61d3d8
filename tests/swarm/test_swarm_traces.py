import gzip
import json
import math

import pytest

from loadtest.swarm.traces import (
    SubAgent,
    TraceError,
    TraceRequest,
    detect_format,
    load_mooncake,
    load_trace,
    load_weka_conversation,
    shared_prefix_length,
)
from tests.swarm.swarm_helpers import MOONCAKE_CONVERSATION, WEKA_DIR, WEKA_WITH_SUBAGENTS, needs_traces


@needs_traces
def test_weka_conversation_with_subagents_parses_into_requests_and_forks():
    conversation = load_weka_conversation(WEKA_WITH_SUBAGENTS)
    assert conversation.id == "trace_0279"
    assert conversation.block_tokens == 64 and conversation.hash_id_scope == "local"
    subagents = conversation.subagents
    assert len(subagents) == 2 and all(isinstance(sub, SubAgent) for sub in subagents)
    assert subagents[0].t == pytest.approx(2326.599) and subagents[0].agent_type == "Explore"
    assert subagents[0].system_tokens == 1036 and subagents[0].tool_tokens == 7401
    assert len(subagents[0].requests) == 7 and subagents[0].requests[0].t == 0.0
    for request in conversation.top_level_requests + [r for sub in subagents for r in sub.requests]:
        assert len(request.hash_ids) == request.input_tokens // 64  # WEKA lists full blocks only
        assert request.think_s >= 0


def test_missing_think_time_is_the_gap_after_the_previous_response(tmp_path):
    document = {
        "id": "tiny",
        "block_size": 64,
        "hash_id_scope": "local",
        "system_tokens": 10,
        "tool_tokens": 100,
        "requests": [
            {"t": 0.0, "type": "n", "in": 200, "out": 5, "hash_ids": [1, 2, 3], "api_time": 4.0},
            {"t": 10.0, "type": "n", "in": 300, "out": 5, "hash_ids": [1, 2, 3, 4]},
            {"t": 15.0, "type": "n", "in": 300, "out": 5, "hash_ids": [1, 2, 3, 4], "think_time": 2.5},
        ],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(document))
    conversation = load_weka_conversation(path)
    thinks = [request.think_s for request in conversation.entries if isinstance(request, TraceRequest)]
    assert thinks == [0.0, 6.0, 2.5]
    gz_path = tmp_path / "tiny.json.gz"
    gz_path.write_bytes(gzip.compress(path.read_bytes()))
    assert load_weka_conversation(gz_path).entries == conversation.entries


@needs_traces
def test_mooncake_records_are_timed_in_seconds_with_512_token_blocks():
    records = load_mooncake(MOONCAKE_CONVERSATION)
    assert len(records) == 12031
    first = records[0]
    assert (first.timestamp_s, first.input_tokens, first.output_tokens) == (0.0, 6758, 500)
    assert first.hash_ids[:3] == [0, 1, 2] and first.block_tokens == 512
    assert all(len(r.hash_ids) == math.ceil(r.input_tokens / 512) for r in records[:2000])
    assert records[-1].timestamp_s == pytest.approx(3537, abs=1)


@needs_traces
def test_formats_are_told_by_name_and_not_mixed(tmp_path):
    assert detect_format(WEKA_WITH_SUBAGENTS) == "weka"
    assert detect_format(MOONCAKE_CONVERSATION) == "mooncake"
    with pytest.raises(TraceError, match="mix"):
        load_trace([WEKA_WITH_SUBAGENTS, MOONCAKE_CONVERSATION])
    assert len(load_trace([WEKA_DIR]).conversations) == 120
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"timestamp": 1}\n')
    with pytest.raises(TraceError, match=r"broken\.jsonl:1"):
        load_trace([broken])
    with pytest.raises(TraceError, match="no such file"):
        load_trace([tmp_path / "missing.json"])


def test_shared_prefix_length_stops_at_the_first_difference():
    assert shared_prefix_length([1, 2, 3, 9], [1, 2, 3]) == 3
    assert shared_prefix_length([1, 5, 3], [1, 2, 3]) == 1
    assert shared_prefix_length([7], [1, 2]) == 0
