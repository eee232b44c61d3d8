"""Fault injection against the gateway, scenario by scenario, each bounded in time.

The gateway runs as `kvgate serve` in its own process in front of simulated replicas (`kvgate sim`
processes); a closed-loop streaming load (`loadtest.faults.StreamLoad`) drives it from this process and
records how each request ended: ok, ended by an SSE error event (the stream had begun; the client was
told), or lost (an error status, a broken connection, a stream cut without [DONE]). Gateway figures come
from its /metrics. Exits non-zero when a scenario misses its requirement.

    python benchmarks/faults.py kill slow redis kv-garbage      # about 4 minutes
    python benchmarks/faults.py soak --soak-seconds 600          # memory and open files, 10 minutes
    python benchmarks/faults.py all --json results.json

Scenarios:
  kill        SIGKILL one of three replica processes under load, restart it on the same port 10 s later
  slow        one of four replicas 20x slower (--slowdown), against a run without the fault
  redis       the Redis index's server killed (or SIGSTOPped: --redis-fault stop) for 30 s under load
  kv-garbage  garbage, truncated and out-of-order messages on the KV-events socket, precise mode
  soak        sustained load; the gateway's RSS and open fds every 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import zmq
import zmq.asyncio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.faults import GatewayGauges, ProcessSampler, RequestRecord, StreamLoad, tally
from loadtest.faults.kv_relay import KvEventRelay, inject_until_done
from loadtest.process import GatewayProcess
from loadtest.redis_process import RedisProcess
from loadtest.sim import SimProcess
from loadtest.sim.fleet import free_port_range

MODEL = "sim-llama3-8b"
SIM_ARGS = ["--max-model-len", "16384", "--hbm-blocks", "3000"]
MIB = 1024 * 1024


class Report:
    """Figures of one scenario and its requirements, each checked and printed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.figures: dict[str, object] = {}
        self.checks: list[tuple[str, bool]] = []

    def add(self, **figures: object) -> None:
        self.figures.update(figures)

    def require(self, what: str, ok: bool) -> None:
        self.checks.append((what, bool(ok)))

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.checks)

    def print(self) -> None:
        print(f"\n== {self.name}: {'PASS' if self.passed else 'FAIL'}")
        for key, value in self.figures.items():
            print(f"  {key:<34} {_fmt(value)}")
        for what, ok in self.checks:
            print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


def load_figures(report: Report, records) -> dict:
    figures = tally(records)
    report.add(
        requests_sent=figures["sent"],
        ok=figures["ok"],
        lost=figures["lost"],
        sse_error_events=figures["sse_error"],
    )
    if figures["lost_details"]:
        report.add(lost_because=dict(figures["lost_details"].most_common(3)))
    return figures


def gateway_process(replicas: list[str], *extra: str) -> GatewayProcess:
    return GatewayProcess(extra_args=["--replicas", ",".join(replicas), "--log-level", "warning", *extra])


def replica_name(url: str) -> str:
    return url.removeprefix("http://")


async def gauges(session: aiohttp.ClientSession, gateway: GatewayProcess) -> GatewayGauges:
    return await GatewayGauges(gateway.url).read(session)


async def retried(session: aiohttp.ClientSession, gateway: GatewayProcess) -> int:
    return int((await gauges(session, gateway)).value("kvgate_requests_total", reason="retry"))


async def watch(
    session: aiohttp.ClientSession, gateway: GatewayProcess, condition, limit_s: float, since: float
) -> float | None:
    """Seconds from `since` (time.monotonic()) until `condition(gauges)` holds; None after `limit_s`."""
    while time.monotonic() - since < limit_s:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            if condition(await gauges(session, gateway)):
                return time.monotonic() - since
        await asyncio.sleep(0.05)
    return None


# ---------------------------------------------------------------------------------------------- kill


