"""Tokenizing a request with a replica's own `/tokenize`: exact for any model, at one round trip."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import httpx

from gateway.blocks import Tokenize
from gateway.errors import APIError
from gateway.replicas import ReplicaSet
from gateway.request import InferenceRequest, completion_prompt


def remote_tokenize(client: httpx.AsyncClient, replicas: ReplicaSet, timeout_s: float = 5.0) -> Tokenize:
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
            response = await client.post(replica.url + "/tokenize", json=payload, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise APIError(502, f"Tokenizing on {replica.name} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise APIError(response.status_code if response.status_code < 500 else 502, response.text[:300])
        tokens = response.json().get("tokens")
        if not isinstance(tokens, list):
            raise APIError(502, f"{replica.name}/tokenize answered without tokens")
        return tokens

    return tokenize
