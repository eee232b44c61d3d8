"""The synthetic agent workload, walked without an endpoint (sessions are pure generators)."""

import itertools
import statistics

from gateway.chat_template import render_chat
from gateway.tokenizer import ByteTokenizer
from loadtest.swarm.blocks import RenderedChat
from loadtest.swarm.plan import Fork, Send, Think, walk
from loadtest.swarm.shard import Shard
from loadtest.swarm.workloads.agents import AgentSwarm
from loadtest.swarm.workloads.agents_config import AgentsConfig, load_agents_config, parse_agents_config

TOKENIZER = ByteTokenizer()


def prompt_of(request) -> str:
    return render_chat(request.payload["messages"], request.payload["tools"])


def history_of(request) -> str:
    return render_chat(request.payload["messages"], request.payload["tools"], add_generation_prompt=False)


def visits(workload: AgentSwarm, user: int, count: int) -> list[tuple[str, object]]:
    actions = []
    for _ in range(count):
        actions += walk(workload.next_session(user))
    return actions


def requests_of(actions, kind=None):
    return [a.request for _, a in actions if isinstance(a, Send) and (kind is None or a.request.kind == kind)]


def test_rendered_chat_follows_render_chat_exactly():
    tools = [{"type": "function", "function": {"name": "read", "parameters": {}}}]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "naïve ✓ " * 30}]
    rendered = RenderedChat(tools)
    for message in messages:
        rendered.append_message(message)
    assert rendered.rendered_bytes == len(render_chat(messages, tools, add_generation_prompt=False).encode())
    assert rendered.prompt_tokens() == TOKENIZER.count(render_chat(messages, tools))
    other = RenderedChat(tools)
    other.append_message(messages[0])
    assert list(other.block_keys) == list(rendered.block_keys[: other.block_count])


def test_requests_are_chat_requests_whose_history_grows_every_turn():
    workload = AgentSwarm(load_agents_config())
    actions = visits(workload, user=0, count=3)
    agent_requests = requests_of(actions, "agent")
    assert len(agent_requests) >= 3
    for request in agent_requests:
        assert request.payload["messages"][0]["role"] == "system" and request.payload["tools"]
        assert request.prompt_tokens == TOKENIZER.count(prompt_of(request))
        calls = [
            c["id"]
            for m in request.payload["messages"]
            if m["role"] == "assistant"
            for c in m.get("tool_calls", [])
        ]
        results = [m["tool_call_id"] for m in request.payload["messages"] if m["role"] == "tool"]
        assert set(results) <= set(calls)
    cycle = [r for r in agent_requests if r.prompt_tokens < 100_000]
    for previous, current in itertools.pairwise(cycle):
        if current.prompt_tokens > previous.prompt_tokens:
            assert history_of(current).startswith(history_of(previous))
            assert list(current.block_keys[: len(previous.block_keys)]) == list(previous.block_keys)
            assert current.sent_prefix_blocks == len(previous.block_keys)


def test_subagents_fork_the_parents_context_and_run_while_it_waits():
    config = parse_agents_config(
        {
            "seed": 3,
            "agents": [
                {"name": "lead", "steps_per_turn": {"mean": 12, "max": 20}, "subagents": {"probability": 0.5}}
            ],
        }
    )
    workload = AgentSwarm(config)
    session = workload.next_session(0)
    sequence = walk(session)
    forks = [index for index, (_, action) in enumerate(sequence) if isinstance(action, Fork)]
    assert forks, "a sub-agent probability of 0.5 over 12 steps forks"
    fork_at = forks[0]
    parent_before = [a.request for sid, a in sequence[:fork_at] if isinstance(a, Send) and sid == session.id][
        -1
    ]
    children = sequence[fork_at][1].children
    child_requests = [
        a.request
        for sid, a in sequence[fork_at + 1 :]
        if isinstance(a, Send) and sid.startswith(session.id + "/")
    ]
    first_of_each = {child.id: next(r for r in child_requests if r.session == child.id) for child in children}
    for request in first_of_each.values():
        assert request.kind == "subagent"
        assert history_of(request).startswith(history_of(parent_before))
        assert request.sent_prefix_blocks == len(parent_before.block_keys)
    parent_after = next(
        a.request for sid, a in sequence[fork_at + 1 :] if isinstance(a, Send) and sid == session.id
    )
    reports = [m["content"] for m in parent_after.payload["messages"] if m["role"] == "tool"][
        -len(children) :
    ]
    assert reports == [child.report for child in children] and all(reports)