async def kill(args: argparse.Namespace) -> Report:
    """Three single-replica processes; SIGKILL the one with the most requests in flight under load and
    restart it on its port 10 s later, `--kill-rounds` times. Every request waits 0.5 s before its engine
    takes it (--added-latency), so that a kill finds requests without a first byte as well as streams
    under way."""
    rounds = args.kill_rounds
    report = Report(f"replica killed mid-run (SIGKILL), restarted 10 s later, {rounds} rounds")
    base = free_port_range(3)
    sim_args = ["--time-scale", "1", "--added-latency", "0.5", *SIM_ARGS]
    sims = [SimProcess(replicas=1, port=base + i, extra_args=sim_args) for i in range(3)]
    for sim in sims:
        await asyncio.to_thread(sim.start)
    urls = [sim.urls[0] for sim in sims]
    victim = ""

    def healthy(value: float):
        return lambda g: g.value("kvgate_replica_healthy", replica=victim) == value

    def indexed(blocks: float):
        return lambda g: g.value("kvgate_index_blocks", replica=victim) == blocks

    def served(g: GatewayGauges) -> float:
        return g.value("kvgate_requests_total", replica=victim)

    timings: dict[str, list[float | None]] = {
        "out_of_pool_s": [], "out_of_index_s": [], "restarted_process_healthy_s": [],
        "back_in_pool_s": [],
    }  # fmt: skip
    routable_after_kill: list[int] = []
    inflight_at_kill: list[float] = []
    probes: list[RequestRecord] = []
    cold_probes_routed_there: list[int] = []
    try:
        gateway = gateway_process(urls)
        async with gateway, aiohttp.ClientSession() as session:
            load = StreamLoad(gateway.url, MODEL, concurrency=12, max_tokens=96, turns=6)
            running = asyncio.create_task(load.run(rounds * 22.0 + 3.0))
            for _ in range(rounds):
                await asyncio.sleep(6.0)
                inflight = (await gauges(session, gateway)).by_label("kvgate_inflight_requests", "replica")
                target = max(range(3), key=lambda i: inflight.get(replica_name(urls[i]), 0.0))
                victim = replica_name(urls[target])
                inflight_at_kill.append(inflight.get(victim, 0.0))
                killed_at = time.monotonic()
                sims[target].process.send_signal(signal.SIGKILL)
                timings["out_of_pool_s"].append(await watch(session, gateway, healthy(0.0), 10.0, killed_at))
                timings["out_of_index_s"].append(await watch(session, gateway, indexed(0), 10.0, killed_at))
                ready = await (await session.get(gateway.url + "/ready")).json()
                routable_after_kill.append(ready.get("routable_replicas"))
                await asyncio.to_thread(sims[target].stop)
                await asyncio.sleep(max(0.0, killed_at + 10.0 - time.monotonic()))
                restarted_at = time.monotonic()
                sims[target] = SimProcess(replicas=1, port=base + target, extra_args=sim_args)
                await asyncio.to_thread(sims[target].start)
                timings["restarted_process_healthy_s"].append(time.monotonic() - restarted_at)
                back = await watch(session, gateway, healthy(1.0), 20.0, restarted_at)
                timings["back_in_pool_s"].append(back)
                count = served(await gauges(session, gateway))
                for n in range(3):  # prompts nobody holds go to the least loaded replica: the empty one
                    probes.append(await load.cold(session, f"{n}-{time.monotonic()}"))
                cold_probes_routed_there.append(int(served(await gauges(session, gateway)) - count))
            records = await running
            final = await gauges(session, gateway)
    finally:
        for sim in sims:
            await asyncio.to_thread(sim.stop)
    figures = load_figures(report, [*records, *probes])
    errors = final.by_label("kvgate_upstream_errors_total", "kind")
    before_first_byte = sum(count for kind, count in errors.items() if kind != "midstream")
    retried = int(final.value("kvgate_requests_total", reason="retry"))
    report.add(
        retried=retried,
        upstream_errors=errors,
        gateway_inflight_on_victim_at_kill=inflight_at_kill,
        routable_replicas_after_kill=routable_after_kill,
        **{name: [None if v is None else round(v, 2) for v in values] for name, values in timings.items()},
        requests_routed_to_it_during_3_cold_probes=cold_probes_routed_there,
        ttft_p50_s=figures["ttft_p50_s"],
    )
    out = timings["out_of_pool_s"] + timings["out_of_index_s"]
    report.require("0 requests lost", figures["lost"] == 0)
    report.require(
        "every stream the gateway saw cut mid-way ended with an SSE error event",
        figures["sse_error"] == errors.get("midstream", 0),
    )
    report.require("every failure before the first byte was retried", retried >= before_first_byte)
    report.require("out of the pool and the index within 5 s", all(v is not None and v <= 5.0 for v in out))
    report.require("back in the pool after each restart", None not in timings["back_in_pool_s"])
    report.require("routed to again after each restart", all(cold_probes_routed_there))
    return report


