"""store: the only Redis module, tested on the real session redis-server.

One round trip per decision, score decay, one vote per reporter, TTLs on everything the call path
writes, list matching and expiry, recent calls, velocity, export/import, and exact counts under
200 concurrent writers.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from callscreen.config import Config
from callscreen.store import BadKey, Store, StoreFacts

CALLER = "+33353010203"
OTHER = "+33353010204"
LINE_FR = "+33199000001"
LINE_US = "+12025550100"
T0 = 1_780_000_000.0  # a fixed "now" in 2026


def reporters(n: int) -> list[str]:
    return [f"+3346571{i:04d}" for i in range(n)]


# -- one round trip per decision -------------------------------------------------------------------

class CountingProxy:
    """A byte relay between clients and the real redis-server that counts request bursts.

    A burst is client data sent after the server last spoke: a pipeline is one burst, N separate
    commands are N bursts. Redis itself answers everything; the relay only observes.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.bursts = 0
        self.connections = 0
        self.upstream_addrs: list[str] = []  # our side of each relayed connection, host:port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            host, port = upstream.getsockname()[:2]
            with self._lock:
                self.connections += 1
                self.upstream_addrs.append(f"{host}:{port}")
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        server_spoke = True
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if server_spoke:
                            with self._lock:
                                self.bursts += 1
                            server_spoke = False
                        upstream.sendall(data)
                    else:
                        server_spoke = True
                        client.sendall(data)
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


@pytest.fixture
def proxy_store(redis_server: Any, rdb: redis.Redis, cfg: Config) -> Iterator[tuple[Store,
                                                                                CountingProxy]]:
    proxy = CountingProxy(redis_server.port)
    client = redis.Redis(port=proxy.port, decode_responses=True, socket_timeout=5)
    yield Store(client, cfg.redis.prefix, cfg.reputation), proxy
    client.close()
    proxy.close()


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in client.info("commandstats").items()}


def test_decision_is_one_round_trip(proxy_store: tuple[Store, CountingProxy],
                                    rdb: redis.Redis) -> None:
    """facts() for a caller on a line: one burst over one connection, and exactly the 13 reads
    expected (record, 2 global + 2 line lists, velocity, lines called, emergency, contact,
    trusted, storm, greylist, neighbour burst) reach the server."""
    store, proxy = proxy_store
    store.report(CALLER, "admin", T0)  # warm up: the connection handshake is not a decision
    store.facts(CALLER, LINE_FR, T0)

    # The relay can see more than one burst: two plain commands are two round trips.
    before = proxy.bursts
    store.r.get("cs:nothing")
    store.r.get("cs:nothing")
    assert proxy.bursts - before == 2

    stats_before = command_calls(rdb)
    before = proxy.bursts
    facts = store.facts(CALLER, LINE_FR, T0 + 1)
    assert proxy.bursts - before == 1
    stats_after = command_calls(rdb)

    assert facts.record.reports == 1
    delta = {k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after}
    delta = {k: v for k, v in delta.items() if v and k != "info"}
    assert delta == {"hgetall": 1, "hmget": 4, "zcount": 3, "hget": 4, "exists": 2}
    # every command of the store went over one pooled connection, which Redis still lists
    assert proxy.connections == 1
    assert proxy.upstream_addrs[0] in {c["addr"] for c in rdb.client_list()}


def test_engine_decision_is_one_round_trip(proxy_store: tuple[Store, CountingProxy],
                                           cfg: Config, shipped_rules: Any) -> None:
    from callscreen.engine import Engine

    store, proxy = proxy_store
    engine = Engine(cfg, shipped_rules, store)
    line = cfg.line_for(LINE_FR)
    engine.decide(engine.make_call("0353010203", line))  # warm up
    before = proxy.bursts
    decision = engine.decide(engine.make_call("0353010299", line))
    assert proxy.bursts - before == 1
    assert decision.verdict.rule == "default"
    # No number: still one round trip, for the PBX and line facts (emergency, storm) only.
    before = proxy.bursts
    assert engine.decide(engine.make_call("anonymous", line)).verdict.rule == "anonymous"
    assert proxy.bursts - before == 1


# -- reputation ------------------------------------------------------------------------------------

