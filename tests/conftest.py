"""Shared fixtures: a private, real redis-server per test session, started on a free port."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import RULES_DIR, RedisServer, lines_config, start_redis

from callscreen import rules
from callscreen.config import Config
from callscreen.engine import Engine
from callscreen.store import Store


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    workdir = Path(tempfile.mkdtemp(prefix="callscreen-redis-"))
    server = start_redis(workdir)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that pause, kill or flood it."""
    server = start_redis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def cfg(redis_server: RedisServer, rdb: redis.Redis) -> Config:
    return lines_config(
        redis_server.url,
        """
        region: FR
        lines:
          - {number: "01 99 00 00 01", name: home, timezone: Europe/Paris}
          - {number: "+12025550100", name: us-office, timezone: America/New_York}
        """,
    )


@pytest.fixture
def store(cfg: Config) -> Store:
    return Store.from_config(cfg)


@pytest.fixture(scope="session")
def shipped_rules() -> rules.RuleSet:
    return rules.load_dir(RULES_DIR)


@pytest.fixture
def engine(cfg: Config, store: Store, shipped_rules: rules.RuleSet) -> Engine:
    return Engine(cfg, shipped_rules, store)
