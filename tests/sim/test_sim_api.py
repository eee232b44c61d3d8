"""The OpenAI-compatible API as vLLM speaks it, through the official openai client and raw HTTP."""

import asyncio

import httpx
import openai
import orjson
import pytest

from gateway.chat_template import render_chat
from tests.sim.simtools import MODEL, client_for, stream_chat

MESSAGES = [
    {"role": "system", "content": "You are a coding agent. " * 20},
    {"role": "user", "content": "Fix the failing test."},
]


async def test_streaming_and_non_streaming_chat_through_the_openai_client(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    client = client_for(fleet.urls[0])
    streamed = await stream_chat(client, MESSAGES, max_completion_tokens=12)
    whole = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)

    assert streamed.content_chunks == 12, "each decode step's token is its own chunk"
    assert streamed.finish_reason == "length"
    first, last = streamed.chunks[0], streamed.chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert last.choices == [] and last.usage.completion_tokens == 12
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
    assert whole.choices[0].message.content == streamed.text, "the same prompt gets the same answer"
    assert whole.usage.completion_tokens == 12
    assert whole.usage.prompt_tokens == streamed.usage.prompt_tokens
    assert whole.usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens // 16 * 16
    assert whole.id.startswith("chatcmpl-")


async def test_stream_interval_groups_tokens_into_fewer_chunks_as_vllm_does(start_fleet):
    fleet = await start_fleet(time_scale=1000, stream_interval=4)
    client = client_for(fleet.urls[0])
    streamed = await stream_chat(client, MESSAGES, max_completion_tokens=10)
    whole = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)

    sizes = [
        len(c.choices[0].delta.content) // 4
        for c in streamed.chunks
        if c.choices and c.choices[0].delta.content
    ]
    assert sizes == [1, 4, 4, 1], "the first token alone, then four at a time, then the rest"
    assert streamed.text == whole.choices[0].message.content and streamed.usage.completion_tokens == 10
    assert streamed.finish_reason == "length"


async def test_sse_wire_format_and_default_output_lengths(start_fleet):
    fleet = await start_fleet(time_scale=1000, default_max_tokens=5)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        response = await http.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
        assert response.headers["content-type"].startswith("text/event-stream")
        events = response.text.split("\n\n")
        assert events[-1] == "" and events[-2] == "data: [DONE]"
        payloads = [orjson.loads(event.removeprefix("data: ")) for event in events[:-2]]
        assert all(event.startswith("data: ") for event in events[:-1])
        assert [p["choices"][0]["delta"].get("content") for p in payloads][1:] != []
        assert sum(1 for p in payloads if p["choices"][0]["delta"].get("content")) == 5
        assert payloads[-1]["choices"][0]["finish_reason"] == "length"
        assert all(p["object"] == "chat.completion.chunk" and p["model"] == MODEL for p in payloads)

        completion = (
            await http.post("/v1/completions", json={"model": MODEL, "prompt": "def main():"})
        ).json()
        assert completion["object"] == "text_completion"
        assert completion["usage"]["completion_tokens"] == 16


async def test_completions_streaming_and_token_id_prompts_through_the_openai_client(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    client = client_for(fleet.urls[0])
    stream = await client.completions.create(
        model=MODEL,
        prompt="def parse(text):",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, usage = [], None
    async for chunk in stream:
        texts.extend(choice.text for choice in chunk.choices)
        usage = chunk.usage or usage
    assert len(texts) == 6 and usage.completion_tokens == 6
    by_ids = await client.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5], max_tokens=3)
    assert by_ids.usage.prompt_tokens == 5 and len(by_ids.choices[0].text) == 12


async def test_cache_salt_isolates_tenants(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    client = client_for(fleet.urls[0])

    async def cached(salt):
        extra = {"cache_salt": salt} if salt else {}
        response = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, extra_body=extra
        )
        return response.usage.prompt_tokens_details.cached_tokens

    assert await cached(None) == 0
    assert await cached("tenant-a") == 0
    assert await cached("tenant-a") > 0
    assert await cached("tenant-b") == 0
    assert await cached(None) > 0


async def test_prompt_tokens_details_can_be_left_out_as_vllm_does_by_default(start_fleet):
    fleet = await start_fleet(time_scale=1000, enable_prompt_tokens_details=False)
    client = client_for(fleet.urls[0])
    streamed = await stream_chat(client, MESSAGES, max_tokens=2)
    whole = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert streamed.usage.prompt_tokens_details is None
    assert whole.usage.prompt_tokens_details is None


async def test_models_health_version_load_tokenize_and_detokenize(start_fleet):
    fleet = await start_fleet(time_scale=1000, max_model_len=8192)
    models = await client_for(fleet.urls[0]).models.list()
    assert [m.id for m in models.data] == [MODEL]
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        card = (await http.get("/v1/models")).json()["data"][0]
        assert card["max_model_len"] == 8192 and card["owned_by"] == "vllm" and card["root"] == MODEL
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ping")).status_code == 200
        assert (await http.post("/ping")).status_code == 200
        assert (await http.get("/version")).json() == {"version": "0.26.0"}
        assert (await http.get("/load")).json() == {"server_load": 0}

        tokenized = (await http.post("/tokenize", json={"model": MODEL, "prompt": "abcdefgh"})).json()
        assert tokenized["count"] == 2 and tokenized["max_model_len"] == 8192
        text = (await http.post("/detokenize", json={"tokens": tokenized["tokens"]})).json()
        assert text == {"prompt": "abcdefgh"}
        chat = (await http.post("/tokenize", json={"messages": MESSAGES})).json()
        usage = (
            await client_for(fleet.urls[0]).chat.completions.create(model=MODEL, messages=MESSAGES)
        ).usage
        assert chat["count"] == usage.prompt_tokens


