"""The HTTP/1.1 response parser of the swarm's client, on bytes cut at every possible place."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.swarm.http import ConnectionClosed, HttpProtocolError, Origin, ResponseParser

EVENTS = [b'data: {"a": 1}\n\n', b'data: {"b": 22}\n\n', b"data: [DONE]\n\n"]
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in EVENTS)
    + b"0\r\n\r\n"
)


def parse(response: bytes, cuts: list[int]) -> tuple[ResponseParser, bytes, list[float]]:
    received: list[bytes] = []
    times: list[float] = []

    def sink(data: bytes, now: float) -> None:
        received.append(data)
        times.append(now)

    parser = ResponseParser(sink)
    positions = [0, *sorted(set(cuts)), len(response)]
    for step, (start, end) in enumerate(itertools.pairwise(positions)):
        parser.feed(response[start:end], float(step))
    return parser, b"".join(received), times


@given(st.lists(st.integers(1, len(CHUNKED) - 1), max_size=15))
@settings(max_examples=150, deadline=None)
def test_chunked_bodies_come_out_whole_however_the_reads_fall(cuts):
    parser, body, _ = parse(CHUNKED, cuts)
    assert parser.done and parser.status == 200 and parser.keep_alive
    assert body == b"".join(EVENTS)
    assert parser.headers["content-type"] == "text/event-stream"


def test_body_bytes_carry_the_time_of_the_read_that_brought_them():
    first_event_end = CHUNKED.index(EVENTS[0]) + len(EVENTS[0])
    _, _, times = parse(CHUNKED, [first_event_end])
    assert times[0] == 0.0 and times[-1] == 1.0


def test_content_length_and_read_to_close_bodies():
    error = b'{"error": {"message": "no", "type": "BadRequestError", "code": 400}}'
    parser, body, _ = parse(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error), [30]
    )
    assert parser.done and parser.status == 400 and body == error and parser.keep_alive
    parser, body, _ = parse(b"HTTP/1.0 200 OK\r\n\r\nhello", [])
    assert not parser.done and not parser.keep_alive
    parser.feed_eof()
    assert parser.done and body == b"hello"


def test_trailers_and_chunk_extensions_are_skipped_and_close_is_honoured():
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    parser, body, _ = parse(response, [])
    assert parser.done and body == b"hello" and not parser.keep_alive


def test_broken_responses_are_errors():
    with pytest.raises(HttpProtocolError):
        parse(b"SMTP ready\r\n\r\n", [])
    with pytest.raises(HttpProtocolError):
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", [])
    parser, _, _ = parse(CHUNKED[:-10], [])
    with pytest.raises(ConnectionClosed):
        parser.feed_eof()


def test_origins_keep_the_path_prefix_and_default_ports():
    origin = Origin.parse("https://api.example.com/v1")
    assert (origin.port, origin.path_prefix, origin.host_header) == (443, "/v1", "api.example.com")
    assert Origin.parse("http://127.0.0.1:8000/v1").host_header == "127.0.0.1:8000"
    with pytest.raises(ValueError):
        Origin.parse("ftp://x")
