import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import SSERelay, cached_tokens


def event(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else orjson.dumps(payload)) + b"\n\n"


CONTENT = [event({"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]}) for i in range(5)]
USAGE = event(
    {"choices": [], "usage": {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 96}}}
)
DONE = event(b"[DONE]")
STREAM = b"".join(CONTENT) + USAGE + DONE


def relay_all(relay: SSERelay, pieces: list[bytes]) -> bytes:
    return b"".join(relay.feed(piece) for piece in pieces) + relay.flush()


@given(st.lists(st.integers(1, len(STREAM) - 1), unique=True, max_size=12))
def test_any_split_of_the_stream_relays_the_same_events(cuts):
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    stripped = SSERelay(strip_usage=True)
    assert relay_all(stripped, pieces) == b"".join(CONTENT) + DONE
    assert cached_tokens(stripped.usage) == 96
    kept = SSERelay(strip_usage=False)
    assert relay_all(kept, pieces) == STREAM
    assert cached_tokens(kept.usage) == 96


def test_each_event_is_forwarded_as_soon_as_it_is_complete():
    relay = SSERelay(strip_usage=True)
    assert relay.feed(CONTENT[0][:10]) == b""
    assert relay.feed(CONTENT[0][10:] + CONTENT[1][:5]) == CONTENT[0]


def test_an_error_event_and_events_with_choices_pass_through():
    error = event({"error": {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}})
    with_usage = event({"choices": [{"delta": {}}], "usage": {"prompt_tokens": 3}})
    relay = SSERelay(strip_usage=True)
    assert relay_all(relay, [error + with_usage + DONE]) == error + with_usage + DONE


def test_no_usage_means_no_cached_tokens():
    assert cached_tokens(None) is None
    assert cached_tokens({"prompt_tokens": 3}) is None