def test_score_halves_after_one_half_life(store: Store, cfg: Config) -> None:
    half_life = cfg.reputation.half_life_days * 86400
    assert store.report(CALLER, LINE_FR, T0)
    assert store.facts(CALLER, None, T0).record.score == pytest.approx(25.0)
    assert store.facts(CALLER, None, T0 + half_life).record.score == pytest.approx(12.5)
    assert store.facts(CALLER, None, T0 + 2 * half_life).record.score == pytest.approx(6.25)
    # A new event decays the stored score first, then adds: 12.5 + 25 at one half-life.
    assert store.report(CALLER, LINE_US, T0 + half_life)
    assert store.facts(CALLER, None, T0 + half_life).record.score == pytest.approx(37.5)


def test_admin_report_weight_and_challenge_outcomes(store: Store, cfg: Config) -> None:
    rep = cfg.reputation
    store.report(CALLER, "admin", T0)
    store.challenge_outcome(CALLER, LINE_FR, "fail", T0, 90)
    store.challenge_outcome(CALLER, LINE_FR, "abandon", T0, 90)
    record = store.facts(CALLER, LINE_FR, T0).record
    assert record.score == pytest.approx(rep.admin_report_weight + rep.challenge_fail_weight
                                         + rep.abandon_weight)
    assert (record.fails, record.abandons, record.passes) == (1, 1, 0)
    store.challenge_outcome(CALLER, LINE_FR, "pass", T0, 90)
    facts = store.facts(CALLER, LINE_FR, T0)
    assert facts.trusted and facts.record.passes == 1
    assert facts.record.score == pytest.approx(record.score + rep.pass_weight)
    assert not store.facts(CALLER, LINE_US, T0).trusted  # trust is per line
    with pytest.raises(ValueError):
        store.challenge_outcome(CALLER, LINE_FR, "maybe", T0, 90)


def test_score_never_goes_negative(store: Store) -> None:
    for _ in range(3):
        store.challenge_outcome(CALLER, LINE_FR, "pass", T0, 90)
    assert store.facts(CALLER, None, T0).record.score == 0


def test_one_vote_per_reporter(store: Store) -> None:
    assert store.report(CALLER, LINE_FR, T0) is True
    assert store.report(CALLER, LINE_FR, T0 + 10) is False
    assert store.report(CALLER, LINE_US, T0 + 20) is True
    assert store.report(CALLER, "admin", T0 + 30) is True
    assert store.report(CALLER, "admin", T0 + 40) is False
    record = store.facts(CALLER, None, T0 + 40).record
    assert record.reporters == 3
    assert record.score == pytest.approx(25 + 25 + 40, abs=0.01)
    assert store.report(OTHER, LINE_FR, T0) is True  # votes are per number
    with pytest.raises(BadKey):
        store.report(CALLER, "someone", T0)


def test_repeated_report_does_not_count_as_a_report(store: Store) -> None:
    for i in range(5):
        store.report(CALLER, LINE_FR, T0 + i)
    record = store.facts(CALLER, None, T0 + 5).record
    assert (record.reporters, record.reports) == (1, 1)


def test_every_key_written_on_the_call_path_has_a_ttl(store: Store, rdb: redis.Redis,
                                                      cfg: Config) -> None:
    now = time.time()
    store.record_call(CALLER, LINE_FR, now, "allow", "default")
    store.record_call(None, LINE_US, now, "challenge", "anonymous")
    store.report(CALLER, LINE_FR, now)
    store.challenge_outcome(OTHER, LINE_FR, "pass", now, 90)
    store.challenge_outcome(OTHER, LINE_US, "fail", now, 90)
    store.add_contact(LINE_US, CALLER, now, 365 * 86400)
    keys = sorted(rdb.keys("*"))
    assert set(keys) == {
        store.k_record(CALLER), store.k_velocity(CALLER),
        store.k_recent(LINE_FR), store.k_recent(LINE_US), store.k_record(OTHER),
        store.k_trusted(LINE_FR), store.k_contacts(LINE_US),
        store.k_lines_called(CALLER),
        store.k_rate(f"local/{LINE_FR}"), store.k_reporter_log(f"local/{LINE_FR}"),
    }
    for key in keys:
        assert rdb.ttl(key) > 0, key
    assert rdb.ttl(store.k_record(CALLER)) > cfg.reputation.record_ttl_days * 86400 - 60
    assert rdb.ttl(store.k_contacts(LINE_US)) > 364 * 86400


