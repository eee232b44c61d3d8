"""The interface between workloads and the driver."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadtest.swarm.plan import Actions, PlannedRequest, Send, Session


@dataclass(frozen=True, slots=True)
class Phase:
    """A stage of a sweep: the driver runs it for `duration_s` workload seconds, then the next one."""

    name: str
    duration_s: float
    settings: dict[str, Any]


class Workload(ABC):
    name: str = "workload"
    phase_index: int = 0

    @abstractmethod
    def next_session(self, user: int) -> Session | None:
        """The next session for run-wide user `user` in closed-loop and rate modes; None when the
        workload has nothing more for this user (a replay without --recycle that ran out)."""

    def schedule(self) -> Iterator[tuple[float, PlannedRequest]]:
        """Requests at recorded times (workload seconds from the start), for `--mode trace`."""
        raise NotImplementedError(f"the {self.name} workload has no recorded schedule; use users or a rate")

    @property
    def has_schedule(self) -> bool:
        return False

    def prewarm(self) -> list[PlannedRequest]:
        """Requests sent before the measured run starts (shared prefixes, a sweep's working set)."""
        return []

    def phases(self) -> list[Phase]:
        return []

    def begin_phase(self, index: int) -> None:
        """Called by the driver when phase `index` starts; sessions made afterwards belong to it."""
        self.phase_index = index

    def describe(self) -> dict[str, Any]:
        return {"workload": self.name}


class OneRequestSession:
    """A session of a single request (trace records and sweep requests are independent of each other)."""

    __slots__ = ("id", "request")

    def __init__(self, session_id: str, request: PlannedRequest) -> None:
        self.id = session_id
        self.request = request

    def actions(self) -> Actions:
        yield Send(self.request)
