"""The event loop side of the swarm: users, arrivals, the schedule, periods and the stop.

Load modes:
- `fixed`: a constant number of users from the start.
- `ramp`: `start` users, `step` more every `interval` seconds, up to `max`.
- `adaptive`: the SLO controller (`loadtest.swarm.controller`) sets the user count every period.
- `rate`: open loop at `rate` requests per second (Poisson or evenly spaced arrivals). Each arrival lets
  one waiting session send its next request; if every session is busy, a new user starts (up to
  `max_users`). Think times are not used: the arrivals are the pacing.
- `trace`: requests at their recorded times (Mooncake), divided by the speed-up.

Closed-loop users (`fixed`, `ramp`, `adaptive`) each run sessions from the workload one after another.
Users leave at a think boundary when the count goes down. The run stops issuing requests when the
duration is over, the request budget is spent, or the workload has nothing left; then requests in
flight get `drain_timeout_s` to finish before they are cancelled (and recorded as cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil

from loadtest.swarm.ceiling import CeilingTracker, ceiling_tokens
from loadtest.swarm.client import CANCELLED, OK, Exchange, StreamingClient
from loadtest.swarm.clock import WorkloadClock
from loadtest.swarm.controller import (
    AdaptiveController,
    AdaptiveSettings,
    PeriodFeedback,
    RampSchedule,
    SloTargets,
)
from loadtest.swarm.plan import Fork, PlannedRequest, Send, Session, Think
from loadtest.swarm.records import RecordWriter, RequestRecord
from loadtest.swarm.shard import Shard
from loadtest.swarm.stats import ttft_by_metric
from loadtest.swarm.trace_record import TraceRecorder
from loadtest.swarm.workloads.base import Workload

log = logging.getLogger("kvgate.swarm")

Mode = Literal["fixed", "ramp", "adaptive", "rate", "trace"]
MODES: tuple[str, ...] = ("fixed", "ramp", "adaptive", "rate", "trace")


@dataclass(frozen=True, slots=True)
class LoadSettings:
    mode: Mode = "fixed"
    users: int = 8
    """fixed: the run-wide user count."""
    ramp: RampSchedule | None = None
    adaptive: AdaptiveSettings | None = None
    rate: float | None = None
    """rate: requests per workload second, run-wide."""
    arrival: Literal["poisson", "constant"] = "poisson"
    max_users: int = 10_000
    """rate and trace: cap on concurrent users / requests in flight."""
    slo: SloTargets = field(default_factory=SloTargets)
    period_s: float = 30.0
    duration_s: float = 300.0
    max_requests: int = 1_000_000
    drain_timeout_s: float = 30.0
    think_scale: float = 1.0
    max_think_s: float | None = None
    start_spread_s: float = 5.0
    """New closed-loop users start at a random moment within this many seconds, not all at once."""
    prewarm_concurrency: int = 8
    error_backoff_s: float = 1.0
    """A closed-loop user whose request failed waits this long before its next action."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.mode == "ramp" and self.ramp is None:
            raise ValueError("the ramp mode needs a ramp schedule")
        if self.mode == "adaptive" and self.adaptive is None:
            raise ValueError("the adaptive mode needs adaptive settings")
        if self.mode == "rate" and not (self.rate and self.rate > 0):
            raise ValueError("the rate mode needs a positive rate")
        if self.duration_s <= 0 or self.max_requests < 1 or self.period_s <= 0:
            raise ValueError("the duration, the request budget and the period must be positive")
        if self.think_scale < 0:
            raise ValueError("the think-time scale cannot be negative")


@dataclass(slots=True)
class TimelinePoint:
    t_s: float
    users: int
    target_users: int
    subagents: int
    in_flight: int
    generator_cpu: float
    """CPU seconds the generator process used per wall second since the previous point (1.0 = one core)."""
    loop_lag_s: float
    """How late the sampler woke up (wall seconds): event-loop congestion in the generator."""


