"""`kvgate serve`: run the gateway."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from gateway.config import ConfigError, load_config
from gateway.policies import POLICY_NAMES


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
    if not config.replicas:
        print(
            "kvgate serve: no replicas configured (--replica URL, --replicas, or 'replicas' in the config)",
            file=sys.stderr,
        )
        return 2

    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=config.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0