def test_expiring_hash_ttl_follows_the_latest_expiry(store: Store, rdb: redis.Redis) -> None:
    now = time.time()
    store.add_contact(LINE_FR, CALLER, now, 30 * 86400)
    store.add_contact(LINE_FR, OTHER, now, 10 * 86400)  # shorter: must not shorten the key
    assert rdb.ttl(store.k_contacts(LINE_FR)) > 29 * 86400
    store.add_contact(LINE_FR, OTHER, now, 60 * 86400)
    assert rdb.ttl(store.k_contacts(LINE_FR)) > 59 * 86400


def test_contact_expiry_is_per_member(store: Store) -> None:
    store.add_contact(LINE_FR, CALLER, T0, 86400)
    assert store.facts(CALLER, LINE_FR, T0 + 3600).contact
    assert not store.facts(CALLER, LINE_FR, T0 + 2 * 86400).contact
    assert not store.facts(CALLER, LINE_US, T0).contact
    with pytest.raises(BadKey):
        store.add_contact(LINE_FR, "0353010203", T0, 86400)


# -- lists -----------------------------------------------------------------------------------------

def test_list_prefix_matching_longest_prefix_and_exact_first(store: Store) -> None:
    store.list_add("block", "+33162*", None, None, "npv")
    store.list_add("block", "+331621*", None, None, "narrower")
    store.list_add("block", "+3*", None, None, "broad")
    assert store.facts("+33162123456", None, T0).block_global == "+331621*"
    assert store.facts("+33162999999", None, T0).block_global == "+33162*"
    assert store.facts("+33353010203", None, T0).block_global == "+3*"
    assert store.facts("+12025550142", None, T0).block_global is None
    store.list_add("block", "+33162123456", None, None, "exact")
    assert store.facts("+33162123456", None, T0).block_global == "+33162123456"


def test_global_and_line_lists_are_separate(store: Store) -> None:
    store.list_add("allow", "+33353*", LINE_FR, None, "local")
    store.list_add("block", CALLER, None, None, "global")
    on_fr = store.facts(CALLER, LINE_FR, T0)
    on_us = store.facts(CALLER, LINE_US, T0)
    no_line = store.facts(CALLER, None, T0)
    assert (on_fr.allow_line, on_fr.allow_global, on_fr.block_global) == ("+33353*", None, CALLER)
    assert on_fr.allowlisted and on_fr.blocklisted
    assert (on_us.allow_line, on_us.blocklisted) == (None, True)
    assert (no_line.allow_line, no_line.block_line) == (None, None)


def test_expired_entries_are_ignored_then_purged(store: Store, rdb: redis.Redis) -> None:
    now = time.time()
    store.list_add("block", CALLER, None, now - 10, "expired")
    store.list_add("block", "+33353*", None, now + 3600, "prefix, in force")
    store.list_add("allow", OTHER, LINE_FR, now - 10, "expired line entry")
    store.list_add("allow", "+1202*", LINE_US, None, "forever")
    # exact entry expired: the in-force prefix now decides
    assert store.facts(CALLER, None, now).block_global == "+33353*"
    assert store.facts(OTHER, LINE_FR, now).allow_line is None
    assert rdb.hlen(store.k_list("block")) == 2  # still stored until listed

    entries = store.list_entries(now)

    assert sorted((e["list"], e["line"], e["entry"]) for e in entries) == [
        ("allow", LINE_US, "+1202*"), ("block", None, "+33353*")]
    forever = next(e for e in entries if e["entry"] == "+1202*")
    assert forever["expires"] is None and forever["label"] == "forever"
    assert rdb.hlen(store.k_list("block")) == 1
    assert rdb.hlen(store.k_list("allow", LINE_FR)) == 0


def test_list_entry_validation_and_labels(store: Store, rdb: redis.Redis) -> None:
    for bad in ["0162*", "+0162*", "+33 162*", "+33162**", "*", "+*", "+1234567890123456*",
                "+３３162*", "0353010203"]:
        with pytest.raises(BadKey):
            store.list_add("block", bad, None, None, "x")
    with pytest.raises(ValueError):
        store.list_add("grey", CALLER, None, None, "x")
    store.list_add("block", CALLER, None, None, "a|b\nc" + "x" * 100)
    value = rdb.hget(store.k_list("block"), CALLER)
    expiry, label = value.split("|", 1)
    assert expiry == "0" and "|" not in label and "\n" not in label and len(label) <= 64
    assert store.list_remove("block", CALLER, None) is True
    assert store.list_remove("block", CALLER, None) is False


# -- recent calls and velocity ---------------------------------------------------------------------

