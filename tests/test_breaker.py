"""The circuit breaker around Redis: instant fail-mode decisions while Redis is known down."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from callscreen.config import Config
from callscreen.engine import Engine
from callscreen.rules import RuleSet
from callscreen.store import CircuitBreaker, Store


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_lets_one_trial_through() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown_s=5, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert not b.is_open
    assert b.allow()
    b.failure()
    assert b.is_open and not b.allow()
    clock.now += 4.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow()  # the trial
    assert not b.allow()  # only one at a time
    b.failure()  # trial failed: open for another cool-down
    assert not b.allow()
    clock.now += 5.1
    assert b.allow()
    b.success()
    assert not b.is_open and b.allow() and b.failures == 0


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=5, clock=Clock())
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert not b.is_open


def test_dead_redis_decides_instantly_once_open(cfg: Config, shipped_rules: RuleSet,
                                                own_redis: Any) -> None:
    cfg = dataclasses.replace(cfg, redis=dataclasses.replace(
        cfg.redis, url=own_redis.url, breaker_failures=2, breaker_cooldown_ms=400))
    engine = Engine(cfg, shipped_rules, Store.from_config(cfg))
    line = cfg.line_for("+33199000001")
    assert not engine.decide(engine.make_call("0353010001", line)).verdict.degraded
    own_redis.pause()  # SIGSTOP: each attempt costs the socket timeout
    try:
        for _ in range(2):
            started = time.monotonic()
            d = engine.decide(engine.make_call("0353010001", line))
            assert d.verdict.degraded and "circuit" not in (d.store_error or "")
            assert time.monotonic() - started >= 0.15  # it did wait for the 200 ms timeout
        started = time.monotonic()
        d = engine.decide(engine.make_call("0353010001", line))
        elapsed = time.monotonic() - started
        assert d.verdict.degraded and "circuit open" in (d.store_error or "")
        assert elapsed < 0.2  # below the socket timeout: nothing was waited for
    finally:
        own_redis.resume()
    time.sleep(0.45)  # cool-down over: the next call is the trial, Redis is back
    assert not engine.decide(engine.make_call("0353010001", line)).verdict.degraded
    assert not engine.store.breaker.is_open  # type: ignore[union-attr]
