"""Client authentication and tenants.

API keys live in a file (a mounted Kubernetes Secret), one per line, `<tenant> <key>` or just `<key>`
(whose tenant is then named after a digest of the key); `#` starts a comment. The file is re-read
when it changes, so a rotated Secret takes effect without a restart. Keys are compared by their
SHA-256 digests with `hmac.compare_digest`, so neither a key nor its length leaks through timing.

Each key's tenant salts the prefix hashes of its requests, so one tenant's routing never reveals
whether another tenant's prompt is cached; with `inject_cache_salt` the gateway also gives requests
without a `cache_salt` one derived from the tenant, which isolates the tenants in the engines' caches
too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

from gateway.errors import APIError

log = logging.getLogger("kvgate.auth")

RELOAD_CHECK_S = 5.0


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def tenant_salt(tenant: str) -> str:
    """A cache_salt for a tenant: valid for vLLM (no '@', '/', '\\'), stable, not the tenant's name."""
    return "kvgate-" + hashlib.sha256(tenant.encode()).hexdigest()[:32]


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class APIKeys:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._by_digest: dict[bytes, str] = {}
        self._mtime = -1.0
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise ValueError(f"cannot read the API keys file {self.path}: {exc.strerror}") from None
        keys: dict[bytes, str] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) > 2:
                raise ValueError(f"{self.path}:{number}: expected '<tenant> <key>' or '<key>'")
            key = parts[-1]
            tenant = parts[0] if len(parts) == 2 else "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
            keys[_digest(key)] = tenant
        self._by_digest = keys
        self._mtime = stat.st_mtime
        log.info("loaded %d API keys from %s", len(keys), self.path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            if os.stat(self.path).st_mtime != self._mtime:
                self._load()
        except (OSError, ValueError) as exc:  # keep the keys we have rather than lock everyone out
            log.error("API keys file not reloaded: %s", exc)

    def tenant_of(self, token: str | None) -> str:
        """The tenant of a presented key; APIError 401 when it is missing or unknown."""
        self._maybe_reload()
        if token is None:
            raise APIError(
                401, "Missing API key: send 'Authorization: Bearer <key>'.", type_="AuthenticationError"
            )
        digest = _digest(token)
        for known, tenant in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise APIError(401, "Invalid API key.", type_="AuthenticationError")


def read_secret(value: str | None, path: str | None) -> str | None:
    """A secret given inline or, better, as a file (a mounted Secret)."""
    if path:
        return Path(path).read_text().strip() or None
    return value