@dataclass(slots=True)
class ControlStep:
    period: int
    t_s: float
    users: int
    verdict: str
    reason: str
    next_users: int
    ttft_s: float | None
    output_tokens_per_s: float | None
    completed: int
    converged: bool


@dataclass(slots=True)
class DriverReport:
    stop_reason: str
    span_s: float
    wall_s: float
    started_unix: float
    cpu_seconds: float
    timeline: list[TimelinePoint]
    control: list[ControlStep]
    phases: list[dict[str, Any]]
    prewarm_requests: int
    prewarm_failed: int
    sent: int
    arrivals_without_user: int
    max_schedule_lag_s: float
    max_loop_lag_s: float
    converged_users: int | None
    adaptive_state: dict[str, Any] | None


class _Retired(Exception):
    """The user count went down and this user was chosen to leave."""


class _StopIssuing(Exception):
    """The run is over for new requests."""


@dataclass(slots=True)
class _User:
    local: int
    user: int
    retiring: bool = False
    granted_ticket: bool = False
    task: asyncio.Task | None = None


@dataclass(slots=True)
class LiveState:
    """What the progress display and the metrics endpoint read while the run goes."""

    users: int = 0
    target_users: int = 0
    subagents: int = 0
    in_flight: int = 0
    sent: int = 0
    finished: int = 0
    ok: int = 0
    errors: int = 0
    phase: str = ""
    period: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=2000))
    last_decision: str = ""


