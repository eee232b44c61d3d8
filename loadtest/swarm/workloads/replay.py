"""Replay of WEKA conversations (closed loop, as concurrent users) and Mooncake traces (open loop).

WEKA: each user replays one conversation at a time. Before each top-level request it waits the
request's recorded think time; sub-agent entries that follow one another start together as a fork, each
at its recorded offset from the first, each waiting its own requests' think times, while the parent
waits for all of them. The parent's next think time counts from its previous request, so the time the
sub-agents took is taken off it (they overlap the parent's waiting, as in the recording). Ids are local
to a conversation; with `shared_prefix` the system/tool blocks of every conversation map to one shared
scope per position (and per sub-agent type for sub-agents), and `prewarm` sends those prefixes once
before the run.

Mooncake: every record is sent at its `timestamp` divided by the speed-up (`--mode trace`), or pulled in
order by closed-loop users. Ids are global within a file.

Text comes from `(scope, id)` keys (see `replay_prompt`), so replays of the same conversation send the
same bytes; a recycled conversation (`recycle`) gets a new scope and so new text of the same shape.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from loadtest.swarm.plan import Actions, Api, Fork, PlannedRequest, Send, Think
from loadtest.swarm.shard import Shard
from loadtest.swarm.textgen import text_key
from loadtest.swarm.traces import (
    Conversation,
    SubAgent,
    TimedRequest,
    TraceRequest,
    shared_prefix_block_count,
    shared_prefix_ids,
    shared_prefix_length,
)
from loadtest.swarm.workloads.base import OneRequestSession, Workload
from loadtest.swarm.workloads.replay_prompt import build_prompt, template_overhead_tokens


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    api: Api = "chat"
    include_subagents: bool = True
    shared_prefix: bool = False
    prewarm: bool = False
    recycle: bool = False
    order: Literal["cycle", "random"] = "cycle"
    max_output_tokens: int | None = None
    """Clamp on each request's recorded output length (None: send the recorded `out`)."""
    speedup: float = 1.0
    """Mooncake: recorded inter-arrival times are divided by this factor (on top of --time-scale)."""
    seed: int = 0


def _output_tokens(recorded: int, options: ReplayOptions) -> int:
    tokens = max(1, recorded)
    return min(tokens, options.max_output_tokens) if options.max_output_tokens else tokens


def _common_prefix(previous: Sequence[int], current: Sequence[int]) -> int:
    if len(previous) <= len(current) and current[: len(previous)] == previous:
        return len(previous)
    length = 0
    for own, other in zip(previous, current, strict=False):
        if own != other:
            break
        length += 1
    return length


class _KeyedRequests:
    """Turns one conversation's (or sub-agent's) recorded requests into planned requests, reusing the
    keys of the previous request's common prefix."""

    def __init__(
        self,
        options: ReplayOptions,
        scope: str,
        block_tokens: int,
        prefix_ids: list[int],
        shared_scope: str | None,
        session: str,
        kind: str,
    ) -> None:
        self.options = options
        self.scope = scope
        self.block_tokens = block_tokens
        self.prefix_ids = prefix_ids
        self.shared_scope = shared_scope
        self.session = session
        self.kind = kind
        self._previous_ids: list[int] = []
        self._previous_keys: list[int] = []

    def _key(self, position: int, block_id: int, shared_length: int) -> int:
        if position < shared_length:
            return text_key("shared-prefix", self.shared_scope, position)
        return text_key(self.scope, block_id)

    def plan(self, request: TraceRequest) -> PlannedRequest:
        ids = request.hash_ids
        common = _common_prefix(self._previous_ids, ids)
        shared = shared_prefix_length(ids, self.prefix_ids)
        shared_length = shared if self.shared_scope is not None else 0
        keys = self._previous_keys[:common]
        keys.extend(self._key(position, ids[position], shared_length) for position in range(common, len(ids)))
        self._previous_ids, self._previous_keys = ids, keys
        tail_key = text_key(self.scope, "tail", ids[-1] if ids else -1, len(ids))
        prompt = build_prompt(
            self.options.api, keys, self.block_tokens, request.input_tokens, tail_key, system_blocks=shared
        )
        return PlannedRequest(
            api=self.options.api,
            payload=prompt.payload,
            max_tokens=_output_tokens(request.output_tokens, self.options),
            prompt_tokens=prompt.prompt_tokens,
            block_keys=keys,
            block_tokens=self.block_tokens,
            sent_prefix_blocks=common,
            session=self.session,
            kind=self.kind,
        )


