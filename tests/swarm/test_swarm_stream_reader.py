"""The SSE reader: first token, token count, usage, errors, whatever the byte boundaries."""

import itertools

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.swarm.client import OK, STREAM_ERROR, Exchange, StreamReader, api_base


def chat_chunk(content=None, role=None, finish=None, usage=None, choices=True):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    if choices:
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


USAGE = {"prompt_tokens": 1200, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 1024}}
STREAM = (
    b": keep-alive\n\n"
    + chat_chunk(role="assistant", content="")
    + chat_chunk(content=" cat")
    + chat_chunk(content=" dog")
    + chat_chunk(content=" run")
    + chat_chunk(content=" sun", finish="length")
    + chat_chunk(choices=False, usage=USAGE)
    + b"data: [DONE]\n\n"
)


def read(stream: bytes, cuts: list[int]) -> tuple[Exchange, StreamReader, list[float]]:
    exchange = Exchange(started=0.0)
    first_token_calls: list[float] = []
    reader = StreamReader(exchange, lambda: first_token_calls.append(1.0))
    positions = [0, *sorted(set(cuts)), len(stream)]
    for step, (start, end) in enumerate(itertools.pairwise(positions)):
        reader.feed(stream[start:end], float(step + 1))
    reader.finish(float(len(positions)))
    return exchange, reader, first_token_calls


@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=12))
@settings(max_examples=80, deadline=None)
def test_a_stream_reads_the_same_however_it_is_cut(cuts):
    exchange, reader, first_token_calls = read(STREAM, cuts)
    assert reader.done and exchange.outcome == OK
    assert exchange.content_chunks == 4  # the role-only chunk and the usage chunk carry no token
    assert (exchange.prompt_tokens, exchange.completion_tokens, exchange.cached_tokens) == (1200, 4, 1024)
    assert first_token_calls == [1.0]
    assert exchange.first_token <= exchange.last_token


def test_first_token_time_is_the_first_content_not_the_role_chunk():
    role_chunk_end = STREAM.index(b"\n\n", STREAM.index(b'"role"')) + 2
    cat_chunk_end = STREAM.index(b"\n\n", STREAM.index(b" cat")) + 2
    exchange, _, _ = read(STREAM, [role_chunk_end, cat_chunk_end])
    assert exchange.first_token == 2.0  # the chunk with " cat" arrived in the second read


def test_an_error_event_mid_stream_is_a_stream_error():
    error = {"error": {"message": "KV cache exhausted", "type": "InternalServerError", "code": 500}}
    stream = chat_chunk(content="a") + b"data: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n"
    exchange, reader, _ = read(stream, [])
    assert exchange.outcome == STREAM_ERROR and reader.done
    assert exchange.error_type == "InternalServerError" and "exhausted" in exchange.error_message


def test_completions_chunks_and_a_missing_done_are_understood():
    text_chunk = b'data: {"choices": [{"index": 0, "text": " hat", "finish_reason": null}]}\n\n'
    exchange, reader, _ = read(text_chunk * 3, [])
    assert exchange.content_chunks == 3 and exchange.first_token == 1.0
    assert not reader.done  # without [DONE] the client records the request as an incomplete stream


def test_api_base_accepts_either_form():
    assert api_base("http://h:8000") == api_base("http://h:8000/v1/") == "http://h:8000/v1"
