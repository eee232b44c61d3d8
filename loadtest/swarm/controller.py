"""How many users to run: a ramp schedule and the SLO-adaptive controller.

`AdaptiveController` is a pure state machine: the driver hands it one `PeriodFeedback` per assessment
period and applies the user count it answers. It keeps the largest count seen inside the SLO (`good`)
and the smallest seen outside it (`bad`). While no count has failed it grows geometrically; once one
has, it bisects between the two, so it converges on the largest count the endpoint holds inside the
SLO in a logarithmic number of periods. Violations in a row at the converged count (more than
`tolerated_violations`: one may be noise) mean capacity dropped: it forgets `good` and backs off. The
period after a change is not judged (`settle_periods`): requests queued under the previous count would
be blamed on the new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

TtftMetric = Literal["p95", "avg", "max"]
Verdict = Literal["ok", "violation", "hold", "settling"]


@dataclass(frozen=True, slots=True)
class SloTargets:
    ttft_s: float | None = None
    """Time to first token target, judged on `ttft_metric` of a period's requests."""
    ttft_metric: TtftMetric = "p95"
    min_output_tokens_per_s: float | None = None
    """Per-request decode speed target ((completion tokens - 1) / (end - first token)), judged on the
    period's average."""
    max_error_rate: float = 0.05

    @property
    def defined(self) -> bool:
        return self.ttft_s is not None or self.min_output_tokens_per_s is not None

    def request_ok(self, ttft_s: float | None, output_tokens_per_s: float | None) -> bool:
        """Whether one successful request met the SLO (for goodput)."""
        if self.ttft_s is not None and (ttft_s is None or ttft_s > self.ttft_s):
            return False
        return not (
            self.min_output_tokens_per_s is not None
            and output_tokens_per_s is not None
            and output_tokens_per_s < self.min_output_tokens_per_s
        )


@dataclass(frozen=True, slots=True)
class PeriodFeedback:
    users: int
    completed: int
    errors: int = 0
    ttft_s: float | None = None
    """The period's TTFT by the chosen metric."""
    output_tokens_per_s: float | None = None
    """The period's average per-request decode speed."""
    oldest_waiting_s: float = 0.0
    """Age of the oldest request still waiting for its first token at the end of the period."""


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    start_users: int = 2
    min_users: int = 1
    max_users: int = 1000
    growth: float = 1.5
    """While nothing has failed, the next count is max(users * growth, users + 1)."""
    backoff: float = 0.5
    """After a violation with no count known good, the next count is users * backoff."""
    min_requests: int = 10
    """A period with fewer completed requests (and no sign of overload) is not judged."""
    settle_periods: int = 1
    precision: float = 0.05
    """Converged when bad - good <= max(1, precision * good)."""
    tolerated_violations: int = 1
    """Violations in a row at the converged count taken for noise before the search starts again."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_users <= self.start_users <= self.max_users:
            raise ValueError("need 1 <= min_users <= start_users <= max_users")
        if self.growth <= 1 or not 0 < self.backoff < 1:
            raise ValueError("need growth > 1 and 0 < backoff < 1")


@dataclass(frozen=True, slots=True)
class Decision:
    users: int
    verdict: Verdict
    reason: str
    good: int | None
    bad: int | None
    converged: bool


@dataclass(slots=True)
class AdaptiveController:
    slo: SloTargets
    settings: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    users: int = 0
    good: int | None = None
    bad: int | None = None
    converged: bool = False
    _settling: int = 0
    _strikes: int = 0
    history: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.slo.defined:
            raise ValueError("the adaptive mode needs an SLO: a TTFT target, an output speed target, or both")
        self.users = self.settings.start_users

    def judge(self, feedback: PeriodFeedback) -> tuple[Verdict, str]:
        slo = self.slo
        if slo.ttft_s is not None and feedback.oldest_waiting_s > slo.ttft_s:
            return "violation", f"a request has waited {feedback.oldest_waiting_s:.2f}s for its first token"
        finished = feedback.completed + feedback.errors
        if finished and feedback.errors / finished > slo.max_error_rate:
            return "violation", f"{feedback.errors} of {finished} requests failed"
        if feedback.completed < self.settings.min_requests:
            return "hold", f"only {feedback.completed} requests completed"
        if slo.ttft_s is not None and feedback.ttft_s is not None and feedback.ttft_s > slo.ttft_s:
            return "violation", f"TTFT {slo.ttft_metric} {feedback.ttft_s:.3f}s > {slo.ttft_s}s"
        if (
            slo.min_output_tokens_per_s is not None
            and feedback.output_tokens_per_s is not None
            and feedback.output_tokens_per_s < slo.min_output_tokens_per_s
        ):
            return "violation", (
                f"output {feedback.output_tokens_per_s:.1f} tok/s per request < {slo.min_output_tokens_per_s}"
            )
        return "ok", "inside the SLO"

    def _converged_between(self, good: int, bad: int) -> bool:
        return bad - good <= max(1, math.ceil(self.settings.precision * good))

    def _clamp(self, users: int) -> int:
        return max(self.settings.min_users, min(self.settings.max_users, users))

    def observe(self, feedback: PeriodFeedback) -> Decision:
        """Judge one period at `self.users` and decide the next count."""
        if self._settling > 0:
            self._settling -= 1
            return self._decide(self.users, "settling", "letting the last change settle")
        verdict, reason = self.judge(feedback)
        users = self.users
        if verdict == "hold":
            return self._decide(users, verdict, reason)
        if verdict == "violation" and self.converged and users == self.good:
            self._strikes += 1
            if self._strikes <= self.settings.tolerated_violations:
                return self._decide(users, verdict, reason + "; once at the held count, holding")
        self._strikes = 0
        if verdict == "ok":
            self.good = users if self.good is None else max(self.good, users)
            if self.bad is not None and self.bad <= self.good:
                self.bad = None  # it holds more than it once failed at: capacity went up
            if self.bad is None:
                target = max(users + 1, math.ceil(users * self.settings.growth))
            elif self._converged_between(self.good, self.bad):
                target = self.good
            else:
                target = (self.good + self.bad) // 2
        else:
            self.bad = users
            if self.good is not None and self.good >= users:
                self.good = None  # it fails where it used to hold: capacity went down
            if self.good is None:
                target = math.floor(users * self.settings.backoff)
            elif self._converged_between(self.good, self.bad):
                target = self.good
            else:
                target = (self.good + self.bad) // 2
        target = self._clamp(target)
        self.converged = (
            self.good is not None and self.bad is not None and self._converged_between(self.good, self.bad)
        ) or (verdict == "ok" and target == users == self.settings.max_users)
        return self._decide(target, verdict, reason)

    def _decide(self, target: int, verdict: Verdict, reason: str) -> Decision:
        if target != self.users:
            self._settling = self.settings.settle_periods
        self.users = target
        decision = Decision(target, verdict, reason, self.good, self.bad, self.converged)
        self.history.append(decision)
        return decision


@dataclass(frozen=True, slots=True)
class RampSchedule:
    """`start` users, `step` more every `interval_s` workload seconds, never more than `max_users`."""

    start: int
    step: int
    interval_s: float
    max_users: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.step < 0 or self.interval_s <= 0 or self.max_users < self.start:
            raise ValueError("a ramp needs start >= 0, step >= 0, interval > 0 and max >= start")

    def users_at(self, elapsed_s: float) -> int:
        steps = math.floor(max(0.0, elapsed_s) / self.interval_s)
        return min(self.max_users, self.start + self.step * steps)