def test_recent_calls_and_last_caller(store: Store, rdb: redis.Redis, cfg: Config) -> None:
    assert store.last_caller(LINE_FR) is None
    store.record_call(CALLER, LINE_FR, T0, "allow", "default")
    store.record_call(None, LINE_FR, T0 + 1, "challenge", "anonymous")
    store.record_call(OTHER, LINE_US, T0 + 2, "allow", "default")
    store.record_call(OTHER, LINE_FR, T0 + 3, "block", "black|listed")
    assert store.last_caller(LINE_FR) == (T0 + 3, OTHER, "block", "blacklisted")
    assert [c[1] for c in store.recent(LINE_FR)] == [OTHER, "anonymous", CALLER]
    assert store.last_caller(LINE_US) == (T0 + 2, OTHER, "allow", "default")
    kept = cfg.reputation.recent_calls_kept
    for i in range(kept + 10):
        store.record_call(CALLER, LINE_FR, T0 + 10 + i, "allow", "default")
    assert rdb.llen(store.k_recent(LINE_FR)) == kept
    assert store.last_caller(LINE_FR)[0] == T0 + 10 + kept + 9


def test_velocity_window(store: Store, cfg: Config) -> None:
    window = cfg.reputation.velocity_window_minutes * 60
    for i, line in enumerate([LINE_FR, LINE_US, LINE_FR]):
        store.record_call(CALLER, line, T0 + 60 * i, "allow", "default")
    assert store.facts(CALLER, None, T0 + 120).velocity == 3
    # at T0 + window + 30, the call at T0 is out of the window, the ones at +60 and +120 are in
    assert store.facts(CALLER, None, T0 + window + 30).velocity == 2
    assert store.facts(CALLER, None, T0 + window + 200).velocity == 0
    assert store.facts(OTHER, None, T0).velocity == 0
    record = store.facts(CALLER, None, T0 + 120).record
    assert (record.calls, record.first_seen, record.last_seen) == (3, T0, T0 + 120)
    assert record.history


def test_old_velocity_members_are_trimmed(store: Store, rdb: redis.Redis, cfg: Config) -> None:
    window = cfg.reputation.velocity_window_minutes * 60
    store.record_call(CALLER, LINE_FR, T0, "allow", "default")
    store.record_call(CALLER, LINE_FR, T0 + window + 1, "allow", "default")
    assert rdb.zcard(store.k_velocity(CALLER)) == 1


def test_forgive_and_stats(store: Store) -> None:
    store.report(CALLER, LINE_FR, T0)
    store.record_call(CALLER, LINE_FR, T0, "allow", "default")
    store.list_add("block", OTHER, LINE_US, None, "x")
    stats = store.stats()
    assert (stats["numbers"], stats["lines"], stats["block_entries"], stats["allow_entries"]) == (
        1, 2, 1, 0)
    assert stats["used_memory"] > 0
    assert store.forgive(CALLER) is True
    assert store.facts(CALLER, None, T0).record.reports == 0
    assert store.forgive(CALLER) is False
    assert store.facts(OTHER, LINE_US, T0).block_line == OTHER  # lists are kept


def test_show(store: Store) -> None:
    store.report(CALLER, LINE_FR, T0)
    data = store.show(CALLER, LINE_FR, T0)
    assert data["number"] == CALLER and data["reporters"] == [f"local/{LINE_FR}"]
    assert data["record"]["reports"] == 1 and data["record_ttl_s"] > 0
    json.dumps(data)


# -- export / import -------------------------------------------------------------------------------

def populate(store: Store) -> None:
    now = time.time()
    store.report(CALLER, LINE_FR, now)
    store.report(CALLER, "admin", now)
    store.record_call(CALLER, LINE_FR, now, "allow", "default")
    store.record_call(None, LINE_US, now, "challenge", "anonymous")
    store.challenge_outcome(OTHER, LINE_FR, "pass", now, 90)
    store.add_contact(LINE_US, CALLER, now, 86400)
    store.list_add("block", "+33162*", None, None, "npv")
    store.list_add("allow", OTHER, LINE_FR, now + 3600, "for an hour")


