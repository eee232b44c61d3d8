"""Forwarding a routed request to a replica, and its response back to the client.

Nothing is sent to the client before the replica's first byte of body has arrived, so any failure up
to then (connect error, timeout, a 5xx, a replica draining) is retried on the next replica of the
ranking. After that the response streams through event by event; if the replica fails mid-stream the
client gets an SSE error event and the end marker, as vLLM itself ends a broken stream. A client that
disconnects cancels the relay, which closes the upstream request so the engine aborts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from gateway.errors import APIError
from gateway.health import ReplicaMonitor
from gateway.metrics import GatewayMetrics, ReplicaSeries
from gateway.replica_http import ConnectFailed, Response, UpstreamError
from gateway.request import InferenceRequest
from gateway.router import Decision, Dispatch, Router
from gateway.sse import SSERelay, cached_tokens
from gateway.upstream import Upstream

log = logging.getLogger("kvgate.proxy")

_FORWARDED_RESPONSE_HEADERS = ("content-type", "x-request-id")


@dataclass(slots=True)
class Reply:
    """What goes back to the client: a status, headers, and a body, or a stream of SSE bytes."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    close: Callable[[], None] | None = None
    """Releases the stream's upstream connection and load, whether or not the stream was ever read."""


class _RetryableFailure(Exception):
    def __init__(self, kind: str, detail: str, response: Reply | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.response = response


class Proxy:
    def __init__(
        self,
        upstream: Upstream,
        router: Router,
        monitor: ReplicaMonitor,
        metrics: GatewayMetrics,
        max_retries: int,
        upstream_api_key: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.router = router
        self.monitor = monitor
        self.metrics = metrics
        self.max_retries = max_retries
        self.upstream_api_key = upstream_api_key

    async def forward(
        self,
        path: str,
        request: InferenceRequest,
        decision: Decision,
        arrived: float,
        headers: dict[str, str],
    ) -> Reply:
        body = request.upstream_body()
        upstream_headers = self._upstream_headers(headers)
        attempts = decision.ranking.replicas[: 1 + self.max_retries]
        last_failure: _RetryableFailure | None = None
        for attempt, replica in enumerate(attempts):
            dispatch = self.router.dispatch(decision, replica, attempt)
            try:
                response = await self._attempt(
                    path, body, upstream_headers, request, decision, dispatch, arrived
                )
            except _RetryableFailure as failure:
                dispatch.close()
                self.metrics.upstream_errors.labels(replica.name, failure.kind).inc()
                self.monitor.report_failure(replica, failure.kind)
                log.warning(
                    "attempt %d on %s failed (%s): %s", attempt + 1, replica.name, failure.kind, failure
                )
                last_failure = failure
                continue
            except BaseException:  # cancelled: the client left before the first byte
                dispatch.close()
                raise
            self.monitor.report_success(replica)
            self.metrics.response_sent(decision.model, response.status)
            return response
        if last_failure is not None and last_failure.response is not None:
            self.metrics.response_sent(decision.model, last_failure.response.status)
            return last_failure.response
        self.metrics.response_sent(decision.model, 502)
        detail = f"{last_failure.kind}: {last_failure}" if last_failure else "no replica to try"
        raise APIError(502, f"No replica could serve the request ({len(attempts)} tried; last: {detail}).")

    def _upstream_headers(self, headers: dict[str, str]) -> dict[str, str]:
        forwarded = {"content-type": "application/json"}
        if self.upstream_api_key:
            forwarded["authorization"] = f"Bearer {self.upstream_api_key}"
        for name in ("x-request-id", "traceparent"):
            if name in headers:
                forwarded[name] = headers[name]
        return forwarded

    async def _attempt(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        request: InferenceRequest,
        decision: Decision,
        dispatch: Dispatch,
        arrived: float,
    ) -> Reply:
        replica = dispatch.replica
        try:
            upstream = await self.upstream.proxied.post(
                replica.url, path, body, headers, on_sent=partial(self.router.record, decision, replica)
            )
        except TimeoutError as exc:
            raise _RetryableFailure("timeout", str(exc) or "timed out") from None
        except ConnectFailed as exc:
            raise _RetryableFailure("connect", str(exc)) from None
        except UpstreamError as exc:
            raise _RetryableFailure("read", str(exc)) from None

        try:
            if upstream.status >= 500:
                content = await upstream.read()
                raise _RetryableFailure(
                    f"status_{upstream.status}",
                    content[:200].decode(errors="replace"),
                    Reply(upstream.status, _response_headers(upstream), content),
                )
            if request.stream and upstream.status == 200:
                first = await upstream.read_chunk()
                if not first:
                    raise _RetryableFailure("read", "the stream ended before its first byte")
            else:
                content = await upstream.read()
        except BaseException as exc:
            upstream.close()
            if isinstance(exc, UpstreamError | TimeoutError):
                raise _RetryableFailure("read", str(exc) or type(exc).__name__) from None
            raise

        if not request.stream or upstream.status != 200:
            dispatch.close()
            now = time.monotonic()
            if upstream.status == 200:
                series = self.metrics.series(decision.model, replica.name)
                self._record_first_token(series, dispatch, now - arrived)
                self._record_usage(series, dispatch, _usage_of(content))
                series.e2e.observe(now - arrived)
            return Reply(upstream.status, _response_headers(upstream), content)

        relay = SSERelay(strip_usage=not request.client_wants_usage)

        def close() -> None:
            dispatch.close()
            upstream.close()  # after a complete relay the connection is back in the pool: nothing to do

        stream = self._relay(first, upstream, relay, decision, dispatch, arrived)
        return Reply(200, _response_headers(upstream), stream=stream, close=close)

    async def _relay(
        self,
        first: bytes,
        upstream: Response,
        relay: SSERelay,
        decision: Decision,
        dispatch: Dispatch,
        arrived: float,
    ) -> AsyncIterator[bytes]:
        series = self.metrics.series(decision.model, dispatch.replica.name)
        last_event_at = 0.0
        try:
            data = first
            while data:
                out = relay.feed(data)
                if out:
                    now = time.monotonic()
                    yield out
                    # recorded once the event is on its way to the client, so as not to delay it
                    if last_event_at == 0.0:
                        self._record_first_token(series, dispatch, now - arrived)
                    else:
                        series.itl.observe(now - last_event_at)
                    last_event_at = now
                data = await upstream.read_chunk()
            tail = relay.flush()
            if tail:
                yield tail
            series.e2e.observe(time.monotonic() - arrived)
            self._record_usage(series, dispatch, relay.usage)
        except (UpstreamError, TimeoutError) as exc:
            self.metrics.upstream_errors.labels(dispatch.replica.name, "midstream").inc()
            self.monitor.report_failure(dispatch.replica, "midstream")
            log.warning("replica %s failed mid-stream: %s", dispatch.replica.name, exc)
            yield APIError(502, f"The replica serving this stream failed: {type(exc).__name__}").sse()
        finally:
            dispatch.close()
            upstream.close()  # unless complete: the client left or the replica failed, and the engine aborts

    def _record_first_token(self, series: ReplicaSeries, dispatch: Dispatch, ttft_s: float) -> None:
        series.ttft.observe(ttft_s)
        self.router.observe_first_token(dispatch, ttft_s)

    def _record_usage(self, series: ReplicaSeries, dispatch: Dispatch, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        prompt = usage.get("prompt_tokens")
        if isinstance(prompt, int):
            series.prompt_tokens.inc(prompt)
        cached = cached_tokens(usage)
        if cached is None:
            return
        series.cached_tokens.inc(cached)
        series.predicted_cached_tokens.inc(dispatch.cached_tokens)
        series.prediction_error_tokens.inc(abs(dispatch.cached_tokens - cached))


def _usage_of(content: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


def _response_headers(upstream: Response) -> dict[str, str]:
    return {name: upstream.headers[name] for name in _FORWARDED_RESPONSE_HEADERS if name in upstream.headers}
