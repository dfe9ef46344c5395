"""Redis failures on the call path, each on a redis-server of the test's own (own_redis).

A hung, paused or dead Redis must cost a call at most about the configured socket timeout
(200 ms; budget asserted: 1.5 s), give a degraded verdict decided by the fail mode, never raise,
and the pool must recover when Redis comes back, without reading a stale reply.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from callscreen import config as config_mod
from callscreen.config import Config, RedisConfig
from callscreen.engine import Decision, Engine
from callscreen.rules import RuleSet
from callscreen.store import Store

BUDGET_S = 1.5  # socket timeout is 200 ms: generous margin for a loaded machine
AT = dt.datetime(2026, 6, 2, 11, 0, tzinfo=ZoneInfo("Europe/Paris"))
REPORTED = "+33353010203"


def make_engine(url: str, rules: RuleSet, fail_mode: str = "open") -> Engine:
    cfg = config_mod.load_text('region: FR\nlines: ["01 99 00 00 01"]\n', "test.yaml")
    cfg = replace(cfg, redis=RedisConfig(url=url), fail_mode=fail_mode)
    return Engine(cfg, rules, Store.from_config(cfg))


@pytest.fixture
def server(own_redis: Any) -> Iterator[Any]:
    yield own_redis
    if own_redis.proc.poll() is None:
        own_redis.resume()  # never leave a stopped process behind a failed assertion


@pytest.fixture
def engine(server: Any, shipped_rules: RuleSet) -> Engine:
    eng = make_engine(server.url, shipped_rules)
    assert eng.store is not None
    eng.store.report(REPORTED, "admin", AT.timestamp())  # score 40: threshold:challenge
    return eng


def timed_decide(engine: Engine, raw: str = "0353010203") -> tuple[Decision, float]:
    call = engine.make_call(raw, engine.cfg.lines[0], AT)
    start = time.monotonic()
    decision = engine.decide(call)
    return decision, time.monotonic() - start


def assert_degraded(decision: Decision, elapsed: float, action: str = "allow") -> None:
    v = decision.verdict
    assert elapsed < BUDGET_S, f"a call waited {elapsed:.2f}s for Redis"
    assert v.degraded and decision.facts is None and decision.store_error
    assert (v.action, v.rule, v.reason) == (action, "fail-mode", "degraded")
    details = " ".join(step.detail for step in v.trace)
    assert "store unavailable" in details


def assert_healthy(engine: Engine) -> None:
    """Not degraded, and facts belong to the number asked (no stale reply read)."""
    decision, _ = timed_decide(engine, "0353010299")
    assert not decision.verdict.degraded and decision.facts is not None
    assert decision.facts.record.reports == 0 and decision.verdict.rule == "default"
    decision, _ = timed_decide(engine, REPORTED)
    assert not decision.verdict.degraded and decision.facts is not None
    assert decision.facts.record.reports == 1
    assert decision.verdict.rule == "threshold:challenge"


def test_healthy_baseline(engine: Engine) -> None:
    assert_healthy(engine)


def test_sigstop_gives_degraded_verdict_within_budget(engine: Engine, server: Any) -> None:
    assert_healthy(engine)  # a pooled connection exists before the hang
    server.pause()
    try:
        decision, elapsed = timed_decide(engine, REPORTED)
        assert_degraded(decision, elapsed)
        assert "Timeout" in (decision.store_error or "")
        decision, elapsed = timed_decide(engine)  # a second call: a new connection, same budget
        assert_degraded(decision, elapsed)
    finally:
        server.resume()
    assert_healthy(engine)  # (d) the pool recovers, no stale replies


def test_sigstop_before_first_connection(server: Any, shipped_rules: RuleSet) -> None:
    eng = make_engine(server.url, shipped_rules)
    server.pause()
    try:
        decision, elapsed = timed_decide(eng)
        assert_degraded(decision, elapsed)
    finally:
        server.resume()
    decision, _ = timed_decide(eng)
    assert not decision.verdict.degraded


def test_client_pause_gives_degraded_verdict_within_budget(engine: Engine, server: Any) -> None:
    admin = server.client()
    assert_healthy(engine)
    admin.execute_command("CLIENT", "PAUSE", "5000", "ALL")
    try:
        decision, elapsed = timed_decide(engine, REPORTED)
        assert_degraded(decision, elapsed)
    finally:
        # Redis 7.0 holds even CLIENT UNPAUSE until the pause ends: this returns after ~5 s.
        admin.execute_command("CLIENT", "UNPAUSE")
    assert_healthy(engine)


def test_dead_server_gives_degraded_verdict_quickly(engine: Engine, server: Any) -> None:
    assert_healthy(engine)
    server.stop()
    for raw in (REPORTED, "0353010299"):
        decision, elapsed = timed_decide(engine, raw)
        assert_degraded(decision, elapsed)


def test_closed_port_gives_degraded_verdict_quickly(shipped_rules: RuleSet) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = make_engine(f"redis://127.0.0.1:{port}/0", shipped_rules)
    decision, elapsed = timed_decide(eng)
    assert_degraded(decision, elapsed)


@pytest.mark.parametrize(("fail_mode", "action"),
                         [("open", "allow"), ("challenge", "challenge"), ("closed", "voicemail")])
def test_fail_mode_decides_when_redis_is_gone(server: Any, shipped_rules: RuleSet,
                                              fail_mode: str, action: str) -> None:
    eng = make_engine(server.url, shipped_rules, fail_mode)
    server.stop()
    decision, elapsed = timed_decide(eng)
    assert_degraded(decision, elapsed, action)


def test_pure_rules_still_decide_when_redis_is_gone(server: Any, shipped_rules: RuleSet) -> None:
    eng = make_engine(server.url, shipped_rules)
    server.pause()
    try:
        decision, elapsed = timed_decide(eng, "0162123456")  # ARCEP range, Tuesday 11:00
    finally:
        server.resume()
    assert elapsed < BUDGET_S
    assert (decision.verdict.action, decision.verdict.rule) == ("voicemail",
                                                                "arcep-telemarketing")
    assert decision.verdict.degraded


def test_server_restarted_on_same_port_recovers(engine: Engine, server: Any,
                                                tmp_path: Any) -> None:
    assert_healthy(engine)
    server.stop()
    decision, elapsed = timed_decide(engine)
    assert_degraded(decision, elapsed)
    again = subprocess.Popen(
        ["redis-server", "--port", str(server.port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=server.port, socket_timeout=0.2)
        for _ in range(250):  # bounded wait for the restart (at most ~5 s)
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        decision, _ = timed_decide(engine)
        assert not decision.verdict.degraded  # empty new server: nothing known, but answering
        assert decision.verdict.rule == "default"
    finally:
        again.terminate()
        again.wait(5)


def test_record_on_dead_redis_returns_false(engine: Engine, server: Any) -> None:
    decision, _ = timed_decide(engine)
    server.stop()
    start = time.monotonic()
    assert engine.record(decision) is False
    assert time.monotonic() - start < BUDGET_S


def test_record_on_hung_redis_returns_false_within_budget(engine: Engine, server: Any) -> None:
    decision, _ = timed_decide(engine)
    server.pause()
    try:
        start = time.monotonic()
        assert engine.record(decision) is False
        assert time.monotonic() - start < BUDGET_S
    finally:
        server.resume()
    assert engine.record(decision) is True


def test_record_without_store(shipped_rules: RuleSet) -> None:
    cfg: Config = config_mod.load_text("region: FR\n", "t.yaml")
    eng = Engine(cfg, shipped_rules, None)
    decision = eng.decide(eng.make_call("0353010203", None, AT))
    assert decision.verdict.degraded and decision.store_error == "no store configured"
    assert eng.record(decision) is False


def test_redis_client_has_call_path_timeouts(engine: Engine) -> None:
    """The pooled client uses the configured 200 ms timeouts and no retries."""
    assert engine.store is not None
    kwargs = engine.store.r.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == pytest.approx(0.2)
    assert kwargs["socket_connect_timeout"] == pytest.approx(0.2)
    retry = kwargs.get("retry")
    assert retry is None or retry._retries == 0  # noqa: SLF001
    assert isinstance(engine.store.r, redis.Redis)