class SubAgentReplay:
    def __init__(
        self,
        workload: WekaReplay,
        parent: Conversation,
        scope: str,
        sub: SubAgent,
        start_offset_s: float,
        session: str,
    ) -> None:
        self.id = session
        self._workload = workload
        self._parent = parent
        self._scope = scope
        self._sub = sub
        self._start_offset_s = start_offset_s

    def actions(self) -> Actions:
        sub = self._sub
        options = self._workload.options
        prefix = shared_prefix_ids(
            sub.requests, sub.system_tokens, sub.tool_tokens, self._parent.block_tokens
        )
        planner = _KeyedRequests(
            options,
            self._scope,
            self._parent.block_tokens,
            prefix,
            sub.agent_type if options.shared_prefix else None,
            self.id,
            "subagent",
        )
        if self._start_offset_s > 0:
            yield Think(self._start_offset_s, "trace")
        for request in sub.requests:
            if request.think_s > 0:
                yield Think(request.think_s, "trace")
            yield Send(planner.plan(request))


class ConversationReplay:
    def __init__(self, workload: WekaReplay, conversation: Conversation, scope: str, session: str) -> None:
        self.id = session
        self._workload = workload
        self._conversation = conversation
        self._scope = scope

    def actions(self) -> Actions:
        conversation = self._conversation
        options = self._workload.options
        prefix = shared_prefix_ids(
            conversation.top_level_requests,
            conversation.system_tokens,
            conversation.tool_tokens,
            conversation.block_tokens,
        )
        planner = _KeyedRequests(
            options,
            self._scope,
            conversation.block_tokens,
            prefix,
            "main" if options.shared_prefix else None,
            self.id,
            "replay",
        )
        entries = conversation.entries
        waited_on_subagents = 0.0
        index = 0
        while index < len(entries):
            entry = entries[index]
            if isinstance(entry, TraceRequest):
                think = entry.think_s - waited_on_subagents
                waited_on_subagents = 0.0
                if think > 0:
                    yield Think(think, "trace")
                yield Send(planner.plan(entry))
                index += 1
                continue
            group: list[SubAgent] = []
            while index < len(entries) and isinstance(entries[index], SubAgent):
                group.append(entries[index])  # type: ignore[arg-type]
                index += 1
            if not options.include_subagents:
                continue
            children = [
                SubAgentReplay(
                    self._workload,
                    conversation,
                    self._scope,
                    sub,
                    sub.t - group[0].t,
                    f"{self.id}/{sub.agent_id}",
                )
                for sub in group
                if sub.requests
            ]
            if children:
                took = yield Fork(children)
                waited_on_subagents += float(took or 0.0)


class _Cursor:
    """Hands out item indices in order or shuffled, once each, or again and again with `recycle`."""

    def __init__(self, count: int, order: Literal["cycle", "random"], recycle: bool, seed: int) -> None:
        self._count = count
        self._order = order
        self._recycle = recycle
        self._rng = random.Random(seed)
        self._issued = 0
        self._sequence: list[int] = []

    def next(self) -> tuple[int, int] | None:
        """(item index, generation) or None when exhausted."""
        if self._count == 0:
            return None
        generation, position = divmod(self._issued, self._count)
        if generation > 0 and not self._recycle:
            return None
        if position == 0:
            self._sequence = list(range(self._count))
            if self._order == "random":
                self._rng.shuffle(self._sequence)
        self._issued += 1
        return self._sequence[position], generation


def _generation_scope(base: str, generation: int) -> str:
    return base if generation == 0 else f"{base}#{generation}"