def test_export_flush_import_round_trip(store: Store, rdb: redis.Redis) -> None:
    populate(store)
    before = {rec["key"]: rec for rec in store.export()}
    assert len(before) == rdb.dbsize() == 13  # every key callscreen wrote, new shapes included
    types_before = {k: rdb.type(store.p + k) for k in before}
    json.loads(json.dumps(list(before.values())))  # JSON-able

    rdb.flushdb()
    assert store.import_records(json.loads(json.dumps(list(before.values())))) == 13

    after = {rec["key"]: rec for rec in store.export()}
    assert after.keys() == before.keys()
    for key, rec in before.items():
        assert after[key]["type"] == rec["type"] == types_before[key]
        assert after[key]["value"] == rec["value"], key
        if rec["ttl_ms"] is None:
            assert after[key]["ttl_ms"] is None, key
        else:
            assert after[key]["ttl_ms"] == pytest.approx(rec["ttl_ms"], abs=5000), key
    # and the store reads it back the same way
    facts = store.facts(CALLER, LINE_US, time.time())
    assert (facts.record.reports, facts.record.reporters, facts.contact) == (2, 2, True)


def test_import_replaces_existing_keys(store: Store, rdb: redis.Redis) -> None:
    store.list_add("block", CALLER, None, None, "old")
    store.list_add("block", OTHER, None, None, "old")
    store.import_records([{"key": "block", "type": "hash", "value": {CALLER: "0|new"},
                           "ttl_ms": None}])
    assert rdb.hgetall(store.k_list("block")) == {CALLER: "0|new"}


@pytest.mark.parametrize(
    "key",
    ["evil", "", "cs:n:+33353010203", "n:0353010203", "n:+33353010203:x", "n:+33353010203:r:r",
     "v:+33353010203:r", "l:+33199000001:grey", "l:+33199000001", "l:home:allow", "allow:x",
     "n:*", "x:+33353010203", "n:+33353010203 ", "n:+3335301020３"],
)
def test_import_rejects_foreign_key_shapes(store: Store, rdb: redis.Redis, key: str) -> None:
    good = {"key": "allow", "type": "hash", "value": {CALLER: "0|x"}, "ttl_ms": None}
    with pytest.raises(BadKey):
        store.import_records([good, {"key": key, "type": "hash", "value": {"a": "b"}}])
    assert rdb.dbsize() == 0  # nothing written, not even the good record before it


def test_import_rejects_a_key_with_a_trailing_newline(store: Store, rdb: redis.Redis) -> None:
    with pytest.raises(BadKey):
        store.import_records([{"key": "n:+33353010203\n", "type": "hash", "value": {"c": "1"}}])
    assert rdb.dbsize() == 0


# -- concurrency -----------------------------------------------------------------------------------

def run_threads(n: int, work: Any) -> list[BaseException]:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return errors


@pytest.fixture
def shared_store(redis_server: Any, rdb: redis.Redis, cfg: Config) -> Iterator[Store]:
    """A store whose pool waits for a free connection, to test the scripts' atomicity alone."""
    pool = redis.BlockingConnectionPool(port=redis_server.port, max_connections=32, timeout=20,
                                        decode_responses=True)
    yield Store(redis.Redis(connection_pool=pool), cfg.redis.prefix, cfg.reputation)
    pool.disconnect()


def test_200_concurrent_reports_are_counted_exactly(shared_store: Store, rdb: redis.Redis) -> None:
    who = [f"+33536{i:06d}" for i in range(200)]
    errors = run_threads(200, lambda i: shared_store.report(CALLER, who[i], T0 + i * 0.001))
    assert errors == []
    record = shared_store.facts(CALLER, None, T0 + 1).record
    assert (record.reports, record.reporters) == (200, 200)
    assert len(shared_store.show(CALLER, None, T0 + 1)["reporters"]) == 200
    # the score is exact too (no lost update): 200 x 25, decayed by under a second
    assert record.score == pytest.approx(200 * 25, rel=1e-3)


def test_200_concurrent_calls_are_counted_exactly(shared_store: Store, rdb: redis.Redis) -> None:
    lines = [LINE_FR, LINE_US]
    errors = run_threads(200, lambda i: shared_store.record_call(
        CALLER, lines[i % 2], T0 + i * 0.001, "allow", "default"))
    assert errors == []
    facts: StoreFacts = shared_store.facts(CALLER, None, T0 + 1)
    assert facts.record.calls == 200
    assert facts.velocity == 200
    assert rdb.llen(shared_store.k_recent(LINE_FR)) == 50  # trimmed to recent_calls_kept


def test_production_pool_survives_200_concurrent_callers(store: Store) -> None:
    who = [f"+33536{i:06d}" for i in range(200)]
    errors = run_threads(200, lambda i: store.report(CALLER, who[i], T0 + i * 0.001))
    assert errors == []
    assert store.facts(CALLER, None, T0 + 1).record.reporters == 200
