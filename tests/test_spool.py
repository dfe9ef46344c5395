"""The write spool: what Redis could not take is kept on disk (fsync'd) and applied exactly once
when Redis is back, on a real redis-server that is stopped and started again."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from support import RedisServer, lines_config, start_redis

from callscreen.config import Config
from callscreen.engine import Engine
from callscreen.rules import RuleSet
from callscreen.spool import Spool
from callscreen.store import Store, StoreUnavailable

LINE = "+33199000001"
CALLER = "+33353010044"
LINES_YAML = """
region: FR
lines:
  - {number: "01 99 00 00 01", name: home, timezone: Europe/Paris}
"""


def spooled_config(server: RedisServer, spool_dir: Path) -> Config:
    cfg = lines_config(server.url, LINES_YAML)
    return replace(cfg, spool_dir=str(spool_dir),
                   redis=replace(cfg.redis, breaker_cooldown_ms=50))


def restart(server: RedisServer) -> RedisServer:
    return start_redis(server.workdir, server.port)


def test_writes_while_redis_is_down_are_applied_once_when_it_is_back(
        own_redis: RedisServer, shipped_rules: RuleSet, tmp_path: Path) -> None:
    cfg = spooled_config(own_redis, tmp_path / "spool")
    engine = Engine(cfg, shipped_rules, Store.from_config(cfg))
    store = engine.store
    assert store is not None and store.spool is not None
    own_redis.stop()

    decision = engine.decide(engine.make_call(CALLER, cfg.lines[0]))
    assert decision.verdict.degraded
    assert engine.record(decision) is False  # not in Redis: spooled
    assert store.durable("challenge_outcome", e164=CALLER, line=LINE, outcome="pass",
                         now=time.time(), trust_days=30) is None
    assert store.durable("add_contact", line=LINE, e164="+33353010045", now=time.time(),
                         ttl_s=86400, source="outbound") is None
    assert store.spool.pending() == 3
    lines = [json.loads(raw) for raw in store.spool.path.read_text().splitlines()]
    assert [entry["op"] for entry in lines] == ["record_call", "challenge_outcome", "add_contact"]

    assert store.replay_spool()[2] == 3  # Redis still down: everything stays
    server = restart(own_redis)
    try:
        time.sleep(0.06)  # the breaker's cool-down
        assert store.replay_spool() == (3, 0, 0)
        assert store.spool.pending() == 0
        facts = store.facts(CALLER, LINE, time.time())
        assert facts.record.calls == 1 and facts.record.passes == 1 and facts.trusted
        assert store.facts("+33353010045", LINE, time.time()).contact
        assert store.replay_spool() == (0, 0, 0)  # nothing left, nothing applied twice
        assert store.facts(CALLER, LINE, time.time()).record.calls == 1
    finally:
        server.stop()


def test_a_replay_interrupted_before_the_file_was_rewritten_applies_nothing_twice(
        own_redis: RedisServer, tmp_path: Path) -> None:
    cfg = spooled_config(own_redis, tmp_path / "spool")
    store = Store.from_config(cfg)
    assert store.spool is not None
    own_redis.stop()
    for _ in range(3):
        store.durable("record_call", e164=CALLER, line=LINE, now=time.time(), action="allow",
                      reason="default")
    copy = tmp_path / "copy.jsonl"
    shutil.copy(store.spool.path, copy)
    server = restart(own_redis)
    try:
        time.sleep(0.06)
        assert store.replay_spool() == (3, 0, 0)
        shutil.copy(copy, store.spool.path)  # as if the process died before truncating
        assert store.replay_spool() == (0, 3, 0)
        assert store.facts(CALLER, LINE, time.time()).record.calls == 3
    finally:
        server.stop()


def test_a_broken_line_is_dropped_and_the_rest_applied(own_redis: RedisServer,
                                                       tmp_path: Path) -> None:
    cfg = spooled_config(own_redis, tmp_path / "spool")
    store = Store.from_config(cfg)
    assert store.spool is not None
    store.spool.add("add_contact", {"line": LINE, "e164": CALLER, "now": time.time(),
                                    "ttl_s": 3600, "source": "outbound"})
    with store.spool.path.open("a") as fh:
        fh.write('{"id": "half a line')  # a crash in the middle of a write
    assert store.replay_spool() == (1, 0, 0)
    assert store.spool.pending() == 0
    assert store.facts(CALLER, LINE, time.time()).contact


def test_appends_during_a_replay_are_kept(own_redis: RedisServer, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    started = threading.Event()

    def slow_apply(write_id: str, op: str, args: dict[str, object]) -> bool:
        started.set()
        time.sleep(0.01)
        return True

    for i in range(50):
        spool.add("add_contact", {"i": i})
    replayer = threading.Thread(target=spool.replay, args=(slow_apply,))
    replayer.start()
    assert started.wait(5)
    for i in range(50, 60):
        spool.add("add_contact", {"i": i})  # waits for the replay's lock, then appends
    replayer.join(10)
    left = [json.loads(raw)["args"]["i"] for raw in spool.path.read_text().splitlines()]
    assert left == list(range(50, 60))


def test_without_a_spool_a_failed_write_still_raises(own_redis: RedisServer) -> None:
    cfg = lines_config(own_redis.url, LINES_YAML)
    store = Store.from_config(cfg)
    assert store.spool is None
    own_redis.stop()
    with pytest.raises(StoreUnavailable):
        store.durable("record_call", e164=CALLER, line=LINE, now=time.time(), action="allow",
                      reason="default")


def test_only_the_spooled_writes_can_be_replayed(own_redis: RedisServer, tmp_path: Path) -> None:
    store = Store.from_config(spooled_config(own_redis, tmp_path / "spool"))
    with pytest.raises(ValueError):
        store.apply_once("0" * 32, "list_add", {})
    with pytest.raises(ValueError):
        store.apply_once("not-hex", "add_contact", {})


def test_cli_spool_status_and_replay(own_redis: RedisServer, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from callscreen.cli import main

    spool_dir = tmp_path / "spool"
    config = tmp_path / "callscreen.yaml"
    config.write_text(f"redis: {{url: '{own_redis.url}'}}\nregion: FR\nspool_dir: spool\n"
                      "lines: ['01 99 00 00 01']\n")
    Spool(spool_dir).add("add_contact", {"line": LINE, "e164": CALLER, "now": time.time(),
                                         "ttl_s": 3600, "source": "outbound"})
    runner = CliRunner()
    status = runner.invoke(main, ["--config", str(config), "spool", "status"])
    assert status.exit_code == 0 and status.output.startswith("1 write(s) waiting in ")
    replayed = runner.invoke(main, ["--config", str(config), "spool", "replay"])
    assert replayed.exit_code == 0, replayed.output
    assert replayed.output.strip() == "1 applied, 0 already applied before, 0 left"
    assert own_redis.client().hexists(f"cs:l:{LINE}:contacts", CALLER)


def test_a_write_redis_refuses_is_set_aside_and_the_rest_applied(own_redis: RedisServer,
                                                                 tmp_path: Path) -> None:
    """A line from another version (unknown op) and a write Redis refuses (the record key holds
    a string: WRONGTYPE) go to writes.rejected.jsonl; the replay goes on, the breaker stays
    closed, and no marker claims the refused write."""
    store = Store.from_config(spooled_config(own_redis, tmp_path / "spool"))
    assert store.spool is not None
    rdb = own_redis.client()
    store.spool.add("forget_everything", {})
    store.spool.add("record_call", {"e164": "+33353010046", "line": LINE, "now": time.time(),
                                    "action": "allow", "reason": "default"})
    store.spool.add("add_contact", {"line": LINE, "e164": CALLER, "now": time.time(),
                                    "ttl_s": 3600, "source": "outbound"})
    rdb.set("cs:n:+33353010046", "not a hash")
    assert store.replay_spool() == (1, 0, 0)
    assert not store.breaker.is_open
    rejected = (tmp_path / "spool" / "writes.rejected.jsonl").read_text().splitlines()
    assert [json.loads(line)["op"] for line in rejected] == ["forget_everything", "record_call"]
    assert store.facts(CALLER, LINE, time.time()).contact
    assert not [k for k in rdb.scan_iter("cs:w:*")
                if json.loads(rejected[1])["id"] in k]  # no marker for the refused write


def test_a_write_redis_refuses_is_not_spooled(own_redis: RedisServer, tmp_path: Path) -> None:
    store = Store.from_config(spooled_config(own_redis, tmp_path / "spool"))
    assert store.spool is not None
    own_redis.client().set("cs:n:+33353010047", "not a hash")
    with pytest.raises(StoreUnavailable):
        store.durable("record_call", e164="+33353010047", line=LINE, now=time.time(),
                      action="allow", reason="default")
    assert store.spool.pending() == 0