class WekaReplay(Workload):
    name = "replay-weka"

    def __init__(
        self, conversations: Sequence[Conversation], options: ReplayOptions, shard: Shard | None = None
    ) -> None:
        shard = shard or Shard()
        self.options = options
        self.shard = shard
        self.conversations = shard.select(conversations)
        self._cursor = _Cursor(
            len(self.conversations), options.order, options.recycle, options.seed * 1000 + shard.index
        )

    def next_session(self, user: int) -> ConversationReplay | None:
        picked = self._cursor.next()
        if picked is None:
            return None
        index, generation = picked
        conversation = self.conversations[index]
        scope = _generation_scope(conversation.id, generation)
        return ConversationReplay(self, conversation, scope, _generation_scope(conversation.id, generation))

    def prewarm(self) -> list[PlannedRequest]:
        if not (self.options.prewarm and self.options.shared_prefix and self.conversations):
            return []
        prefixes: dict[str, int] = {}
        for conversation in self.conversations:
            blocks = shared_prefix_block_count(
                conversation.system_tokens, conversation.tool_tokens, conversation.block_tokens
            )
            prefixes["main"] = max(prefixes.get("main", 0), blocks)
            if self.options.include_subagents:
                for sub in conversation.subagents:
                    sub_blocks = shared_prefix_block_count(
                        sub.system_tokens, sub.tool_tokens, conversation.block_tokens
                    )
                    prefixes[sub.agent_type] = max(prefixes.get(sub.agent_type, 0), sub_blocks)
        block_tokens = self.conversations[0].block_tokens
        requests = []
        for scope, blocks in prefixes.items():
            keys = [text_key("shared-prefix", scope, position) for position in range(blocks)]
            # Every prefix block in the system message, in full, and an empty user message.
            tokens = blocks * block_tokens + template_overhead_tokens(self.options.api, system_message=True)
            prompt = build_prompt(self.options.api, keys, block_tokens, tokens, 0, system_blocks=blocks)
            requests.append(
                PlannedRequest(
                    api=self.options.api,
                    payload=prompt.payload,
                    max_tokens=1,
                    prompt_tokens=prompt.prompt_tokens,
                    block_keys=keys,
                    block_tokens=block_tokens,
                    session=f"prewarm/{scope}",
                    kind="prewarm",
                )
            )
        return requests

    def describe(self) -> dict[str, Any]:
        return {
            "workload": self.name,
            "conversations": len(self.conversations),
            "include_subagents": self.options.include_subagents,
            "shared_prefix": self.options.shared_prefix,
            "prewarm": self.options.prewarm,
            "recycle": self.options.recycle,
            "order": self.options.order,
            "max_output_tokens": self.options.max_output_tokens,
            "api": self.options.api,
        }


class MooncakeReplay(Workload):
    name = "replay-mooncake"

    def __init__(
        self, requests: Sequence[TimedRequest], options: ReplayOptions, shard: Shard | None = None
    ) -> None:
        shard = shard or Shard()
        if options.speedup <= 0:
            raise ValueError("the Mooncake speed-up must be positive")
        self.options = options
        self.shard = shard
        self.requests = shard.select(requests)
        self._start_s = requests[0].timestamp_s if requests else 0.0
        self._cursor = _Cursor(
            len(self.requests), options.order, options.recycle, options.seed * 1000 + shard.index
        )

    def plan(self, index: int, generation: int = 0) -> PlannedRequest:
        record = self.requests[index]
        scope = _generation_scope(f"mooncake:{record.scope}", generation)
        keys = [text_key(scope, block_id) for block_id in record.hash_ids]
        prompt = build_prompt(
            self.options.api,
            keys,
            record.block_tokens,
            record.input_tokens,
            text_key(scope, "tail", index),
        )
        return PlannedRequest(
            api=self.options.api,
            payload=prompt.payload,
            max_tokens=_output_tokens(record.output_tokens, self.options),
            prompt_tokens=prompt.prompt_tokens,
            block_keys=keys,
            block_tokens=record.block_tokens,
            session=f"record-{index * self.shard.count + self.shard.index}",
            kind="replay",
        )

    @property
    def has_schedule(self) -> bool:
        return True

    def schedule(self) -> Iterator[tuple[float, PlannedRequest]]:
        for index, record in enumerate(self.requests):
            yield (record.timestamp_s - self._start_s) / self.options.speedup, self.plan(index)

    def next_session(self, user: int) -> OneRequestSession | None:
        picked = self._cursor.next()
        if picked is None:
            return None
        index, generation = picked
        request = self.plan(index, generation)
        return OneRequestSession(request.session, request)

    def describe(self) -> dict[str, Any]:
        span = (self.requests[-1].timestamp_s - self._start_s) if self.requests else 0.0
        return {
            "workload": self.name,
            "records": len(self.requests),
            "recorded_span_s": span,
            "speedup": self.options.speedup,
            "recycle": self.options.recycle,
            "max_output_tokens": self.options.max_output_tokens,
            "api": self.options.api,
        }