# ---------------------------------------------------------------------------------------------- slow


async def slow_run(fault: bool, seconds: float) -> tuple[dict, dict[str, float], dict[str, float], str]:
    sim_args = ["--time-scale", "1", *SIM_ARGS]
    if fault:
        sim_args += ["--fault-replicas", "0", "--slowdown", "20"]
    async with SimProcess(replicas=4, extra_args=sim_args) as sim:
        gateway = gateway_process(sim.urls)
        async with gateway, aiohttp.ClientSession() as session:
            load = StreamLoad(gateway.url, MODEL, concurrency=16, max_tokens=32, turns=8)
            records = await load.run(seconds)
            final = await gauges(session, gateway)
    per_replica = final.by_label("kvgate_requests_total", "replica")
    total = sum(per_replica.values()) or 1.0
    names = zip("ABCD", sim.urls, strict=True)
    shares = {name: per_replica.get(replica_name(url), 0.0) / total for name, url in names}
    reasons = final.by_label("kvgate_requests_total", "reason")
    return tally(records), shares, reasons, replica_name(sim.urls[0])


async def slow(args: argparse.Namespace) -> Report:
    """Four replicas; one runs every engine step 20x slower. Against the same load without the fault."""
    report = Report("slow replica (--slowdown 20 on one of four)")
    seconds = 25.0
    baseline, base_shares, _, _ = await slow_run(False, seconds)
    faulty, shares, reasons, _ = await slow_run(True, seconds)
    report.add(
        requests_sent=faulty["sent"],
        ok=faulty["ok"],
        lost=faulty["lost"],
        sse_error_events=faulty["sse_error"],
        requests_sent_no_fault=baseline["sent"],
        lost_no_fault=baseline["lost"],
        share_of_requests_no_fault=base_shares,
        share_of_requests_A_slow=shares,
        decision_reasons=reasons,
        ttft_p50_s_no_fault=baseline["ttft_p50_s"],
        ttft_p50_s_fault=faulty["ttft_p50_s"],
        ttft_p95_s_no_fault=baseline["ttft_p95_s"],
        ttft_p95_s_fault=faulty["ttft_p95_s"],
        ttft_p50_ratio=faulty["ttft_p50_s"] / baseline["ttft_p50_s"],
        hit_rate_no_fault=baseline["hit_rate"],
        hit_rate_fault=faulty["hit_rate"],
    )
    fair = 1.0 / len(shares)
    report.require("0 requests lost", faulty["lost"] == 0 and baseline["lost"] == 0)
    report.require("the slow replica gets under half its fair share", shares["A"] < 0.5 * fair)
    report.require("no hot spot: no replica above 1.5x its fair share", max(shares.values()) <= 1.5 * fair)
    return report


# ---------------------------------------------------------------------------------------------- redis


