"""Tokenizing a request with a replica's own `/tokenize`: exact for any model, at one round trip."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import aiohttp
import orjson

from gateway.blocks import Tokenize
from gateway.errors import APIError
from gateway.replicas import ReplicaSet
from gateway.request import InferenceRequest, completion_prompt
from gateway.upstream import Upstream


def remote_tokenize(upstream: Upstream, replicas: ReplicaSet, timeout_s: float = 5.0) -> Tokenize:
    turn = itertools.count()

    async def tokenize(request: InferenceRequest, model: str) -> Sequence[int]:
        body = request.body
        if request.kind == "chat":
            payload = {"model": model, "messages": body["messages"], "add_generation_prompt": True}
            if body.get("tools"):
                payload["tools"] = body["tools"]
        else:
            prompt = completion_prompt(body)
            if not isinstance(prompt, str):
                return prompt
            payload = {"model": model, "prompt": prompt}
        candidates = replicas.routable(model)
        if not candidates:
            raise APIError(503, f"No healthy replica is serving model '{model}' right now; retry later.")
        replica = candidates[next(turn) % len(candidates)]
        try:
            async with upstream.session.post(
                replica.url + "/tokenize",
                data=orjson.dumps(payload),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise APIError(502, f"Tokenizing on {replica.name} failed: {type(exc).__name__}") from None
        if status != 200:
            raise APIError(status if status < 500 else 502, body[:300].decode(errors="replace"))
        try:
            tokens = orjson.loads(body).get("tokens")
        except (orjson.JSONDecodeError, AttributeError):
            tokens = None
        if not isinstance(tokens, list):
            raise APIError(502, f"{replica.name}/tokenize answered without tokens")
        return tokens

    return tokenize
