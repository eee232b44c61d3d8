"""The synthetic agent swarm: coding-agent sessions whose history grows with every tool call.

A session belongs to an agent type, whose system prompt and tool schema every session of the type
shares. A session is a series of human turns; each turn is a loop of model calls: the assistant calls
tools, the tools run (the agent's think time, seconds), their results join the history, and the next
call sends it all again; the turn's last call answers the user, who replies after the human think time
(minutes). A tool-calling step may delegate to sub-agents instead: each is forked from the parent's
context plus a task of its own, they run concurrently while the parent waits, and their reports come
back as the tool results. When the prompt passes the context watermark, the session asks for a summary
and starts a new cycle from the system prompt and that summary.

One visit of a user is one human turn of one session. Without a working set each user works through
sessions of its own; with one, users take turns on the shared sessions, picked in order or at random.
Content is a pure function of the seed and the session's identity (never of timing), so a run is
reproducible and a session's prompts are the same whoever visits it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from loadtest.swarm.blocks import CHAT_BLOCK_TOKENS, RenderedChat
from loadtest.swarm.plan import Actions, Fork, PlannedRequest, Send, Think
from loadtest.swarm.shard import Shard
from loadtest.swarm.textgen import WORD_BYTES, text_key, words
from loadtest.swarm.workloads.agents_config import AgentsConfig, AgentType, LogNormal
from loadtest.swarm.workloads.base import Workload

TOOL_NAMES = (
    "task",
    "read_file",
    "edit_file",
    "bash",
    "grep",
    "glob",
    "write_file",
    "list_directory",
    "run_tests",
    "web_fetch",
    "web_search",
    "todo_write",
    "git_diff",
    "git_log",
    "notebook_edit",
    "lint",
)
DELEGATION_TOOL = "task"
SUMMARY_INSTRUCTION = (
    "Your context is nearly full. Summarise the task, the decisions taken, the files touched and what "
    "remains to be done, so that the work can continue from the summary alone."
)
SUMMARY_INSTRUCTION_TOKENS = 64  # the instruction's message in the chat template, rounded up


def _tool_names(count: int) -> list[str]:
    names = list(TOOL_NAMES[:count])
    names += [f"tool_{index}" for index in range(len(names), count)]
    return names


def _tool(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {"target": {"type": "string"}, "options": {"type": "string"}},
                "required": ["target"],
            },
        },
    }


def build_tools(agent: AgentType, seed: int) -> list[dict[str, Any]]:
    """`agent.tool_count` tool definitions whose rendered block is `agent.tool_schema_tokens` long (or
    the bare skeleton, if that is longer)."""
    names = _tool_names(agent.tool_count)
    skeleton = RenderedChat([_tool(name, "") for name in names]).rendered_bytes
    spare_words = max(0, (agent.tool_schema_tokens * 4 - skeleton) // 4)
    share, extra = divmod(spare_words, len(names))
    return [
        _tool(name, words(text_key(seed, agent.name, "tool", name), share + (index < extra)))
        for index, name in enumerate(names)
    ]


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """What every session of one agent type shares."""

    spec: AgentType
    tools: list[dict[str, Any]]
    system_message: dict[str, str]
    base: RenderedChat
    """Tools and system prompt rendered, to be copied by each new context."""
    work_tools: list[str]


def build_profile(agent: AgentType, seed: int) -> AgentProfile:
    tools = build_tools(agent, seed)
    empty_system = RenderedChat()
    empty_system.append_message({"role": "system", "content": ""})
    overhead = -(-empty_system.rendered_bytes // 4)
    system = {
        "role": "system",
        "content": words(text_key(seed, agent.name, "system"), agent.system_prompt_tokens - overhead),
    }
    base = RenderedChat(tools)
    base.append_message(system)
    names = [tool["function"]["name"] for tool in tools]
    work_tools = [name for name in names if name != DELEGATION_TOOL] or names
    return AgentProfile(agent, tools, system, base, work_tools)


class _Context:
    """One model context: a session's history, or a sub-agent's (forked from its parent's)."""

    __slots__ = ("counter", "key", "messages", "rendered", "sent_blocks")

    def __init__(self, key: int, messages: list[dict], rendered: RenderedChat, sent_blocks: int) -> None:
        self.key = key
        self.messages = messages
        self.rendered = rendered
        self.sent_blocks = sent_blocks
        self.counter = 0

    def add(self, message: dict) -> None:
        self.messages.append(message)
        self.rendered.append_message(message)

    def text(self, count: int) -> str:
        self.counter += 1
        return words(text_key(self.key, self.counter), count)

    def fork(self, key: int) -> _Context:
        return _Context(key, list(self.messages), self.rendered.copy(), self.sent_blocks)


class AgentSession:
    """A session's state across visits: its agent type, history, turns done and cycles."""

    def __init__(self, key: int, session_id: str, profile: AgentProfile, slot: int | None) -> None:
        self.key = key
        self.id = session_id
        self.profile = profile
        self.slot = slot
        self.rng = random.Random(key)
        self.turns_total = profile.spec.turns_per_session.sample(self.rng)
        self.turns_done = 0
        self.cycles = 1
        self.forks = 0
        self.context = _Context(key, [profile.system_message], profile.base.copy(), 0)

    @property
    def finished(self) -> bool:
        return self.turns_done >= self.turns_total

    def plan(
        self, context: _Context, max_tokens: int, kind: str, session: str, extra: dict | None = None
    ) -> PlannedRequest:
        messages = list(context.messages)
        rendered = context.rendered
        if extra is not None:
            messages.append(extra)
            rendered = rendered.copy()
            rendered.append_message(extra)
        keys = rendered.block_keys[:]
        request = PlannedRequest(
            api="chat",
            payload={"messages": messages, "tools": self.profile.tools},
            max_tokens=max_tokens,
            prompt_tokens=rendered.prompt_tokens(),
            block_keys=keys,
            block_tokens=CHAT_BLOCK_TOKENS,
            sent_prefix_blocks=min(context.sent_blocks, len(keys)),
            session=session,
            kind=kind,
        )
        if extra is None:
            context.sent_blocks = len(keys)
        return request

    def summarise_if_full(
        self, context: _Context, rng: random.Random, session: str, next_output: int
    ) -> Actions:
        """Past the watermark, or when the next call would not fit the context: summarise, new cycle."""
        spec = self.profile.spec
        prompt = context.rendered.prompt_tokens()
        if prompt <= spec.context_watermark_tokens and prompt + next_output <= spec.context_limit_tokens:
            return
        room = spec.context_limit_tokens - prompt - SUMMARY_INSTRUCTION_TOKENS
        tokens = max(1, min(spec.summary_tokens.sample_int(rng), room))
        yield Send(
            self.plan(context, tokens, "summary", session, {"role": "user", "content": SUMMARY_INSTRUCTION})
        )
        summary = {"role": "user", "content": "Summary of the work so far:" + context.text(tokens)}
        context.messages = [self.profile.system_message]
        context.rendered = self.profile.base.copy()
        context.sent_blocks = context.rendered.block_count
        context.add(summary)
        if context is self.context:
            self.cycles += 1

    def fitting(self, context: _Context, tokens: int) -> int:
        """`tokens` of new input, cut so that the context keeps room below its limit for the next call or
        a summary (half the gap between the watermark and the limit), as agents truncate long tool output."""
        spec = self.profile.spec
        ceiling = (
            spec.context_watermark_tokens + (spec.context_limit_tokens - spec.context_watermark_tokens) // 2
        )
        return max(1, min(tokens, ceiling - context.rendered.prompt_tokens()))

    def tool_calls(self, context: _Context, rng: random.Random, names: list[str]) -> list[dict]:
        calls = []
        for name in names:
            context.counter += 1
            arguments = orjson.dumps(
                {"target": words(text_key(context.key, "arg", context.counter), 3).strip()}
            )
            calls.append(
                {
                    "id": f"call_{context.key & 0xFFFFFFFF:08x}_{context.counter}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments.decode()},
                }
            )
        return calls

    def steps(
        self,
        context: _Context,
        rng: random.Random,
        step_count: int,
        final_tokens: LogNormal,
        kind: str,
        session: str,
        may_delegate: bool,
    ) -> Actions:
        """A turn's (or a sub-agent's) model calls; leaves the final answer as the last message."""
        spec = self.profile.spec
        for step in range(step_count):
            final = step == step_count - 1
            delegate = may_delegate and not final and rng.random() < spec.subagents.probability
            output = (final_tokens if final else spec.output_tokens).sample_int(rng)
            yield from self.summarise_if_full(context, rng, session, output)
            yield Send(self.plan(context, output, kind, session))
            if final:
                context.add({"role": "assistant", "content": context.text(output)})
                return
            if delegate:
                count = max(1, spec.subagents.count.sample(rng))
                calls = self.tool_calls(context, rng, [DELEGATION_TOOL] * count)
                context.add({"role": "assistant", "content": context.text(output), "tool_calls": calls})
                self.forks += 1
                children = [
                    SubAgentRun(self, context, call, self.forks, index) for index, call in enumerate(calls)
                ]
                yield Fork(children)  # type: ignore[arg-type]
                for call, child in zip(calls, children, strict=True):
                    report = child.report[
                        : WORD_BYTES * self.fitting(context, len(child.report) // WORD_BYTES)
                    ]
                    context.add({"role": "tool", "tool_call_id": call["id"], "content": report})
                continue
            names = [rng.choice(self.profile.work_tools) for _ in range(spec.parallel_tool_calls.sample(rng))]
            calls = self.tool_calls(context, rng, names or [self.profile.work_tools[0]])
            context.add({"role": "assistant", "content": context.text(output), "tool_calls": calls})
            yield Think(spec.agent_think_s.sample(rng), "agent")
            for call in calls:
                result = context.text(self.fitting(context, spec.tool_result_tokens.sample_int(rng)))
                context.add({"role": "tool", "tool_call_id": call["id"], "content": result})


class SubAgentRun:
    """A sub-agent: the parent's context so far plus its task, its own loop, and a final report."""

    def __init__(self, session: AgentSession, parent: _Context, call: dict, fork: int, index: int) -> None:
        self.id = f"{session.id}/sub{fork}.{index}"
        self._session = session
        key = text_key(parent.key, "sub", fork, index)
        self._rng = random.Random(key)
        self._context = parent.fork(key)
        self._call = call
        self.report = ""

    def actions(self) -> Actions:
        spec = self._session.profile.spec
        context = self._context
        task = spec.subagents.task_tokens.sample_int(self._rng)
        context.add({"role": "user", "content": context.text(self._session.fitting(context, task))})
        steps = spec.subagents.steps.sample(self._rng)
        yield from self._session.steps(
            context, self._rng, steps, spec.subagents.report_tokens, "subagent", self.id, may_delegate=False
        )
        self.report = context.messages[-1]["content"]


class AgentTurn:
    """One visit: one human turn of a session (the user's reply first, unless the session is new)."""

    def __init__(self, workload: AgentSwarm, session: AgentSession) -> None:
        self.id = session.id
        self._workload = workload
        self._session = session

    def actions(self) -> Actions:
        session = self._session
        spec = session.profile.spec
        context = session.context
        try:
            if session.turns_done == 0:
                context.add(
                    {"role": "user", "content": context.text(spec.task_tokens.sample_int(session.rng))}
                )
            else:
                yield Think(spec.human_think_s.sample(session.rng), "human")
                context.add(
                    {
                        "role": "user",
                        "content": context.text(
                            session.fitting(context, spec.human_reply_tokens.sample_int(session.rng))
                        ),
                    }
                )
            steps = spec.steps_per_turn.sample(session.rng)
            yield from session.steps(
                context, session.rng, steps, spec.final_output_tokens, "agent", session.id, may_delegate=True
            )
            session.turns_done += 1
        finally:
            self._workload.release(session)


class _WaitForFreeSession:
    """Every shared session is being visited: wait a moment, then ask again."""

    def __init__(self, seconds: float) -> None:
        self.id = "waiting"
        self._seconds = seconds

    def actions(self) -> Actions:
        yield Think(self._seconds, "human")


class AgentSwarm(Workload):
    name = "agents"

    def __init__(self, config: AgentsConfig, shard: Shard | None = None) -> None:
        self.config = config
        self.shard = shard or Shard()
        self.profiles = [build_profile(agent, config.seed) for agent in config.agents]
        self._weights = [agent.weight for agent in config.agents]
        working_set = config.working_set.sessions
        self._slots = [slot for slot in range(working_set) if self.shard.owns(slot)] if working_set else []
        self._slot_sessions: dict[int, AgentSession] = {}
        self._slot_generations: dict[int, int] = {}
        self._busy: set[int] = set()
        self._cursor = 0
        self._rng = random.Random(text_key(config.seed, "working-set", self.shard.index))
        self._user_sessions: dict[int, AgentSession] = {}
        self._user_generations: dict[int, int] = {}
        self.sessions_started = 0

    def _new_session(self, key: int, session_id: str, slot: int | None) -> AgentSession:
        profile = random.Random(key).choices(self.profiles, self._weights)[0]
        self.sessions_started += 1
        return AgentSession(key, session_id, profile, slot)

    def _slot_session(self, slot: int) -> AgentSession:
        session = self._slot_sessions.get(slot)
        if session is None or session.finished:
            generation = self._slot_generations.get(slot, -1) + 1
            self._slot_generations[slot] = generation
            key = text_key(self.config.seed, "slot", slot, generation)
            session = self._new_session(key, f"ws{slot}.g{generation}", slot)
            self._slot_sessions[slot] = session
        return session

    def next_session(self, user: int) -> AgentTurn | _WaitForFreeSession:
        if not self._slots:
            session = self._user_sessions.get(user)
            if session is None or session.finished:
                generation = self._user_generations.get(user, -1) + 1
                self._user_generations[user] = generation
                key = text_key(self.config.seed, "user", user, generation)
                session = self._new_session(key, f"u{user}.s{generation}", None)
                self._user_sessions[user] = session
            return AgentTurn(self, session)
        free = [slot for slot in self._slots if slot not in self._busy]
        if not free:
            return _WaitForFreeSession(1.0)
        if self.config.working_set.order == "random":
            slot = self._rng.choice(free)
        else:
            count = len(self._slots)
            for step in range(count):
                candidate = self._slots[(self._cursor + step) % count]
                if candidate not in self._busy:
                    self._cursor = (self._cursor + step + 1) % count
                    slot = candidate
                    break
        self._busy.add(slot)
        return AgentTurn(self, self._slot_session(slot))

    def release(self, session: AgentSession) -> None:
        if session.slot is not None:
            self._busy.discard(session.slot)

    def describe(self) -> dict[str, Any]:
        return {
            "workload": self.name,
            "seed": self.config.seed,
            "agent_types": [agent.name for agent in self.config.agents],
            "working_set_sessions": self.config.working_set.sessions,
            "working_set_order": self.config.working_set.order,
            "sessions_started": self.sessions_started,
        }
