"""Figures computed from raw request records: overall, per period, per phase, per kind.

Every figure is a function of the records alone (plus the span they cover and the SLO), so results of
shards merge exactly: put their records together and compute again, never average percentiles.

- Hit rate measured: sum of `cached_tokens` / sum of `prompt_tokens` the server reported, over
  successful requests. If the server never reports `cached_tokens` it is unknown (None); if it reports
  them for some requests only, the others count as 0 (vLLM 0.11 left the field out when it was 0).
- Ceiling: sum of `ceiling_tokens` / sum of `expected_prompt_tokens` over the same requests: the share
  of prompt tokens in blocks the run had sent before, the most any cache could serve.
- Percentiles use linear interpolation (numpy's default) over one value per request. ITL is per-request
  mean inter-token latency, so its percentiles are over requests, as in aiperf and inference-perf.
- Goodput: successful requests that met the SLO per request (TTFT at most the target, decode speed at
  least the target), per second and as a share of finished requests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from loadtest.swarm.client import CANCELLED, HTTP_ERROR, OK
from loadtest.swarm.controller import SloTargets
from loadtest.swarm.records import RequestRecord

PERCENTILES = (50, 90, 95, 99)


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    array = np.asarray([value for value in values if value is not None], dtype=np.float64)
    array = array[~np.isnan(array)]
    result: dict[str, float | int | None] = {"count": int(array.size)}
    if array.size == 0:
        result.update({"mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None})
        return result
    result["mean"] = float(array.mean())
    for percentile, value in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True):
        result[f"p{percentile}"] = float(value)
    result["max"] = float(array.max())
    return result


def error_kind(record: RequestRecord) -> str:
    if record.outcome == HTTP_ERROR and record.http_status is not None:
        return f"http_{record.http_status}"
    return record.outcome


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def cache_figures(records: Sequence[RequestRecord]) -> dict[str, Any]:
    ok = [record for record in records if record.outcome == OK]
    reported = [record for record in ok if record.prompt_tokens is not None]
    any_cached = any(record.cached_tokens is not None for record in reported)
    prompt = sum(record.prompt_tokens or 0 for record in reported)
    cached = sum(record.cached_tokens or 0 for record in reported)
    expected = sum(record.expected_prompt_tokens for record in ok)
    ceiling = sum(record.ceiling_tokens for record in ok)
    hit_rate = _ratio(cached, prompt) if any_cached else None
    ceiling_rate = _ratio(ceiling, expected)
    return {
        "prompt_tokens": prompt,
        "cached_tokens": cached if any_cached else None,
        "hit_rate": hit_rate,
        "expected_prompt_tokens": expected,
        "ceiling_tokens": ceiling,
        "ceiling_hit_rate": ceiling_rate,
        "measured_over_ceiling": _ratio(hit_rate, ceiling_rate)
        if hit_rate is not None and ceiling_rate
        else None,
    }


def ttft_by_metric(values: Sequence[float], metric: str) -> float | None:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return None
    if metric == "avg":
        return float(array.mean())
    if metric == "max":
        return float(array.max())
    return float(np.percentile(array, 95))


def summarize(records: Sequence[RequestRecord], span_s: float, slo: SloTargets) -> dict[str, Any]:
    """The headline figures of a set of records that covers `span_s` workload seconds."""
    finished = [record for record in records if record.outcome != CANCELLED]
    ok = [record for record in finished if record.outcome == OK]
    errors = Counter(error_kind(record) for record in finished if record.outcome != OK)
    span = span_s if span_s > 0 else float("nan")
    completion = sum(record.completion_tokens or 0 for record in ok)
    prompt = sum(record.prompt_tokens or record.expected_prompt_tokens for record in ok)
    good = sum(1 for record in ok if record.slo_ok)
    ttfts = [record.ttft_s for record in ok if record.ttft_s is not None]
    return {
        "span_s": span_s,
        "requests": {
            "finished": len(finished),
            "ok": len(ok),
            "failed": len(finished) - len(ok),
            "cancelled_at_stop": len(records) - len(finished),
            "errors_by_kind": dict(sorted(errors.items())),
        },
        "throughput": {
            "requests_per_s": _finite(len(ok) / span),
            "output_tokens_per_s": _finite(completion / span),
            "prompt_tokens_per_s": _finite(prompt / span),
        },
        "latency_s": {
            "ttft": distribution(ttfts),
            "itl": distribution([record.itl_s for record in ok]),
            "e2e": distribution([record.e2e_s for record in ok]),
            "max_token_gap": distribution([record.max_token_gap_s for record in ok]),
        },
        "ttft_by_slo_metric_s": ttft_by_metric(ttfts, slo.ttft_metric),
        "output_tokens_per_s_per_request": distribution([record.output_tokens_per_s for record in ok]),
        "cache": cache_figures(finished),
        "goodput": {
            "requests": good,
            "requests_per_s": _finite(good / span),
            "fraction": _ratio(good, len(finished)),
        },
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def by_key(
    records: Sequence[RequestRecord], key: Callable[[RequestRecord], str]
) -> dict[str, list[RequestRecord]]:
    groups: dict[str, list[RequestRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def kind_table(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    table = {}
    for kind, group in sorted(by_key(records, lambda record: record.kind).items()):
        ok = [record for record in group if record.outcome == OK]
        ttft = distribution([record.ttft_s for record in ok])
        cache = cache_figures(group)
        table[kind] = {
            "requests": len(group),
            "ok": len(ok),
            "ttft_p50_s": ttft["p50"],
            "ttft_p95_s": ttft["p95"],
            "mean_prompt_tokens": _ratio(sum(record.expected_prompt_tokens for record in group), len(group)),
            "hit_rate": cache["hit_rate"],
            "ceiling_hit_rate": cache["ceiling_hit_rate"],
        }
    return table


PERIOD_COLUMNS = (
    "period",
    "start_s",
    "end_s",
    "users",
    "requests_finished",
    "requests_ok",
    "errors",
    "requests_per_s",
    "output_tokens_per_s",
    "prompt_tokens",
    "cached_tokens",
    "hit_rate",
    "ceiling_tokens",
    "ceiling_hit_rate",
    "measured_over_ceiling",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "ttft_mean_s",
    "ttft_max_s",
    "itl_p50_s",
    "itl_p90_s",
    "itl_p95_s",
    "itl_p99_s",
    "output_tokens_per_s_per_request",
    "goodput_requests",
    "goodput_requests_per_s",
    "goodput_fraction",
    "slo_ok",
)


def period_rows(
    records: Sequence[RequestRecord],
    period_s: float,
    span_s: float,
    slo: SloTargets,
    users_at: Callable[[float], int | None] | None = None,
) -> list[dict[str, Any]]:
    """One row per assessment period; a request belongs to the period in which it finished."""
    count = max(1, math.ceil(span_s / period_s - 1e-9)) if span_s > 0 else 1
    buckets: list[list[RequestRecord]] = [[] for _ in range(count)]
    for record in records:
        if record.outcome == CANCELLED:
            continue
        buckets[min(count - 1, max(0, int(record.end_s // period_s)))].append(record)
    rows = []
    for index, bucket in enumerate(buckets):
        start = index * period_s
        end = min(span_s, start + period_s) if span_s > 0 else start + period_s
        summary = summarize(bucket, end - start, slo)
        ttft = summary["latency_s"]["ttft"]
        itl = summary["latency_s"]["itl"]
        cache = summary["cache"]
        tps = summary["output_tokens_per_s_per_request"]["mean"]
        slo_ok = None
        if slo.defined and summary["requests"]["ok"]:
            ttft_value = summary["ttft_by_slo_metric_s"]
            slo_ok = (slo.ttft_s is None or (ttft_value is not None and ttft_value <= slo.ttft_s)) and (
                slo.min_output_tokens_per_s is None or tps is None or tps >= slo.min_output_tokens_per_s
            )
        rows.append(
            {
                "period": index,
                "start_s": start,
                "end_s": end,
                "users": users_at(end) if users_at else None,
                "requests_finished": summary["requests"]["finished"],
                "requests_ok": summary["requests"]["ok"],
                "errors": summary["requests"]["failed"],
                "requests_per_s": summary["throughput"]["requests_per_s"],
                "output_tokens_per_s": summary["throughput"]["output_tokens_per_s"],
                "prompt_tokens": cache["prompt_tokens"],
                "cached_tokens": cache["cached_tokens"],
                "hit_rate": cache["hit_rate"],
                "ceiling_tokens": cache["ceiling_tokens"],
                "ceiling_hit_rate": cache["ceiling_hit_rate"],
                "measured_over_ceiling": cache["measured_over_ceiling"],
                "ttft_p50_s": ttft["p50"],
                "ttft_p90_s": ttft["p90"],
                "ttft_p95_s": ttft["p95"],
                "ttft_p99_s": ttft["p99"],
                "ttft_mean_s": ttft["mean"],
                "ttft_max_s": ttft["max"],
                "itl_p50_s": itl["p50"],
                "itl_p90_s": itl["p90"],
                "itl_p95_s": itl["p95"],
                "itl_p99_s": itl["p99"],
                "output_tokens_per_s_per_request": tps,
                "goodput_requests": summary["goodput"]["requests"],
                "goodput_requests_per_s": summary["goodput"]["requests_per_s"],
                "goodput_fraction": summary["goodput"]["fraction"],
                "slo_ok": slo_ok,
            }
        )
    return rows
