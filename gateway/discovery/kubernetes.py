"""Replicas from the Kubernetes API: the EndpointSlices of a Service, or the Pods matching a selector.

List, then watch from the list's resourceVersion, applying each ADDED / MODIFIED / DELETED event to the
listed objects and publishing the endpoints they make whenever those change. A watch that ends cleanly
(its timeout, a restarted API server closing it) is opened again from the last resourceVersion seen;
`410 Gone` (the version was compacted away) lists again; any other failure - a broken stream, a refused
connection, an error status - backs off (0.5 s doubling to 30 s, with jitter) and lists again. Nothing
here ends the gateway: while the API cannot be reached the last published endpoints stand.

The synchronous `kubernetes` client does the HTTP, in worker threads (`asyncio.to_thread`): it is the
client the project already depends on, and it brings kubeconfig and in-cluster (projected, rotating
token) authentication. The watch stream is read line by line here rather than through `watch.Watch`,
to keep the objects as the API sent them, handle ERROR events and resourceVersions explicitly, and hold
the response so that cancelling the watch can shut its socket and free the thread at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from gateway.config import DiscoveryConfig
from gateway.discovery.base import Endpoint, Publish
from gateway.discovery.endpoints_of import endpoints_from_pods, endpoints_from_slices

log = logging.getLogger("kvgate.discovery")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
WATCH_TIMEOUT_S = 300
"""Asked of the API server per watch; it closes the stream then, and the watch is opened again."""
CONNECT_TIMEOUT_S = 5.0
LIST_TIMEOUT_S = 30.0
READ_GRACE_S = 30.0
"""A watch that sends nothing for its timeout plus this is taken as broken."""
QUICK_END_S = 1.0
"""A watch that ends this soon having delivered nothing is backed off from, lest it be a tight loop."""


class WatchExpired(Exception):
    """The resourceVersion watched from is gone (410): list again."""


class WatchFailed(Exception):
    """The API server ended a watch with an ERROR event other than 410."""


class Backoff:
    """Delays between retries: doubling from `initial_s` to `max_s`, each with +-20% jitter."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = min(self._next, self.max_s) * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


def load_api_client(settings: DiscoveryConfig):
    """An API client from `discovery.kubeconfig`, or from the Pod's service account when it is unset."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if settings.kubeconfig:
        config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _lines(response) -> Iterator[bytes]:
    """The newline-separated JSON documents of a watch stream, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


def _interrupt(response) -> None:
    """Shut a streaming response's socket, so the thread blocked reading it returns now."""
    if hasattr(response, "shutdown"):  # urllib3 >= 2.3
        with contextlib.suppress(Exception):
            response.shutdown()
    else:
        sock = getattr(getattr(response, "connection", None), "sock", None)
        with contextlib.suppress(Exception):
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def _describe(error: BaseException) -> str:
    status = getattr(error, "status", None)
    if status in (401, 403):
        return f"{status} {getattr(error, 'reason', '')}: check the gateway's ServiceAccount and RBAC"
    if status is not None:
        return f"{status} {getattr(error, 'reason', '')}".strip()
    return f"{type(error).__name__}: {error}"


class KubernetesDiscovery:
    def __init__(
        self,
        settings: DiscoveryConfig,
        *,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff or Backoff()
        self.resource = "endpointslices" if settings.service else "pods"
        self._objects: dict[str, Mapping[str, Any]] = {}
        self._published: list[Endpoint] | None = None
        self._problems: set[str] = set()
        self._publish: Publish | None = None
        self._list_call: Callable[..., Any] | None = None

    def _selector(self) -> str:
        if self.settings.service:
            return f"{SERVICE_NAME_LABEL}={self.settings.service}"
        return self.settings.label_selector or ""

    def _bind(self, api_client) -> None:
        from kubernetes import client

        if self.resource == "endpointslices":
            self._list_call = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice
        else:
            self._list_call = client.CoreV1Api(api_client).list_namespaced_pod

    async def run(self, publish: Publish) -> None:
        self._publish = publish
        source = f"{self.resource} in {self.settings.namespace} matching {self._selector()!r}"
        api_client = None
        expired_in_a_row = 0
        try:
            while True:
                try:
                    if api_client is None:
                        api_client = await asyncio.to_thread(load_api_client, self.settings)
                        self._bind(api_client)
                    version = await self._list()
                    log.info("discovery: listed %d %s at version %s", len(self._objects), source, version)
                    while True:
                        version = await self._watch(version)
                        expired_in_a_row = 0
                except Exception as error:
                    if isinstance(error, WatchExpired) or getattr(error, "status", None) == 410:
                        expired_in_a_row += 1
                        log.info("discovery: the watch of %s expired (410 Gone); listing again", source)
                        if expired_in_a_row > 1:
                            await asyncio.sleep(self.backoff.next_delay())
                        continue
                    delay = self.backoff.next_delay()
                    log.warning(
                        "discovery: %s failed (%s); listing again in %.1f s", source, _describe(error), delay
                    )
                    await asyncio.sleep(delay)
        finally:
            if api_client is not None:
                with contextlib.suppress(Exception):
                    api_client.close()

    async def _list(self) -> str:
        def fetch() -> dict[str, Any]:
            assert self._list_call is not None
            response = self._list_call(
                self.settings.namespace,
                label_selector=self._selector(),
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT_S, LIST_TIMEOUT_S),
            )
            try:
                return json.loads(response.data)
            finally:
                response.release_conn()

        body = await asyncio.to_thread(fetch)
        self._objects = {item["metadata"]["name"]: item for item in body.get("items") or ()}
        await self._publish_current()
        return str(body.get("metadata", {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """Follow one watch stream from `version`; returns the last version seen when it ends cleanly."""

        def open_stream():
            assert self._list_call is not None
            return self._list_call(
                self.settings.namespace,
                label_selector=self._selector(),
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout_s,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT_S, self.watch_timeout_s + READ_GRACE_S),
            )

        opened = time.monotonic()
        delivered = False
        response = await asyncio.to_thread(open_stream)
        try:
            lines = _lines(response)
            while (line := await asyncio.to_thread(next, lines, None)) is not None:
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired()
                    raise WatchFailed(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    self._objects.pop(name, None)
                else:
                    self._objects[name] = obj
                delivered = True
                self.backoff.reset()
                await self._publish_current()
        finally:
            _interrupt(response)
        if not delivered and time.monotonic() - opened < QUICK_END_S:
            await asyncio.sleep(self.backoff.next_delay())
        return version

    def endpoints(self) -> list[Endpoint]:
        problems: list[str] = []
        if self.resource == "endpointslices":
            endpoints = endpoints_from_slices(self._objects.values(), self.settings, problems)
        else:
            endpoints = endpoints_from_pods(self._objects.values(), self.settings, problems)
        for problem in sorted(set(problems) - self._problems):
            log.warning("discovery: %s", problem)
        self._problems = set(problems)
        return endpoints

    async def _publish_current(self) -> None:
        endpoints = self.endpoints()
        if endpoints == self._published:
            return
        self._published = endpoints
        assert self._publish is not None
        try:
            await self._publish(endpoints)
        except Exception:  # the gateway's handling of one update must not end discovery
            log.exception("discovery: applying %d endpoints failed", len(endpoints))
