"""`kvgate serve`: run the gateway."""

from __future__ import annotations

import argparse
import logging
import sys
from types import FrameType
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.config import ConfigError, load_config
from gateway.policies import POLICY_NAMES
from gateway.service import GatewayService


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file (see docs/config.md)")
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--policy", choices=POLICY_NAMES, help="routing policy (default affinity)")
    parser.add_argument("--profile", help="latency profile of the replicas (default h100-llama3-8b)")
    parser.add_argument(
        "--replica", action="append", default=[], metavar="URL", help="a replica's base URL (repeatable)"
    )
    parser.add_argument("--replicas", metavar="URLS", help="comma-separated replica base URLs")
    parser.add_argument(
        "--index", metavar="BACKEND", help="'embedded' (default), 'redis', or a redis:// / rediss:// URL"
    )
    parser.add_argument("--admin-token", help="token for /debug endpoints (better: KVGATE_ADMIN_TOKEN)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, dotted (repeatable)"
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    overrides: dict[str, Any] = {}
    for key in ("host", "port", "policy", "profile", "admin_token", "log_level"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    urls = list(args.replica)
    if args.replicas:
        urls += [url for url in args.replicas.split(",") if url.strip()]
    if urls:
        overrides["replicas"] = urls
    if args.index:
        if args.index.startswith(("redis://", "rediss://", "unix://")):
            overrides["index.backend"] = "redis"
            overrides["index.redis.url"] = args.index
        else:
            overrides["index.backend"] = args.index
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides_from(args))
    except ConfigError as exc:
        print(f"kvgate serve: {exc}", file=sys.stderr)
        return 2
    if not config.replicas and config.discovery.kind == "static":
        print(
            "kvgate serve: no replicas configured (--replica URL, --replicas, 'replicas' in the config,"
            " or discovery.kind kubernetes or dns)",
            file=sys.stderr,
        )
        return 2

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        service = GatewayService(config)
    except ValueError as exc:
        print(f"kvgate serve: {exc}", file=sys.stderr)
        return 2
    uvicorn_config = uvicorn.Config(
        create_app(config, service),
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        log_level=config.log_level,
        timeout_graceful_shutdown=max(1, int(config.shutdown_grace_s)),
    )
    DrainingServer(uvicorn_config, service).run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but a first SIGTERM or SIGINT drains: not ready, new requests refused with 503,
    in-flight streams finish (up to `shutdown_grace_s`), then it exits. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, service: GatewayService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.service.shutting_down:
            super().handle_exit(sig, frame)
        else:
            self.service.begin_shutdown()

    async def on_tick(self, counter: int) -> bool:
        if self.service.drained():
            self.should_exit = True
        return await super().on_tick(counter)
