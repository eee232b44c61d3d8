"""A small local HTTP server that stands in for the Kubernetes API server in tests.

There is no cluster on the test machines, so discovery is tested against this server with the real
`kubernetes` client, pointed at it by a kubeconfig (`write_kubeconfig`). It speaks the list/watch wire
protocol for EndpointSlices (`/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`) and Pods
(`/api/v1/namespaces/{ns}/pods`):

- a list answers `{"kind": "...List", "metadata": {"resourceVersion": ...}, "items": [...]}`;
- `?watch=1&resourceVersion=N` answers a chunked stream of `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}` lines: every change after N, then changes as they happen, until `timeoutSeconds`;
- a watch from a resourceVersion older than the last compaction gets `410 Gone`, as an ERROR event with
  code 410 (what a real API server sends) or, with `gone_as_status`, as an HTTP 410 answer;
- label selectors of the `key=value,key2=value2` form; bearer-token authentication.

Tests change objects with `apply`/`delete`, cut open watches with `drop_watches` (cleanly, as at a
watch timeout, or abruptly, as a broken connection), forget history with `compact`, and hold new watches
back with `hold_watches` to change things while no watch is open.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

RESOURCES = {
    "endpointslices": ("/apis/discovery.k8s.io/v1/namespaces/", "discovery.k8s.io/v1", "EndpointSlice"),
    "pods": ("/api/v1/namespaces/", "v1", "Pod"),
}
TOKEN = "kvgate-test-token"


@dataclass
class _Event:
    resource_version: int
    resource: str
    kind: str
    obj: dict[str, Any]


@dataclass
class _Watch:
    generation: int
    abrupt: bool = False


@dataclass
class RequestRecord:
    resource: str
    namespace: str
    watch: bool
    query: dict[str, str]
    status: int = 200


@dataclass
class LocalKubeAPIServer:
    """Stands in for the Kubernetes API server: a thread-per-request HTTP server on 127.0.0.1."""

    gone_as_status: bool = False
    """Answer a too-old watch with HTTP 410 instead of a 200 stream carrying an ERROR event."""
    requests: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._history: list[_Event] = []
        self._resource_version = 100
        self._compacted_at = 0
        self._drop_generation = 0
        self._streaming: dict[str, int] = {}
        self._drop_abrupt = False
        self._stopping = False
        self._watches_open = threading.Event()
        self._watches_open.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------

    def start(self, port: int = 0) -> LocalKubeAPIServer:
        """Serve on `port` (0: any free one; a stopped server's port to stand in for its restart)."""
        api = self
        self._stopping = False

        class Handler(_Handler):
            server_api = api

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._watches_open.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalKubeAPIServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- what tests do to the cluster -------------------------------------

    def apply(self, resource: str, obj: dict[str, Any]) -> int:
        """Create or replace an object; returns its new resourceVersion."""
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        namespace = metadata.setdefault("namespace", "default")
        key = (resource, namespace, metadata["name"])
        _, api_version, kind = RESOURCES[resource]
        obj["apiVersion"], obj["kind"] = api_version, kind
        with self._lock:
            existing = self._objects.get(key)
            metadata["uid"] = existing["metadata"]["uid"] if existing else str(uuid.uuid4())
            self._resource_version += 1
            metadata["resourceVersion"] = str(self._resource_version)
            self._objects[key] = obj
            event = "MODIFIED" if existing else "ADDED"
            self._history.append(_Event(self._resource_version, resource, event, copy.deepcopy(obj)))
            self._lock.notify_all()
            return self._resource_version

    def delete(self, resource: str, name: str, namespace: str = "default") -> None:
        with self._lock:
            obj = self._objects.pop((resource, namespace, name))
            self._resource_version += 1
            obj["metadata"]["resourceVersion"] = str(self._resource_version)
            self._history.append(_Event(self._resource_version, resource, "DELETED", obj))
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget the history: a watch from any resourceVersion seen so far now gets 410 Gone."""
        with self._lock:
            self._resource_version += 1
            self._compacted_at = self._resource_version
            self._history.clear()

    def drop_watches(self, abrupt: bool = False) -> None:
        """End every open watch: cleanly (the closing chunk, as at a timeout) or by cutting the socket."""
        with self._lock:
            self._drop_generation += 1
            self._drop_abrupt = abrupt
            self._lock.notify_all()

    def hold_watches(self) -> None:
        """New watch requests wait (up to 10 s) until `release_watches`; lists are answered."""
        self._watches_open.clear()

    def release_watches(self) -> None:
        self._watches_open.set()

    def watch_count(self, resource: str) -> int:
        return sum(1 for r in list(self.requests) if r.resource == resource and r.watch)

    def streaming_watches(self, resource: str) -> int:
        """Watches that are streaming now: `drop_watches` reaches these, not ones still connecting."""
        with self._lock:
            return self._streaming.get(resource, 0)

    def list_count(self, resource: str) -> int:
        return sum(1 for r in list(self.requests) if r.resource == resource and not r.watch)

    # --- what the handler asks -------------------------------------------

    def _list(self, resource: str, namespace: str, selector: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (kind, ns, _), obj in sorted(self._objects.items())
                if kind == resource and ns == namespace and _matches(obj, selector)
            ]
            version = str(self._resource_version)
        _, api_version, kind = RESOURCES[resource]
        return {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def _expired(self, since: int) -> bool:
        with self._lock:
            return since < self._compacted_at


def _matches(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def _parse_selector(text: str) -> dict[str, str]:
    selector = {}
    for term in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = term.partition("=")
        if not sep or "!" in key:
            raise ValueError(f"this stand-in API server understands only key=value selectors: {term!r}")
        selector[key.strip()] = value.lstrip("=").strip()
    return selector


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_api: LocalKubeAPIServer

    def log_message(self, *_: object) -> None:
        pass

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        api = self.server_api
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        route = self._route(parts.path)
        if route is None:
            self._send_json(404, _status(404, "NotFound", f"the server could not find {parts.path}"))
            return
        resource, namespace = route
        watching = query.get("watch") in ("1", "true", "True")
        record = RequestRecord(resource, namespace, watching, query)
        api.requests.append(record)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            record.status = 401
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        try:
            selector = _parse_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            record.status = 400
            self._send_json(400, _status(400, "BadRequest", str(exc)))
            return
        if not watching:
            self._send_json(200, api._list(resource, namespace, selector))
            return
        api._watches_open.wait(timeout=10)
        since = int(query.get("resourceVersion") or 0)
        if since and api._expired(since) and api.gone_as_status:
            record.status = 410
            self._send_json(410, _status(410, "Expired", f"too old resource version: {since}"))
            return
        self._stream(resource, namespace, selector, since, float(query.get("timeoutSeconds") or 1800))

    def _route(self, path: str) -> tuple[str, str] | None:
        for resource, (prefix, _, _) in RESOURCES.items():
            if path.startswith(prefix) and path.endswith("/" + resource):
                namespace = path[len(prefix) : -len(resource) - 1]
                if namespace and "/" not in namespace:
                    return resource, namespace
        return None

    def _chunk(self, line: dict[str, Any]) -> None:
        data = json.dumps(line).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(
        self, resource: str, namespace: str, selector: dict[str, str], since: int, timeout_s: float
    ) -> None:
        api = self.server_api
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if since and api._expired(since):
            self._chunk(
                {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since}")}
            )
            self._end()
            return
        if not since:
            for item in api._list(resource, namespace, selector)["items"]:
                self._chunk({"type": "ADDED", "object": item})
                since = max(since, int(item["metadata"]["resourceVersion"]))
        deadline = time.monotonic() + timeout_s
        with api._lock:
            generation = api._drop_generation
            api._streaming[resource] = api._streaming.get(resource, 0) + 1
        try:
            while True:
                with api._lock:
                    pending = [
                        event
                        for event in api._history
                        if event.resource_version > since
                        and event.resource == resource
                        and event.obj["metadata"].get("namespace") == namespace
                    ]
                    if not pending:
                        api._lock.wait(timeout=0.05)
                    dropped = api._drop_generation != generation
                    abrupt = api._drop_abrupt
                    stopping = api._stopping
                for event in pending:
                    since = event.resource_version
                    if _matches(event.obj, selector):
                        self._chunk({"type": event.kind, "object": event.obj})
                if dropped and abrupt:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)
                    return
                if dropped or stopping or time.monotonic() >= deadline:
                    kind = RESOURCES[resource][2]
                    bookmark = {"kind": kind, "metadata": {"resourceVersion": str(since)}}
                    self._chunk({"type": "BOOKMARK", "object": bookmark})
                    self._end()
                    return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with api._lock:
                api._streaming[resource] -= 1

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


def write_kubeconfig(path: Path, server_url: str, namespace: str = "default") -> Path:
    """A kubeconfig whose one context points the real client at the stand-in server."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server_url}}],
        "users": [{"name": "kvgate", "user": {"token": TOKEN}}],
        "contexts": [
            {"name": "local", "context": {"cluster": "local", "user": "kvgate", "namespace": namespace}}
        ],
        "current-context": "local",
    }
    path.write_text(json.dumps(config))
    return path