async def redis(args: argparse.Namespace) -> Report:
    """The shared index's Redis goes away for 30 s under load (killed, or frozen by SIGSTOP)."""
    report = Report(f"Redis index down for 30 s ({args.redis_fault})")
    phases = {"before": 20.0, "during": 30.0, "after": 20.0}
    with tempfile.TemporaryDirectory(prefix="kvgate-redis-") as directory:
        server = RedisProcess(Path(directory))
        await asyncio.to_thread(server.start)
        sim = SimProcess(replicas=3, extra_args=["--time-scale", "2", *SIM_ARGS])
        try:
            async with sim:
                gateway = gateway_process(sim.urls, "--index", server.url)
                async with gateway, aiohttp.ClientSession() as session:
                    load = StreamLoad(gateway.url, MODEL, concurrency=12, max_tokens=32, turns=10)
                    running = asyncio.create_task(load.run(sum(phases.values())))
                    started = time.monotonic()
                    marks = {"before": await gauges(session, gateway)}
                    await asyncio.sleep(phases["before"])
                    down_at = time.monotonic()
                    if args.redis_fault == "stop":
                        server.process.send_signal(signal.SIGSTOP)
                    else:
                        server.process.kill()
                    up_readings = []
                    while time.monotonic() - down_at < phases["during"]:
                        up_readings.append((await gauges(session, gateway)).value("kvgate_index_redis_up"))
                        await asyncio.sleep(0.5)
                    marks["during"] = await gauges(session, gateway)
                    if args.redis_fault == "stop":
                        server.process.send_signal(signal.SIGCONT)
                    else:
                        server.process.wait()
                        await asyncio.to_thread(server.start)
                    back_at = time.monotonic()
                    up_again = await watch(
                        session, gateway, lambda g: g.value("kvgate_index_redis_up") == 1, 20.0, back_at
                    )
                    records = await running
                    marks["after"] = await gauges(session, gateway)
                    log = gateway.stderr_text()
        finally:
            if server.process is not None:
                server.process.send_signal(signal.SIGCONT)  # a frozen redis-server would sit on SIGTERM
            await asyncio.to_thread(server.stop)
    figures = load_figures(report, records)
    bounds = {"before": (started, down_at), "during": (down_at, back_at), "after": (back_at, float("inf"))}
    hit_rates = {
        phase: tally(r for r in records if low <= r.started < high)["hit_rate"]
        for phase, (low, high) in bounds.items()
    }
    fallbacks = {
        "during": marks["during"].value("kvgate_index_redis_fallbacks_total")
        - marks["before"].value("kvgate_index_redis_fallbacks_total"),
        "after": marks["after"].value("kvgate_index_redis_fallbacks_total")
        - marks["during"].value("kvgate_index_redis_fallbacks_total"),
    }
    redis_lines = [line for line in log.splitlines() if "redis" in line.lower()]
    report.add(
        retried=int(marks["after"].value("kvgate_requests_total", reason="retry")),
        redis_up_while_down=f"{sum(1 for v in up_readings if v == 0)}/{len(up_readings)} readings at 0",
        redis_up_again_after_s=up_again,
        fallback_lookups=fallbacks,
        dropped_writes=marks["after"].value("kvgate_index_redis_dropped_writes_total"),
        hit_rate=hit_rates,
        gateway_log_lines_on_redis=len(redis_lines),
        first_log_line=redis_lines[0][:140] if redis_lines else "-",
        ttft_p50_s=figures["ttft_p50_s"],
    )
    report.require("0 requests lost", figures["lost"] == 0)
    report.require("0 SSE error events", figures["sse_error"] == 0)
    report.require("the gateway saw Redis down", any(v == 0 for v in up_readings))
    report.require("and up again once it returned", up_again is not None)
    return report


# ---------------------------------------------------------------------------------------------- KV events


async def kv_garbage(args: argparse.Namespace) -> Report:
    """Precise mode through a relay that slips bad messages into each engine's KV-event stream."""
    report = Report("garbage on the KV-events socket (precise mode)")
    events_base = free_port_range(3)
    sim = SimProcess(
        replicas=3, extra_args=["--time-scale", "2", "--kv-events-port", str(events_base), *SIM_ARGS]
    )
    context = zmq.asyncio.Context()
    relays = [KvEventRelay(context, f"tcp://127.0.0.1:{events_base + i}", seed=i) for i in range(3)]
    seconds = 30.0
    try:
        async with sim:
            for relay in relays:
                relay.start()
            pairs = zip(sim.urls, relays, strict=True)
            replicas = [{"url": url, "kv_events": relay.endpoint} for url, relay in pairs]
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
                json.dump({"replicas": replicas, "precise": {"enabled": True}}, config)
            gateway = GatewayProcess(extra_args=["--config", config.name, "--log-level", "error"])
            async with gateway, aiohttp.ClientSession() as session:
                load = StreamLoad(gateway.url, MODEL, concurrency=12, max_tokens=32, turns=10)
                running = asyncio.create_task(load.run(seconds))
                await asyncio.sleep(2.0)
                await inject_until_done(running, relays, 0.05)
                records = await running
                await asyncio.sleep(0.5)
                final = await gauges(session, gateway)
                alive = gateway.process.poll() is None
            os.unlink(config.name)
    finally:
        for relay in relays:
            await relay.close()
        context.term()
    figures = load_figures(report, records)
    injected = sum((relay.injected for relay in relays), Counter())
    counted = final.by_label("kvgate_kv_events_total", "kind")
    expected = {
        "malformed": injected["malformed"],
        "undecodable": injected["undecodable"] + injected["truncated"],
        "out_of_order": injected["out_of_order"],
    }
    report.add(
        injected=dict(injected),
        gateway_counted=counted,
        batches_forwarded=sum(relay.forwarded for relay in relays),
        hit_rate=figures["hit_rate"],
        ttft_p50_s=figures["ttft_p50_s"],
    )
    report.require("0 requests lost", figures["lost"] == 0)
    report.require("0 SSE error events", figures["sse_error"] == 0)
    report.require("the gateway is still running", alive)
    report.require(
        "every bad message counted by kind",
        all(counted.get(kind, 0) == count for kind, count in expected.items()),
    )
    report.require("real batches still applied", counted.get("applied", 0) > 0)
    report.require("no message failed unexpectedly (kind=error)", counted.get("error", 0) == 0)
    return report


