import subprocess

import pytest

from loadtest.redis_process import RedisProcess, redis_server
from tests.redis_servers import REDIS_CLI


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory) -> RedisProcess:
    """One real redis-server for the session; each test that asks for `redis_url` gets it empty."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> str:
    subprocess.run([REDIS_CLI, "-p", str(redis_process.port), "flushall"], check=True, capture_output=True)
    return redis_process.url
