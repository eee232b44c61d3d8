import orjson
import pytest

from gateway.errors import APIError
from gateway.request import parse_request

MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields) -> bytes:
    return orjson.dumps({"model": "m", "messages": MESSAGES, **fields})


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (orjson.dumps({"model": "m"}), "messages"),
        (orjson.dumps({"model": "m", "messages": []}), "messages"),
        (orjson.dumps({"model": "m", "messages": ["hi"]}), "messages"),
        (orjson.dumps({"model": "m", "messages": [{"content": "hi"}]}), "messages"),
        (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": 5}]}), "messages"),
        (body(model=7), "model"),
        (body(stream="yes"), "stream"),
        (body(stream_options={"include_usage": True}), "stream_options"),
        (body(stream=True, stream_options=[1]), "stream_options"),
        (body(stream=True, stream_options={"include_usage": "yes"}), "stream_options"),
        (body(max_tokens="10"), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (body(max_tokens=-1), "max_tokens"),
        (body(cache_salt=""), "cache_salt"),
        (body(cache_salt="a/b"), "cache_salt"),
        (body(cache_salt="x" * 129), "cache_salt"),
        (body(cache_salt=3), "cache_salt"),
        (body(tools={"a": 1}), "tools"),
    ],
)
def test_bad_chat_requests_are_400_naming_the_parameter(raw, param):
    with pytest.raises(APIError) as caught:
        parse_request("chat", raw)
    assert caught.value.status == 400
    assert caught.value.param == param
    error = orjson.loads(caught.value.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == 400


@pytest.mark.parametrize(
    "prompt", ["", [], [""], [1, -1], [1, 2**32], [[1], []], [1.5], {"a": 1}, None, [True]]
)
def test_bad_completion_prompts_are_400(prompt):
    with pytest.raises(APIError) as caught:
        parse_request("completion", orjson.dumps({"model": "m", "prompt": prompt}))
    assert caught.value.status == 400 and caught.value.param == "prompt"


def test_stream_usage_is_added_upstream_only_when_the_client_did_not_ask():
    quiet = parse_request("chat", body(stream=True))
    assert not quiet.client_wants_usage
    assert orjson.loads(quiet.upstream_body())["stream_options"] == {"include_usage": True}
    asked = parse_request("chat", body(stream=True, stream_options={"include_usage": True}))
    assert asked.client_wants_usage
    unary = parse_request("chat", body())
    assert "stream_options" not in orjson.loads(unary.upstream_body())


def test_session_comes_from_header_then_body_then_user():
    assert parse_request("chat", body(session_id="s1", user="u"), "h1").session_id == "h1"
    assert parse_request("chat", body(session_id="s1", user="u")).session_id == "s1"
    assert parse_request("chat", body(user="u")).session_id == "u"


def test_unknown_fields_pass_through_untouched():
    parsed = parse_request("chat", body(temperature=0.2, vllm_xargs={"a": 1}, stream=True))
    forwarded = orjson.loads(parsed.upstream_body())
    assert forwarded["temperature"] == 0.2 and forwarded["vllm_xargs"] == {"a": 1}
    assert forwarded["messages"] == MESSAGES