# ---------------------------------------------------------------------------------------------- soak


async def soak(args: argparse.Namespace) -> Report:
    report = Report(f"soak ({args.soak_seconds:.0f} s, {args.soak_users} streaming users)")
    sim = SimProcess(replicas=4, extra_args=["--time-scale", "10", *SIM_ARGS])
    async with sim:
        gateway = gateway_process(sim.urls)
        async with gateway, aiohttp.ClientSession() as session:
            sampler = ProcessSampler(gateway.pid, interval_s=10.0)
            sampler.start()
            load = StreamLoad(gateway.url, MODEL, concurrency=args.soak_users, max_tokens=32, turns=12)
            records = await load.run(args.soak_seconds)
            await sampler.stop()
            figures = load_figures(report, records)
            report.add(
                retried=await retried(session, gateway),
                requests_per_s=figures["sent"] / args.soak_seconds,
                hit_rate=figures["hit_rate"],
                ttft_p50_s=figures["ttft_p50_s"],
                ttft_p95_s=figures["ttft_p95_s"],
                samples=len(sampler.samples),
            )
            rss, fds = sampler.summary(1), sampler.summary(2)
            report.add(
                rss_mib={k: v / MIB for k, v in rss.items()},
                open_fds=fds,
                rss_series_mib=[round(s[1] / MIB, 1) for s in sampler.samples],
                fd_series=[s[2] for s in sampler.samples],
            )
            report.require("0 requests lost", figures["lost"] == 0)
            report.require("0 SSE error events (no fault injected)", figures["sse_error"] == 0)
            report.require(
                "RSS flat: slope after warm-up under 1% of the median per minute",
                abs(rss["slope_per_min"]) < 0.01 * rss["median"],
            )
            report.require(
                "RSS flat: after warm-up, max within 10% of min",
                rss["settled_max"] <= 1.10 * rss["settled_min"],
            )
            report.require("open fds flat: slope after warm-up under 1 per minute", fds["slope_per_min"] < 1)
            report.require(
                "open fds flat: after warm-up, max and min within 16",
                fds["settled_max"] - fds["settled_min"] <= 16,
            )
    return report


SCENARIOS: dict[str, Callable[[argparse.Namespace], Awaitable[Report]]] = {
    "kill": kill,
    "slow": slow,
    "redis": redis,
    "kv-garbage": kv_garbage,
    "soak": soak,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="+", choices=[*SCENARIOS, "all"])
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="soak duration (default 600)")
    parser.add_argument("--soak-users", type=int, default=32, help="concurrent streams of the soak")
    parser.add_argument(
        "--redis-fault",
        choices=["kill", "stop"],
        default="kill",
        help="kill: SIGKILL, then a new server on the port; stop: SIGSTOP, then SIGCONT",
    )
    parser.add_argument("--kill-rounds", type=int, default=3, help="kills and restarts (default 3)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(SCENARIOS) if "all" in args.scenarios else args.scenarios
    reports = []
    for name in names:
        started = time.monotonic()
        report = await SCENARIOS[name](args)
        report.add(scenario_wall_s=time.monotonic() - started)
        report.print()
        reports.append(report)
    if args.json:
        payload = {r.name: {"figures": r.figures, "checks": dict(r.checks)} for r in reports}
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(payload, indent=2, default=str))
    failed = [r.name for r in reports if not r.passed]
    print(
        f"\n{len(reports) - len(failed)}/{len(reports)} scenarios passed"
        + (f"; failed: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