def test_the_context_watermark_summarises_and_starts_a_new_cycle():
    config = parse_agents_config(
        {
            "agents": [
                {
                    "name": "small",
                    "system_prompt_tokens": 1000,
                    "tool_schema_tokens": 2000,
                    "context_watermark_tokens": 20_000,
                    "steps_per_turn": {"mean": 30, "max": 40},
                    "subagents": {"probability": 0},
                }
            ]
        }
    )
    workload = AgentSwarm(config)
    requests = requests_of(visits(workload, 0, 2))
    summaries = [index for index, r in enumerate(requests) if r.kind == "summary"]
    assert summaries
    after = requests[summaries[0] + 1]
    assert after.prompt_tokens < requests[summaries[0]].prompt_tokens / 2
    assert [m["role"] for m in after.payload["messages"][:2]] == ["system", "user"]
    assert after.payload["messages"][1]["content"].startswith("Summary of the work so far:")
    biggest_step = max(b.prompt_tokens - a.prompt_tokens for a, b in itertools.pairwise(requests))
    assert max(r.prompt_tokens for r in requests) <= 20_000 + biggest_step


def test_agent_and_human_cadences_differ_by_orders_of_magnitude():
    workload = AgentSwarm(load_agents_config())
    actions = [a for user in range(8) for _, a in visits(workload, user, 4)]
    agent = [a.seconds for a in actions if isinstance(a, Think) and a.kind == "agent"]
    human = [a.seconds for a in actions if isinstance(a, Think) and a.kind == "human"]
    assert agent and human
    assert statistics.median(human) > 10 * statistics.median(agent)


def test_sessions_are_a_pure_function_of_the_seed():
    def payloads(seed):
        config = load_agents_config().model_copy(update={"seed": seed})
        return [r.payload for r in requests_of(visits(AgentSwarm(config), 5, 3))]

    assert payloads(1) == payloads(1)
    assert payloads(1) != payloads(2)


def test_sessions_of_a_type_share_the_tools_and_system_blocks():
    config = parse_agents_config({"agents": [{"name": "only"}]})
    workload = AgentSwarm(config)
    first = requests_of(walk(workload.next_session(0)))[0]
    second = requests_of(walk(workload.next_session(1)))[0]
    shared = workload.profiles[0].base.block_count
    assert shared >= (14_000 * 4) // 64 - 1
    assert list(first.block_keys[:shared]) == list(second.block_keys[:shared])
    assert first.block_keys[shared + 2] != second.block_keys[shared + 2]


def test_a_working_set_is_visited_in_order_or_sampled():
    base = {"agents": [{"name": "a", "steps_per_turn": {"mean": 1, "max": 1}}]}
    cycled = AgentSwarm(parse_agents_config({**base, "working_set": {"sessions": 4, "order": "cycle"}}))
    order = []
    for user in range(10):
        session = cycled.next_session(user)
        order.append(session.id)
        walk(session)  # the visit ends and frees the session
    assert order == ["ws0.g0", "ws1.g0", "ws2.g0", "ws3.g0"] * 2 + ["ws0.g0", "ws1.g0"]
    busy = cycled.next_session(0)
    assert cycled.next_session(1).id != busy.id  # a session being visited is skipped
    sampled = AgentSwarm(parse_agents_config({**base, "working_set": {"sessions": 4, "order": "random"}}))
    picks = []
    for user in range(40):
        session = sampled.next_session(user)
        picks.append(session.id)
        walk(session)
    assert set(picks) <= {f"ws{i}.g{g}" for i in range(4) for g in range(40)}
    assert picks[:8] != order[:8] and len({p.split(".")[0] for p in picks}) == 4


def test_shards_own_disjoint_sessions_of_a_working_set():
    config = AgentsConfig.model_validate({"working_set": {"sessions": 10}})
    seen = []
    for index in range(3):
        workload = AgentSwarm(config, Shard(index, 3))
        ids = set()
        for user in range(20):
            session = workload.next_session(Shard(index, 3).global_user(user))
            ids.add(session.id.split(".")[0])
            walk(session)
        seen.append(ids)
    assert set.union(*seen) == {f"ws{i}" for i in range(10)}
    assert sum(len(ids) for ids in seen) == 10


def test_no_request_asks_for_more_than_the_context_holds():
    config = parse_agents_config(
        {
            "agents": [
                {
                    "name": "tight",
                    "system_prompt_tokens": 500,
                    "tool_schema_tokens": 800,
                    "context_watermark_tokens": 6000,
                    "context_limit_tokens": 8192,
                    "steps_per_turn": {"mean": 20, "max": 40},
                    "tool_result_tokens": {"median": 800, "sigma": 1.0, "min": 10, "max": 2500},
                    "output_tokens": {"median": 300, "sigma": 1.0, "min": 16, "max": 1500},
                    "summary_tokens": {"median": 3000, "min": 200, "max": 4000},
                }
            ]
        }
    )
    requests = requests_of(visits(AgentSwarm(config), 0, 4))
    assert any(r.kind == "summary" for r in requests)
    assert all(r.prompt_tokens + r.max_tokens <= 8192 for r in requests)