class SwarmDriver:
    def __init__(
        self,
        settings: LoadSettings,
        workload: Workload,
        client: StreamingClient,
        clock: WorkloadClock,
        shard: Shard,
        writer: RecordWriter | None = None,
        trace_recorder: TraceRecorder | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.workload = workload
        self.client = client
        self.clock = clock
        self.shard = shard
        self.writer = writer
        self.trace_recorder = trace_recorder
        self.on_record = on_record
        self.tracker = CeilingTracker()
        self.records: list[RequestRecord] = []
        self.live = LiveState()
        self.timeline: list[TimelinePoint] = []
        self.control: list[ControlStep] = []
        self.controller = (
            AdaptiveController(settings.slo, settings.adaptive)
            if settings.mode == "adaptive" and settings.adaptive
            else None
        )
        self._rng = random.Random(settings.seed * 7919 + shard.index)
        self._users: dict[int, _User] = {}
        self._next_request_id = 0
        self._waiting_first_token: dict[int, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._workload_exhausted = False
        self._schedule_done = False
        self._ticket_waiters: deque[asyncio.Future] = deque()
        self._arrivals_without_user = 0
        self._max_schedule_lag = 0.0
        self._max_loop_lag = 0.0
        self._phase_log: list[dict[str, Any]] = []
        self._prewarm_sent = 0
        self._prewarm_failed = 0

    # ---- stopping ---------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- requests ---------------------------------------------------------------------------------

    def _new_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        return request_id

    async def _wait_ticket(self, user: _User | None) -> None:
        if user is not None and user.granted_ticket:
            user.granted_ticket = False
            return
        future = asyncio.get_running_loop().create_future()
        self._ticket_waiters.append(future)
        await future

    async def send(self, request: PlannedRequest, user: _User | None) -> RequestRecord | None:
        if self._stopping:
            raise _StopIssuing
        if self.settings.mode == "rate":
            await self._wait_ticket(user)
            if self._stopping:
                raise _StopIssuing
        live = self.live
        if live.sent >= self.settings.max_requests:
            self.request_stop("request budget spent")
            raise _StopIssuing
        request_id = self._new_request_id()
        live.sent += 1
        if live.sent >= self.settings.max_requests:
            self.request_stop("request budget spent")
        start_s = self.clock.now()
        prefix = self.tracker.observe(request_id, request.block_keys, request.sent_prefix_blocks)
        if self.trace_recorder is not None:
            self.trace_recorder.write(
                start_s,
                request.block_keys,
                request.block_tokens,
                request.prompt_tokens,
                request.max_tokens,
                request.session,
                request.kind,
            )
        waiting = self._waiting_first_token
        waiting[request_id] = time.perf_counter()
        live.in_flight += 1
        self._idle.clear()
        started = time.perf_counter()
        try:
            exchange = await self.client.send(
                request, lambda: waiting.pop(request_id, None), user.user if user is not None else -1
            )
        except asyncio.CancelledError:
            exchange = Exchange(started=started, ended=time.perf_counter(), outcome=CANCELLED)
            self._finish(request_id, request, exchange, prefix, user)
            raise
        finally:
            waiting.pop(request_id, None)
            live.in_flight -= 1
            if live.in_flight == 0:
                self._idle.set()
        return self._finish(request_id, request, exchange, prefix, user)

    def _finish(
        self, request_id: int, request: PlannedRequest, exchange: Exchange, prefix: int, user: _User | None
    ) -> RequestRecord:
        clock = self.clock
        scale = clock.scale
        completion = exchange.completion_tokens
        ttft = itl = tokens_per_s = gap = None
        if exchange.first_token is not None:
            ttft = (exchange.first_token - exchange.started) * scale
            gap = exchange.max_gap_s * scale
            decode = (exchange.last_token or exchange.first_token) - exchange.first_token
            if completion and completion > 1 and decode > 0:
                itl = decode * scale / (completion - 1)
                tokens_per_s = (completion - 1) / (decode * scale)
        ok = exchange.outcome == OK
        record = RequestRecord(
            request_id=request_id,
            shard=self.shard.index,
            user=user.user if user is not None else -1,
            session=request.session,
            kind=request.kind,
            phase=request.phase or self.live.phase,
            start_s=clock.at(exchange.started),
            end_s=clock.at(exchange.ended),
            e2e_s=(exchange.ended - exchange.started) * scale,
            ttft_s=ttft,
            itl_s=itl,
            max_token_gap_s=gap,
            output_tokens_per_s=tokens_per_s,
            prompt_tokens=exchange.prompt_tokens,
            completion_tokens=completion,
            cached_tokens=exchange.cached_tokens,
            expected_prompt_tokens=request.prompt_tokens,
            max_tokens=request.max_tokens,
            blocks=len(request.block_keys),
            block_tokens=request.block_tokens,
            ceiling_tokens=ceiling_tokens(prefix, request.block_tokens, request.prompt_tokens),
            outcome=exchange.outcome,
            http_status=exchange.http_status,
            error_type=exchange.error_type,
            error_message=exchange.error_message,
            slo_ok=ok and self.settings.slo.request_ok(ttft, tokens_per_s),
        )
        self.records.append(record)
        live = self.live
        if exchange.outcome != CANCELLED:
            live.finished += 1
            if ok:
                live.ok += 1
            else:
                live.errors += 1
            live.recent.append(record)
        if self.writer is not None:
            self.writer.write(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    # ---- sessions and users -----------------------------------------------------------------------

    async def _think(self, action: Think, user: _User | None, can_retire: bool) -> None:
        if self.settings.mode != "rate":
            seconds = action.seconds
            if action.kind != "start":
                seconds *= self.settings.think_scale
                if self.settings.max_think_s is not None:
                    seconds = min(seconds, self.settings.max_think_s)
            if seconds > 0:
                await self.clock.sleep(seconds)
        if self._stopping:
            raise _StopIssuing
        if can_retire and user is not None and user.retiring:
            raise _Retired

    async def run_session(self, session: Session, user: _User | None, can_retire: bool = True) -> None:
        actions = session.actions()
        reply: float | None = None
        try:
            while True:
                try:
                    action = actions.send(reply)
                except StopIteration:
                    return
                reply = None
                if isinstance(action, Send):
                    record = await self.send(action.request, user)
                    if record is not None and not record.ok and self.settings.mode != "rate":
                        # A client that failed waits before going on, rather than spinning.
                        await self.clock.sleep(self.settings.error_backoff_s)
                elif isinstance(action, Think):
                    await self._think(action, user, can_retire)
                elif isinstance(action, Fork):
                    began = self.clock.now()
                    self.live.subagents += len(action.children)
                    try:
                        await self._run_children(action.children, user)
                    finally:
                        self.live.subagents -= len(action.children)
                    reply = self.clock.now() - began
        finally:
            actions.close()

    async def _run_children(self, children: list[Session], user: _User | None) -> None:
        tasks = [asyncio.ensure_future(self.run_session(child, user, can_retire=False)) for child in children]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for result in results:
            if isinstance(result, _StopIssuing):
                raise result
            if isinstance(result, BaseException):
                raise result

    async def _user_loop(self, user: _User, spread_s: float) -> None:
        try:
            if spread_s > 0:
                await self.clock.sleep(self._rng.uniform(0.0, spread_s))
            while not self._stopping and not user.retiring:
                session = self.workload.next_session(user.user)
                if session is None:
                    self._workload_exhausted = True
                    return
                await self.run_session(session, user)
        except (_Retired, _StopIssuing):
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("user %d stopped on an unexpected error", user.user)
            raise
        finally:
            self._users.pop(user.local, None)
            self.live.users = len(self._users)
            if not self._users and self._workload_exhausted:
                self.request_stop("the workload has nothing more to send")

    def _start_user(self, spread_s: float, granted_ticket: bool = False) -> _User:
        local = 0
        while local in self._users:
            local += 1
        user = _User(local=local, user=self.shard.global_user(local), granted_ticket=granted_ticket)
        self._users[local] = user
        user.task = self._spawn(self._user_loop(user, spread_s), f"user-{user.user}")
        self.live.users = len(self._users)
        return user

    def set_users(self, target: int, spread_s: float | None = None) -> None:
        """Start or retire users until `target` (shard-local) are active or leaving."""
        spread = self.settings.start_spread_s if spread_s is None else spread_s
        self.live.target_users = target
        staying = sorted(local for local, user in self._users.items() if not user.retiring)
        if len(staying) < target:
            for user in sorted(self._users.values(), key=lambda u: u.local):
                if user.retiring and len(staying) < target:
                    user.retiring = False
                    staying.append(user.local)
            if self._workload_exhausted:
                return
            for _ in range(target - len(staying)):
                self._start_user(spread)
        else:
            for local in staying[target:]:
                self._users[local].retiring = True

    # ---- open loop ---------------------------------------------------------------------------------

    async def _arrivals(self) -> None:
        rate = (self.settings.rate or 0.0) / self.shard.count
        arrival_at = 0.0
        while not self._stopping:
            if self.settings.arrival == "poisson":
                arrival_at += self._rng.expovariate(rate)
            else:
                arrival_at += 1.0 / rate
            await self.clock.sleep_until(arrival_at)
            self._arrive()

    def _arrive(self) -> None:
        while self._ticket_waiters:
            future = self._ticket_waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        if self._workload_exhausted or len(self._users) >= self.settings.max_users:
            self._arrivals_without_user += 1
            return
        self._start_user(0.0, granted_ticket=True)

    async def _replay_schedule(self) -> None:
        limit = asyncio.Semaphore(self.settings.max_users)
        try:
            for offset_s, request in self.workload.schedule():
                if self._stopping:
                    return
                await self.clock.sleep_until(offset_s)
                await limit.acquire()
                if self._stopping:
                    limit.release()
                    return
                self._max_schedule_lag = max(self._max_schedule_lag, self.clock.now() - offset_s)
                self._spawn(self._scheduled_send(request, limit), "scheduled-request")
        finally:
            self._schedule_done = True
        await self._idle.wait()
        self.request_stop("the trace schedule is complete")

    async def _scheduled_send(self, request: PlannedRequest, limit: asyncio.Semaphore) -> None:
        try:
            await self.send(request, None)
        except _StopIssuing:
            pass
        finally:
            limit.release()

    # ---- control ------------------------------------------------------------------------------------

    def _closed_loop_target(self, elapsed_s: float) -> int:
        settings = self.settings
        if settings.mode == "fixed":
            return self.shard.local_share(settings.users)
        if settings.mode == "ramp" and settings.ramp is not None:
            return self.shard.local_share(settings.ramp.users_at(elapsed_s))
        return self.controller.users if self.controller else 0

    async def _ramp_loop(self) -> None:
        ramp = self.settings.ramp
        assert ramp is not None
        while not self._stopping:
            self.set_users(self._closed_loop_target(self.clock.now()))
            await self.clock.sleep(ramp.interval_s - self.clock.now() % ramp.interval_s)

    async def _period_loop(self) -> None:
        period_s = self.settings.period_s
        period = 0
        first_record = 0
        while not self._stopping:
            await self.clock.sleep_until((period + 1) * period_s)
            if self._stopping:
                return
            now = self.clock.now()
            batch = self.records[first_record:]
            first_record = len(self.records)
            self._assess(period, now, batch)
            period += 1
            self.live.period = period

    def _assess(self, period: int, now: float, batch: list[RequestRecord]) -> None:
        finished = [record for record in batch if record.outcome != CANCELLED]
        ok = [record for record in finished if record.outcome == OK]
        ttft = ttft_by_metric([r.ttft_s for r in ok if r.ttft_s is not None], self.settings.slo.ttft_metric)
        speeds = [r.output_tokens_per_s for r in ok if r.output_tokens_per_s is not None]
        speed = sum(speeds) / len(speeds) if speeds else None
        waiting = self._waiting_first_token
        oldest = (time.perf_counter() - min(waiting.values())) * self.clock.scale if waiting else 0.0
        users = len([user for user in self._users.values() if not user.retiring])
        if self.controller is None:
            return
        feedback = PeriodFeedback(
            users=self.controller.users,
            completed=len(ok),
            errors=len(finished) - len(ok),
            ttft_s=ttft,
            output_tokens_per_s=speed,
            oldest_waiting_s=oldest,
        )
        before = self.controller.users
        decision = self.controller.observe(feedback)
        self.control.append(
            ControlStep(
                period=period,
                t_s=now,
                users=before,
                verdict=decision.verdict,
                reason=decision.reason,
                next_users=decision.users,
                ttft_s=ttft,
                output_tokens_per_s=speed,
                completed=len(ok),
                converged=decision.converged,
            )
        )
        self.live.last_decision = f"{decision.verdict}: {decision.reason} -> {decision.users} users"
        log.info("period %d (%d users active): %s", period, users, self.live.last_decision)
        self.set_users(decision.users)

    async def _phase_loop(self, phases: list[Any]) -> None:
        elapsed = 0.0
        for index, phase in enumerate(phases):
            self.workload.begin_phase(index)
            self.live.phase = phase.name
            self._phase_log.append({"name": phase.name, "start_s": elapsed, **phase.settings})
            elapsed += phase.duration_s
            await self.clock.sleep_until(elapsed)
            self._phase_log[-1]["end_s"] = elapsed
        self.request_stop("every sweep phase ran")

    def _sample(self, cpu_share: float, lag_s: float) -> None:
        live = self.live
        self.timeline.append(
            TimelinePoint(
                t_s=self.clock.now(),
                users=len(self._users),
                target_users=live.target_users,
                subagents=live.subagents,
                in_flight=live.in_flight,
                generator_cpu=cpu_share,
                loop_lag_s=lag_s,
            )
        )

    async def _sampler(self) -> None:
        process = psutil.Process()
        interval_wall = min(1.0, max(0.1, self.clock.wall(self.settings.period_s) / 10))
        last_cpu = sum(process.cpu_times()[:2])
        last_wall = time.perf_counter()
        self._sample(0.0, 0.0)
        while True:
            expected = time.perf_counter() + interval_wall
            await asyncio.sleep(interval_wall)
            now_wall = time.perf_counter()
            lag = max(0.0, now_wall - expected)
            self._max_loop_lag = max(self._max_loop_lag, lag)
            cpu = sum(process.cpu_times()[:2])
            self._sample((cpu - last_cpu) / max(1e-9, now_wall - last_wall), lag)
            last_cpu, last_wall = cpu, now_wall

    # ---- the run ------------------------------------------------------------------------------------

    async def _prewarm(self) -> None:
        requests = self.workload.prewarm()
        if not requests:
            return
        log.info("prewarming with %d requests", len(requests))
        limit = asyncio.Semaphore(self.settings.prewarm_concurrency)

        async def one(request: PlannedRequest) -> None:
            async with limit:
                request_id = -1 - self._prewarm_sent
                self._prewarm_sent += 1
                self.tracker.observe(request_id, request.block_keys)
                exchange = await self.client.send(request)
                if exchange.outcome != OK:
                    self._prewarm_failed += 1

        await asyncio.gather(*(one(request) for request in requests))

    async def run(self) -> DriverReport:
        settings = self.settings
        await self._prewarm()
        process = psutil.Process()
        cpu_start = sum(process.cpu_times()[:2])
        started_unix = time.time()
        self.clock.start()
        wall_start = time.perf_counter()
        sampler = self._spawn(self._sampler(), "sampler")
        phases = self.workload.phases()
        if phases:
            self._spawn(self._phase_loop(phases), "phases")
        self._spawn(self._period_loop(), "periods")
        if settings.mode == "trace":
            self._spawn(self._replay_schedule(), "schedule")
        elif settings.mode == "rate":
            self.live.target_users = 0
            self._spawn(self._arrivals(), "arrivals")
        elif settings.mode == "ramp":
            self._spawn(self._ramp_loop(), "ramp")
        else:
            self.set_users(self._closed_loop_target(0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=self.clock.wall(settings.duration_s))
        if not self._stop_reason:
            self._stop_reason = "duration reached"
        stop_wall = time.perf_counter() - wall_start
        stop_cpu = sum(process.cpu_times()[:2]) - cpu_start
        sampler.cancel()  # the timeline ends when the load stops; the drain is not part of it
        self._sample(stop_cpu / stop_wall if stop_wall > 0 else 0.0, 0.0)
        self._stopping = True
        for future in self._ticket_waiters:
            if not future.done():
                future.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=self.clock.wall(settings.drain_timeout_s))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, _StopIssuing | _Retired):
                log.error("a swarm task failed: %r", result)
        wall = time.perf_counter() - wall_start
        cpu = sum(process.cpu_times()[:2]) - cpu_start
        if self._phase_log and "end_s" not in self._phase_log[-1]:
            self._phase_log[-1]["end_s"] = self.clock.duration(wall)
        controller = self.controller
        return DriverReport(
            stop_reason=self._stop_reason,
            span_s=self.clock.duration(wall),
            wall_s=wall,
            started_unix=started_unix,
            cpu_seconds=cpu,
            timeline=self.timeline,
            control=self.control,
            phases=self._phase_log,
            prewarm_requests=self._prewarm_sent,
            prewarm_failed=self._prewarm_failed,
            sent=self.live.sent,
            arrivals_without_user=self._arrivals_without_user,
            max_schedule_lag_s=self._max_schedule_lag,
            max_loop_lag_s=self._max_loop_lag,
            converged_users=(controller.good if controller and controller.converged else None),
            adaptive_state=(
                {
                    "users": controller.users,
                    "good": controller.good,
                    "bad": controller.bad,
                    "converged": controller.converged,
                }
                if controller
                else None
            ),
        )
