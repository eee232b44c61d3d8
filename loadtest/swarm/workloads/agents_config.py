"""The synthetic agent workload's knobs: one YAML file, validated with pydantic.

Every key has a default that resembles a coding agent (the shipped `agents.yaml` spells them all out),
unknown keys are errors, and an error names the key it is about, e.g.
`agents[0].tool_result_tokens.median: Input should be greater than 0`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).with_name("agents.yaml")


class WorkloadConfigError(ValueError):
    """A workload file that does not validate; the message names every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogNormal(_Strict):
    """A positive quantity with a long right tail: median `median`, spread `sigma` (of its log), then
    clamped to [min, max]. `sigma: 0` makes it a constant."""

    median: float = Field(gt=0)
    sigma: float = Field(default=0.0, ge=0)
    min: float = Field(default=0.0, ge=0)
    max: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> LogNormal:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self

    def sample(self, rng: random.Random) -> float:
        value = self.median * math.exp(rng.gauss(0.0, self.sigma)) if self.sigma else self.median
        value = max(self.min, value)
        return min(self.max, value) if self.max is not None else value

    def sample_int(self, rng: random.Random, floor: int = 1) -> int:
        return max(floor, round(self.sample(rng)))


class Count(_Strict):
    """A count of at least 1 with mean `mean` (geometric: many short runs, a few long ones), capped."""

    mean: float = Field(ge=1)
    max: int = Field(ge=1)

    def sample(self, rng: random.Random) -> int:
        if self.mean <= 1:
            return 1
        success = 1.0 / self.mean
        count = 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - success))
        return min(self.max, count)


class IntRange(_Strict):
    """A whole number drawn uniformly from [min, max]."""

    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> IntRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.min, self.max)


class SubAgents(_Strict):
    """Sub-agents forked from the parent's context (its messages so far plus a task of their own); they
    run concurrently while the parent waits, and their final reports come back as tool results."""

    probability: float = Field(default=0.06, ge=0, le=1)
    """Chance that a model call of the parent (other than a turn's last) delegates to sub-agents."""
    count: IntRange = IntRange(min=1, max=3)
    steps: Count = Count(mean=6, max=30)
    """Model calls per sub-agent, its final report included."""
    task_tokens: LogNormal = LogNormal(median=150, sigma=0.5, min=20, max=2000)
    report_tokens: LogNormal = LogNormal(median=500, sigma=0.6, min=50, max=4000)


class AgentType(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float = Field(default=1.0, gt=0)
    """Relative share of new sessions that are of this type."""
    system_prompt_tokens: int = Field(default=3000, ge=0)
    """System prompt shared by every session of this type."""
    tool_count: int = Field(default=16, ge=1, le=64)
    tool_schema_tokens: int = Field(default=11000, ge=0)
    """Tokens of the rendered `tools` block, shared by every session of this type."""
    task_tokens: LogNormal = LogNormal(median=300, sigma=0.8, min=20, max=8000)
    """The user's first message of a session."""
    human_reply_tokens: LogNormal = LogNormal(median=60, sigma=0.9, min=5, max=2000)
    """The user's message that starts each later turn."""
    steps_per_turn: Count = Count(mean=8, max=60)
    """Model calls per human turn; the last one answers the user, the others call tools."""
    turns_per_session: Count = Count(mean=4, max=30)
    """Human turns before a session is finished (a new one takes its place)."""
    parallel_tool_calls: IntRange = IntRange(min=1, max=2)
    output_tokens: LogNormal = LogNormal(median=250, sigma=1.0, min=16, max=4000)
    """Assistant output of a tool-calling step (the request's max_tokens)."""
    final_output_tokens: LogNormal = LogNormal(median=400, sigma=0.8, min=16, max=8000)
    """Assistant output of a turn's last step, the answer to the user."""
    tool_result_tokens: LogNormal = LogNormal(median=600, sigma=1.2, min=10, max=20000)
    agent_think_s: LogNormal = LogNormal(median=3.0, sigma=0.8, min=0.2, max=120)
    """Seconds between a tool call and the next model call (the tools run): the agent's cadence."""
    human_think_s: LogNormal = LogNormal(median=120, sigma=1.0, min=5, max=3600)
    """Seconds before the user replies to a finished turn: the human's cadence, minutes not seconds."""
    context_watermark_tokens: int = Field(default=100_000, ge=1000)
    """Past this prompt length the session summarises its history and starts a new cycle from the
    system prompt and the summary."""
    context_limit_tokens: int = Field(default=131_072, ge=2048)
    """The model's context length: a session also summarises when its next call would not fit, and a
    summary never asks for more output than fits."""
    summary_tokens: LogNormal = LogNormal(median=2000, sigma=0.3, min=200, max=8000)
    subagents: SubAgents = SubAgents()

    @model_validator(mode="after")
    def _watermark_below_the_limit(self) -> AgentType:
        if self.context_watermark_tokens >= self.context_limit_tokens:
            raise ValueError(
                f"context_watermark_tokens ({self.context_watermark_tokens}) must be below "
                f"context_limit_tokens ({self.context_limit_tokens})"
            )
        return self


class WorkingSet(_Strict):
    sessions: int | None = Field(default=None, ge=1)
    """Number of distinct sessions users work on. Unset: every user works through sessions of its own,
    one after another, replying after each turn. Set: users visit the shared sessions one human turn
    at a time, so a session comes back after the others had their turn."""
    order: Literal["cycle", "random"] = "cycle"
    """How users pick the next session of a working set: in order (deterministic) or sampled."""


class AgentsConfig(_Strict):
    seed: int = 0
    agents: list[AgentType] = Field(default_factory=lambda: [AgentType(name="coder")], min_length=1)
    working_set: WorkingSet = WorkingSet()

    @model_validator(mode="after")
    def _names_unique(self) -> AgentsConfig:
        names = [agent.name for agent in self.agents]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"agent names must be unique: {', '.join(duplicates)}")
        return self


def _location(parts: tuple[int | str, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid agent workload:"]
    for item in error.errors():
        lines.append(f"  {_location(tuple(item['loc']))}: {item['msg']}")
    return "\n".join(lines)


def parse_agents_config(data: object, source: str = "<agents config>") -> AgentsConfig:
    try:
        return AgentsConfig.model_validate(data if data is not None else {})
    except ValidationError as error:
        raise WorkloadConfigError(format_validation_error(error, source)) from error


def load_agents_config(path: str | Path | None = None) -> AgentsConfig:
    """The workload file at `path`, or the shipped defaults (`agents.yaml` next to this module)."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise WorkloadConfigError(f"{path}: cannot read the agent workload: {error}") from error
    return parse_agents_config(data, str(path))
