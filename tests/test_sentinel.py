"""Redis Sentinel, for real: a master, a replica and three sentinels on loopback ports (the
redis-server binary in sentinel mode). Calls are decided through the master the sentinels name;
the master is killed (SIGKILL) in the middle of a stream of calls: every call is still decided
in bounded time (the few during the failover by fail_mode, marked degraded), then the promoted
replica serves and the reputation written before the failover is still there."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
from support import RedisServer, free_port, make_config, start_redis, wait_for

from callscreen.engine import Engine
from callscreen.rules import RuleSet
from callscreen.store import Store

SERVICE = "cs-test"
CALLER = "+33353010042"
T0 = time.time()


@dataclass
class Cluster:
    master: RedisServer
    replica: RedisServer
    sentinels: list[subprocess.Popen[bytes]]
    sentinel_ports: list[int]

    def master_port(self) -> int:
        for port in self.sentinel_ports:
            try:
                _, found = redis.Redis(port=port, socket_timeout=0.3).sentinel_get_master_addr_by_name(SERVICE)
                return int(found)
            except (redis.RedisError, TypeError):
                continue
        return 0


def start_sentinel(workdir: Path, port: int, master_port: int) -> subprocess.Popen[bytes]:
    conf = workdir / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir}/sentinel-{port}.log\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 500\n"
        f"sentinel failover-timeout {SERVICE} 3000\n"
        f"sentinel parallel-syncs {SERVICE} 1\n")
    return subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    master = start_redis(tmp_path / "m")
    replica = start_redis(tmp_path / "r", extra=("--replicaof", "127.0.0.1", str(master.port)))
    ports = [free_port() for _ in range(3)]
    sentinels = [start_sentinel(tmp_path, port, master.port) for port in ports]
    found = Cluster(master, replica, sentinels, ports)
    try:
        def ready() -> bool:
            try:
                probe = redis.Redis(port=ports[0], socket_timeout=0.3, decode_responses=True)
                info = probe.sentinel_master(SERVICE)
                return int(info["num-other-sentinels"]) == 2 and int(info["num-slaves"]) == 1
            except redis.RedisError:
                return False

        assert wait_for(ready, 20), "sentinels did not see each other and the replica"
        assert wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", 10)
        yield found
    finally:
        for proc in sentinels:
            proc.terminate()
        for proc in sentinels:
            proc.wait(5)
        replica.stop()
        master.stop()


def sentinel_engine(cluster: Cluster, shipped_rules: RuleSet) -> Engine:
    cfg = make_config("redis://127.0.0.1:1/0")  # host and port come from the sentinels
    cfg = replace(cfg, redis=replace(cfg.redis, sentinel_service=SERVICE,
                                     sentinels=tuple(("127.0.0.1", p) for p in cluster.sentinel_ports),
                                     breaker_cooldown_ms=300))
    return Engine(cfg, shipped_rules, Store.from_config(cfg))


def test_calls_go_to_the_master_the_sentinels_name(cluster: Cluster,
                                                   shipped_rules: RuleSet) -> None:
    engine = sentinel_engine(cluster, shipped_rules)
    assert engine.store is not None
    counted, _ = engine.store.vote(CALLER, "+33199000001", T0, rate_limited=False)
    assert counted
    assert cluster.master.client().exists(f"cs:n:{CALLER}")
    decision = engine.decide(engine.make_call(CALLER, None))
    assert not decision.verdict.degraded and decision.facts.record.reports == 1  # type: ignore[union-attr]


def test_failover_in_the_middle_of_calls(cluster: Cluster, shipped_rules: RuleSet) -> None:
    engine = sentinel_engine(cluster, shipped_rules)
    assert engine.store is not None
    engine.store.vote(CALLER, "+33199000001", T0, rate_limited=False)
    assert wait_for(lambda: cluster.replica.client().exists(f"cs:n:{CALLER}") == 1, 5)

    results: list[tuple[float, bool]] = []  # (seconds, degraded)
    stop = threading.Event()

    def calls() -> None:
        while not stop.is_set():
            started = time.monotonic()
            decision = engine.decide(engine.make_call(CALLER, None))
            engine.record(decision)
            results.append((time.monotonic() - started, decision.verdict.degraded))
            time.sleep(0.01)

    caller = threading.Thread(target=calls)
    caller.start()
    try:
        time.sleep(0.5)
        cluster.master.proc.send_signal(signal.SIGKILL)
        cluster.master.proc.wait(5)
        killed_at = len(results)
        assert wait_for(lambda: cluster.master_port() == cluster.replica.port, 30), (
            "no failover to the replica")
        # Calls reach the new master again (after the breaker's short cool-down).
        assert wait_for(lambda: len(results) > killed_at and not results[-1][1], 15)
        time.sleep(0.3)
    finally:
        stop.set()
        caller.join(10)

    degraded = sum(1 for _, d in results if d)
    print(f"\nsentinel failover: {len(results)} calls, {degraded} decided degraded, "
          f"slowest {max(s for s, _ in results) * 1000:.0f} ms")
    assert all(seconds < 1.0 for seconds, _ in results)  # no call stalled on the dead master
    assert degraded >= 1  # the failover really happened under the calls
    assert not results[-1][1]
    # The reputation written before the failover lives on in the promoted replica.
    decision = engine.decide(engine.make_call(CALLER, None))
    assert decision.facts.record.reports == 1  # type: ignore[union-attr]
