"""The agent workload's YAML: shipped defaults, and errors that name the bad key."""

import pytest
import yaml

from loadtest.swarm.workloads.agents_config import (
    DEFAULT_CONFIG_PATH,
    AgentsConfig,
    AgentType,
    WorkloadConfigError,
    load_agents_config,
    parse_agents_config,
)


def test_the_shipped_file_spells_out_the_built_in_defaults():
    config = load_agents_config()
    assert [agent.name for agent in config.agents] == ["coder", "reviewer", "chat"]
    assert config.agents[0] == AgentType(name="coder")
    assert config.working_set == AgentsConfig().working_set and config.seed == AgentsConfig().seed
    assert load_agents_config(DEFAULT_CONFIG_PATH) == config


def test_defaults_resemble_a_coding_agent():
    coder = AgentType(name="coder")
    assert 12_000 <= coder.system_prompt_tokens + coder.tool_schema_tokens <= 18_000
    assert coder.human_think_s.median >= 30 * coder.agent_think_s.median  # minutes against seconds
    assert coder.subagents.probability > 0 and coder.context_watermark_tokens >= 100_000


@pytest.mark.parametrize(
    ("document", "key", "message"),
    [
        (
            {"agents": [{"name": "a", "tool_result_tokens": {"median": 0}}]},
            "agents[0].tool_result_tokens.median",
            "greater than 0",
        ),
        ({"agents": [{"name": "a", "bogus_knob": 1}]}, "agents[0].bogus_knob", "Extra inputs"),
        ({"working_set": {"order": "sideways"}}, "working_set.order", "cycle"),
        (
            {"agents": [{"name": "a", "steps_per_turn": {"mean": 4, "max": 0}}]},
            "agents[0].steps_per_turn.max",
            "",
        ),
        (
            {"agents": [{"name": "a", "subagents": {"probability": 1.5}}]},
            "agents[0].subagents.probability",
            "1",
        ),
        ({"agents": [{"name": "a"}, {"name": "a"}]}, "(top level)", "unique: a"),
        (
            {"agents": [{"name": "a", "output_tokens": {"median": 9, "min": 10, "max": 5}}]},
            "agents[0].output_tokens",
            "below min",
        ),
        ({"seeds": 3}, "seeds", "Extra inputs"),
        (
            {"agents": [{"name": "a", "context_watermark_tokens": 200_000}]},
            "agents[0]",
            "below context_limit_tokens",
        ),
    ],
)
def test_errors_name_the_bad_key(tmp_path, document, key, message):
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(WorkloadConfigError) as caught:
        load_agents_config(path)
    text = str(caught.value)
    assert str(path) in text
    assert f"  {key}: " in text and message in text


def test_unreadable_yaml_is_reported_with_its_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("agents: [\n")
    with pytest.raises(WorkloadConfigError, match=r"broken\.yaml"):
        load_agents_config(path)


def test_a_partial_file_takes_defaults_for_the_rest():
    config = parse_agents_config({"agents": [{"name": "tiny", "system_prompt_tokens": 100}]})
    assert config.agents[0].system_prompt_tokens == 100
    assert config.agents[0].tool_schema_tokens == AgentType(name="x").tool_schema_tokens
