import os
import time

import pytest

from gateway import auth
from gateway.auth import APIKeys, bearer_token, read_secret, tenant_salt
from gateway.errors import APIError
from gateway.request import _validate_cache_salt


def write_keys(path, text: str) -> None:
    path.write_text(text)
    stamp = time.time() + 10  # a distinct mtime, whatever the file system's resolution
    os.utime(path, (stamp, stamp))


def test_keys_map_to_tenants_and_unknown_keys_are_refused(tmp_path):
    path = tmp_path / "keys"
    write_keys(
        path,
        "# tenant key\nacme sk-acme-1\nacme sk-acme-2\n\nglobex sk-globex  # trailing comment\nsk-anon\n",
    )
    keys = APIKeys(str(path))
    assert keys.tenant_of("sk-acme-1") == keys.tenant_of("sk-acme-2") == "acme"
    assert keys.tenant_of("sk-globex") == "globex"
    assert keys.tenant_of("sk-anon").startswith("key-")
    for bad in (None, "sk-acme", "sk-acme-1 ", ""):
        with pytest.raises(APIError) as caught:
            keys.tenant_of(bad or None)
        assert caught.value.status == 401


def test_a_rotated_key_file_is_picked_up(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    write_keys(path, "acme old-key\n")
    keys = APIKeys(str(path))
    monkeypatch.setattr(auth, "RELOAD_CHECK_S", 0.0)
    write_keys(path, "acme new-key\n")
    assert keys.tenant_of("new-key") == "acme"
    with pytest.raises(APIError):
        keys.tenant_of("old-key")


def test_a_broken_rotation_keeps_the_old_keys(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    write_keys(path, "acme good-key\n")
    keys = APIKeys(str(path))
    monkeypatch.setattr(auth, "RELOAD_CHECK_S", 0.0)
    write_keys(path, "too many fields here\n")
    assert keys.tenant_of("good-key") == "acme"


def test_malformed_or_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        APIKeys(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_text("a b c\n")
    with pytest.raises(ValueError, match="bad:1"):
        APIKeys(str(bad))


def test_bearer_tokens_and_secrets_from_files(tmp_path):
    assert bearer_token("Bearer abc") == bearer_token("bearer  abc ") == "abc"
    assert (
        bearer_token("Basic abc") is None and bearer_token(None) is None and bearer_token("Bearer ") is None
    )
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert read_secret("inline", str(secret)) == "from-file"
    assert read_secret("inline", None) == "inline"


def test_tenant_salts_are_valid_cache_salts_and_differ():
    salts = {tenant_salt(t) for t in ("acme", "globex", "a/b@c")}
    assert len(salts) == 3
    for salt in salts:
        assert _validate_cache_salt(salt) == salt
        assert "acme" not in salt
