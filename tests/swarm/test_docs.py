"""docs/loadtest.md names every flag, knob, column and metric the code has."""

import argparse
from pathlib import Path

import pytest

from loadtest.analyze import cli as analyze_cli
from loadtest.report import cli as report_cli
from loadtest.swarm import cli as swarm_cli
from loadtest.swarm.driver import LiveState
from loadtest.swarm.prometheus import SwarmMetrics
from loadtest.swarm.records import FIELDS
from loadtest.swarm.stats import PERIOD_COLUMNS
from loadtest.swarm.summary import CONTROL_COLUMNS, TIMELINE_COLUMNS
from loadtest.swarm.workloads.agents_config import AgentsConfig, AgentType, SubAgents, WorkingSet

DOC = (Path(__file__).resolve().parents[2] / "docs" / "loadtest.md").read_text()


def flags(module) -> set[str]:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    found = set()
    actions = list(parser._actions)
    for action in list(actions):
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions += sub._actions
    for action in actions:
        found.update(
            option for option in action.option_strings if option.startswith("--") and option != "--help"
        )
    return found


@pytest.mark.parametrize("module", [swarm_cli, analyze_cli, report_cli], ids=["swarm", "analyze", "report"])
def test_every_flag_is_documented(module):
    missing = sorted(flag for flag in flags(module) if f"`{flag}" not in DOC)
    assert not missing


def test_every_workload_knob_is_documented():
    keys = [f"`{name}`" for name in AgentsConfig.model_fields if name not in ("agents", "working_set")]
    keys += [f"`working_set.{name}`" for name in WorkingSet.model_fields]
    keys += [f"`agents[].{name}`" for name in AgentType.model_fields if name != "subagents"]
    keys += [f"`agents[].subagents.{name}`" for name in SubAgents.model_fields]
    assert [key for key in keys if key not in DOC] == []


def test_every_output_column_and_metric_is_documented():
    columns = set(FIELDS) | set(PERIOD_COLUMNS) | set(TIMELINE_COLUMNS) | set(CONTROL_COLUMNS)
    assert sorted(column for column in columns if f"`{column}`" not in DOC) == []
    names = set()
    for metric in SwarmMetrics(LiveState()).registry.collect():
        names.add(metric.name + ("_total" if metric.type == "counter" else ""))
    assert sorted(name for name in names if f"`{name}" not in DOC) == []
