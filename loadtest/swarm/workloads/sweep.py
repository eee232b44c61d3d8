"""Sweeps that map a cache's behaviour: target hit rates, and a growing working set.

Both sweeps keep a working set of prompts of `context_tokens` each. A request for prompt `p` at hit
rate `h` starts with the first `h x context` tokens of `p` (rounded down to whole `block_tokens`
blocks; the same bytes every time) and ends with fresh text never sent before, so `h` is the share of
the prompt any cache could serve.

- `hit-rate`: a fixed working set (`working_set_tokens`) is sent once before the run (prewarm), then
  each phase runs at one target hit rate for `phase_duration_s`.
- `working-set`: each phase grows the working set (from `working_set_min_tokens` to
  `working_set_max_tokens` in `working_set_steps` steps, geometric) at one hit rate. While the set fits
  the fastest cache tier the hit rate holds and TTFT stays low; past HBM, DRAM and storage capacity,
  TTFT steps up and then the hit rate falls.

Users pick prompts of the current phase's working set in order (`cycle`) or at random.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from loadtest.swarm.plan import Api, PlannedRequest
from loadtest.swarm.shard import Shard
from loadtest.swarm.textgen import text_key
from loadtest.swarm.workloads.base import OneRequestSession, Phase, Workload
from loadtest.swarm.workloads.replay_prompt import build_prompt

SweepKind = Literal["hit-rate", "working-set"]


@dataclass(frozen=True, slots=True)
class SweepOptions:
    kind: SweepKind = "hit-rate"
    api: Api = "chat"
    context_tokens: int = 8000
    output_tokens: int = 64
    block_tokens: int = 64
    phase_duration_s: float = 60.0
    order: Literal["cycle", "random"] = "cycle"
    hit_rates: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    """hit-rate sweep: one phase per target."""
    working_set_tokens: int = 400_000
    """hit-rate sweep: the fixed working set."""
    working_set_min_tokens: int = 100_000
    working_set_max_tokens: int = 2_000_000
    working_set_steps: int = 5
    working_set_hit_rate: float = 0.9
    """working-set sweep: the hit rate every phase runs at."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context_tokens < self.block_tokens:
            raise ValueError("context_tokens must hold at least one block")
        rates = (*self.hit_rates, self.working_set_hit_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("hit rates are fractions in [0, 1]")
        if self.working_set_min_tokens > self.working_set_max_tokens or self.working_set_steps < 1:
            raise ValueError("the working-set sweep needs min <= max and at least one step")


@dataclass(frozen=True, slots=True)
class _PhaseSetting:
    hit_rate: float
    prompts: int
    working_set_tokens: int


class Sweep(Workload):
    name = "sweep"

    def __init__(self, options: SweepOptions, shard: Shard | None = None) -> None:
        self.options = options
        self.shard = shard or Shard()
        self._settings = self._phase_settings()
        self._phase_names = [phase.name for phase in self.phases()]
        self._rng = random.Random(text_key(options.seed, "sweep", self.shard.index))
        self._cursor = 0
        self._fresh = 0
        self.phase_index = 0

    def _prompts_for(self, tokens: int) -> int:
        return max(1, tokens // self.options.context_tokens)

    def _phase_settings(self) -> list[_PhaseSetting]:
        options = self.options
        if options.kind == "hit-rate":
            prompts = self._prompts_for(options.working_set_tokens)
            return [
                _PhaseSetting(rate, prompts, prompts * options.context_tokens) for rate in options.hit_rates
            ]
        sizes = np.geomspace(
            options.working_set_min_tokens, options.working_set_max_tokens, options.working_set_steps
        )
        settings = []
        for size in sizes:
            prompts = self._prompts_for(int(size))
            settings.append(
                _PhaseSetting(options.working_set_hit_rate, prompts, prompts * options.context_tokens)
            )
        return settings

    def phases(self) -> list[Phase]:
        phases = []
        for setting in self._settings:
            if self.options.kind == "hit-rate":
                name = f"hit-rate={setting.hit_rate:g}"
            else:
                name = f"working-set={setting.working_set_tokens}"
            phases.append(
                Phase(
                    name,
                    self.options.phase_duration_s,
                    {
                        "target_hit_rate": setting.hit_rate,
                        "working_set_prompts": setting.prompts,
                        "working_set_tokens": setting.working_set_tokens,
                    },
                )
            )
        return phases

    def begin_phase(self, index: int) -> None:
        self.phase_index = min(index, len(self._settings) - 1)
        self._cursor = 0

    def _owned_prompts(self, count: int) -> list[int]:
        return [prompt for prompt in range(count) if self.shard.owns(prompt)] or [self.shard.index % count]

    def request(
        self, prompt: int, hit_rate: float, phase: str, max_tokens: int | None = None
    ) -> PlannedRequest:
        options = self.options
        total_blocks = -(-options.context_tokens // options.block_tokens)
        cached_blocks = int(hit_rate * options.context_tokens) // options.block_tokens
        keys = [text_key(options.seed, "sweep-prompt", prompt, block) for block in range(cached_blocks)]
        self._fresh += 1
        fresh_scope = ("sweep-fresh", options.seed, self.shard.index, self._fresh)
        keys += [text_key(*fresh_scope, block) for block in range(total_blocks - cached_blocks)]
        built = build_prompt(
            options.api, keys, options.block_tokens, options.context_tokens, text_key(*fresh_scope)
        )
        return PlannedRequest(
            api=options.api,
            payload=built.payload,
            max_tokens=max_tokens or options.output_tokens,
            prompt_tokens=built.prompt_tokens,
            block_keys=keys,
            block_tokens=options.block_tokens,
            session=f"prompt-{prompt}",
            kind="sweep" if max_tokens is None else "prewarm",
            phase=phase,
        )

    def next_session(self, user: int) -> OneRequestSession:
        setting = self._settings[self.phase_index]
        prompts = self._owned_prompts(setting.prompts)
        if self.options.order == "random":
            prompt = self._rng.choice(prompts)
        else:
            prompt = prompts[self._cursor % len(prompts)]
            self._cursor += 1
        request = self.request(prompt, setting.hit_rate, self._phase_names[self.phase_index])
        return OneRequestSession(request.session, request)

    def prewarm(self) -> list[PlannedRequest]:
        if self.options.kind != "hit-rate":
            return []
        setting = self._settings[0]
        return [
            self.request(prompt, 1.0, "prewarm", max_tokens=1)
            for prompt in self._owned_prompts(setting.prompts)
        ]

    def describe(self) -> dict[str, Any]:
        options = self.options
        return {
            "workload": self.name,
            "sweep": options.kind,
            "context_tokens": options.context_tokens,
            "output_tokens": options.output_tokens,
            "block_tokens": options.block_tokens,
            "phase_duration_s": options.phase_duration_s,
            "order": options.order,
            "phases": [phase.name for phase in self.phases()],
            "api": options.api,
        }