async def test_render_and_model_info_endpoints_that_peer_routers_call(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        rendered = (await http.post("/v1/chat/completions/render", json={"messages": MESSAGES})).json()
        tokenized = (await http.post("/tokenize", json={"messages": MESSAGES})).json()
        assert rendered["token_ids"] == tokenized["tokens"]
        completion = (await http.post("/v1/completions/render", json={"prompt": "abcd"})).json()
        assert (
            completion[0]["token_ids"]
            == (await http.post("/tokenize", json={"prompt": "abcd"})).json()["tokens"]
        )
        for path in ("/model_info", "/get_model_info"):
            assert (await http.get(path)).json()["served_model_name"] == MODEL
        for path in ("/server_info", "/get_server_info"):
            info = (await http.get(path)).json()
            assert info["page_size"] == 16 and info["dp_size"] == 1


async def test_non_streaming_responses_carry_the_orca_load_header_on_request(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    body = {"messages": MESSAGES, "max_tokens": 2}
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        plain = await http.post("/v1/chat/completions", json=body)
        assert "endpoint-load-metrics" not in plain.headers
        text = await http.post(
            "/v1/chat/completions", json=body, headers={"endpoint-load-metrics-format": "TEXT"}
        )
        assert text.headers["endpoint-load-metrics"].startswith("TEXT named_metrics.kv_cache_usage_perc=")
        as_json = await http.post(
            "/v1/chat/completions", json=body, headers={"endpoint-load-metrics-format": "JSON"}
        )
        report = orjson.loads(as_json.headers["endpoint-load-metrics"].removeprefix("JSON "))
        assert set(report["named_metrics"]) == {"kv_cache_usage_perc", "num_requests_waiting"}


def assert_vllm_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


async def test_errors_have_vllms_shape_and_status(start_fleet):
    fleet = await start_fleet(time_scale=1000, max_model_len=1024)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        post = http.post
        headers = {"content-type": "application/json"}
        malformed = await post("/v1/chat/completions", content=b'{"messages": [', headers=headers)
        assert assert_vllm_error(malformed, 400)["type"] == "Bad Request"
        assert_vllm_error(await post("/v1/chat/completions", json={"model": MODEL}), 400, "messages")
        assert_vllm_error(await post("/v1/chat/completions", json=[1, 2]), 400)
        wrong_type = await post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": "many"})
        assert_vllm_error(wrong_type, 400, "max_tokens")
        unknown = assert_vllm_error(
            await post("/v1/chat/completions", json={"model": "gpt-9", "messages": MESSAGES}), 404, "model"
        )
        assert unknown["type"] == "NotFoundError" and "gpt-9" in unknown["message"]
        too_long = {"messages": [{"role": "user", "content": "x" * 8000}]}
        error = assert_vllm_error(await post("/v1/chat/completions", json=too_long), 400, "input_tokens")
        assert "maximum context length is 1024 tokens" in error["message"]
        too_much = {"prompt": "abcd", "max_tokens": 5000}
        assert_vllm_error(await post("/v1/completions", json=too_much), 400, "max_tokens")
        no_stream = {"messages": MESSAGES, "stream_options": {"include_usage": True}}
        assert_vllm_error(await post("/v1/chat/completions", json=no_stream), 400, "stream_options")
        for salt in ("", "a" * 129, "a/b", "a@b", "a\\b", "a\x00b", 7):
            body = {"messages": MESSAGES, "cache_salt": salt}
            assert_vllm_error(await post("/v1/chat/completions", json=body), 400, "cache_salt")
        assert (await http.get("/v1/nothing")).status_code == 404
        assert (await http.get("/v1/chat/completions")).status_code == 405


async def test_the_openai_client_surfaces_the_errors(start_fleet):
    fleet = await start_fleet(time_scale=1000, max_model_len=1024)
    client = client_for(fleet.urls[0])
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert not_found.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "y" * 8000}], stream=True
        )
    assert too_long.value.body["param"] == "input_tokens"


async def test_a_client_that_goes_away_aborts_its_request(start_fleet):
    fleet = await start_fleet(time_scale=10)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        body = {"messages": MESSAGES, "max_tokens": 500, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break
    for _ in range(200):
        if fleet[0].metrics.request_success["abort"]:
            break
        await asyncio.sleep(0.01)
    assert fleet[0].metrics.request_success["abort"] == 1
    assert fleet[0].engine.scheduler.running == []


async def test_a_hugging_face_tokenizer_file_is_served(start_fleet, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["fix the bug and run all new test code for the api and cli", "You are a coding agent ."] * 5
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))

    fleet = await start_fleet(time_scale=1000, tokenizer=str(path))
    client = client_for(fleet.urls[0])
    first = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
    second = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
    text = first.choices[0].message.content
    assert first.usage.completion_tokens == 6 and text
    assert set(text) <= set("".join(corpus)), "generated tokens are words of the served tokenizer"
    assert first.usage.prompt_tokens == len(tokenizer.encode(render_chat(MESSAGES)).ids)
    assert second.usage.prompt_tokens_details.cached_tokens > 0
