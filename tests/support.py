"""Test helpers shared by the test modules: a real redis-server owned by the tests, configs
pointed at it. (Fixtures live in conftest.py; import helpers from here, not from conftest, which
tests/asterisk/conftest.py shadows.)"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from callscreen import config as config_mod
from callscreen.config import Config, RedisConfig

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "rules"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process owned by the tests."""

    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_redis(workdir: Path, port: int | None = None, extra: tuple[str, ...] = ()
                ) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (./install.sh --dev installs it)")
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log"), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_timeout=0.2).ping()
            return RedisServer(port, proc, workdir)
        except redis.ConnectionError:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
    proc.kill()
    pytest.fail(f"redis-server did not start on port {port}: see {workdir / 'redis.log'}")


def make_config(redis_url: str, **overrides: object) -> Config:
    """The shipped configuration, pointed at a test Redis and the repo's rules."""
    base = config_mod.load(REPO / "config" / "callscreen.yaml")
    cfg = replace(base, redis=replace(base.redis, url=redis_url), rules_dir=RULES_DIR)
    return replace(cfg, **overrides) if overrides else cfg


def lines_config(redis_url: str, yaml_text: str) -> Config:
    """A config from a YAML snippet, pointed at a test Redis and the repo's rules."""
    cfg = config_mod.load_text(yaml_text, "test.yaml")
    return replace(cfg, redis=RedisConfig(url=redis_url), rules_dir=RULES_DIR)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """A bounded poll, for what really takes time (Redis TTLs, a server thread, a channel)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
