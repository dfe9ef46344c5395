"""The FastAGI server over real TCP, driven by the fake Asterisk (tests/fake_asterisk.py), on the
real session Redis: concurrency, idle and stuck connections, leaks, reload, allowed clients,
the watchdog, draining on stop.
"""

from __future__ import annotations

import gc
import os
import select
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fake_asterisk import (
    SCREEN_FIELDS,
    SILENT,
    Channel,
    FakeAsterisk,
    Slow,
    by_verb,
    fastagi_env,
    in_order,
    tcp_peer,
)
from support import REPO, RedisServer, wait_for

from callscreen import handlers
from callscreen import server as server_mod
from callscreen.agi import ENV_TIMEOUT_S
from callscreen.engine import Engine
from callscreen.rules import Rule, RuleSet
from callscreen.server import DEADLINE_GRACE_S, WATCHDOG_PERIOD_S, FastAGIServer
from callscreen.store import Store

LINE = "+33199000001"
ORDINARY = "+33353010001"
MARGIN_S = 1.0

Start = Callable[..., FastAGIServer]


@pytest.fixture
def start_server() -> Iterator[Start]:
    """start_server(engine, **kw): FastAGIServer on 127.0.0.1, an ephemeral port, in a thread."""
    running: list[tuple[FastAGIServer, threading.Thread]] = []

    def start(engine: Engine, **kw: Any) -> FastAGIServer:
        srv = FastAGIServer(engine, bind="127.0.0.1", port=0, **kw)
        srv.open()
        thread = threading.Thread(target=srv.serve_forever, kwargs={"drain_s": 5.0},
                                  name="serve_forever", daemon=True)
        srv.thread = thread  # type: ignore[attr-defined]
        thread.start()
        running.append((srv, thread))
        return srv

    yield start
    for srv, thread in running:
        srv.stop()
        thread.join(10)
        assert not thread.is_alive(), "serve_forever did not return"


def env(caller: str = ORDINARY, route: str = "screen", port: int = 4573,
        args: tuple[str, ...] = ("0199000001",)) -> bytes:
    return fastagi_env(route, args, Channel(callerid=caller), port=port)


def call(srv: FastAGIServer, caller: str = ORDINARY, route: str = "screen",
         respond: Any = None, **kw: Any) -> FakeAsterisk:
    peer = tcp_peer(srv.port, respond or by_verb({}))
    peer.start(env(caller, route, srv.port, **kw))
    return peer.join(15)


def fd_count() -> int:
    gc.collect()  # sockets of earlier tests' garbage must not close during the measurement
    return len(os.listdir("/proc/self/fd"))


def server_side_sockets(port: int) -> int:
    """Our process's open TCP sockets whose LOCAL port is the server's, the listener excepted:
    the connections the server accepted and has not closed yet."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != "0A" and fields[9] in inodes:  # 0A: LISTEN
                count += 1
    return count



def closed_by_server(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(closed within timeout, bytes received before the close)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        return True, got
    except TimeoutError:
        return False, got


# -- calls ----------------------------------------------------------------------------------


def test_one_call(engine: Engine, start_server: Start) -> None:
    srv = start_server(engine)
    peer = call(srv)
    assert peer.eof and set(peer.verbs) == {"SET VARIABLE"}
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_NUMBER"], v["SCREEN_DEGRADED"]) == (
        "allow", ORDINARY, "0")
    assert srv.calls_total == 1


def test_fifty_concurrent_calls(engine: Engine, start_server: Start) -> None:
    # 50 unknown callers within the hour are a callback storm on the line (storm.min_callers 6):
    # not what this test is about.
    cfg = replace(engine.cfg, storm=replace(engine.cfg.storm, min_callers=1000))
    engine = Engine(cfg, engine.ruleset, Store.from_config(cfg))
    assert engine.store is not None
    callers = [f"+3335301{i:04d}" for i in range(100, 150)]
    blocked = set(callers[::10])
    for number in blocked:
        engine.store.list_add("block", number, None, None, "test")
    srv = start_server(engine)
    results: dict[str, dict[str, str]] = {}
    errors: list[BaseException] = []
    gate = threading.Barrier(len(callers))

    def one(number: str) -> None:
        try:
            gate.wait(10)
            results[number] = call(srv, number).screen_vars()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in callers]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert len(results) == 50
    for number, v in results.items():
        assert v["SCREEN_NUMBER"] == number  # each answer belongs to its own call
        assert v["SCREEN_ACTION"] == ("block" if number in blocked else "allow"), number
        assert v["SCREEN_DEGRADED"] == "0"
    assert time.monotonic() - started < 15
    assert srv.calls_total == 50
    assert wait_for(lambda: srv.in_flight() == 0, 5)
    assert all(engine.store.facts(n, LINE, time.time()).record.calls == 1 for n in callers)


def test_unknown_route_closes_without_a_command(engine: Engine, start_server: Start) -> None:
    srv = start_server(engine)
    started = time.monotonic()
    peer = call(srv, route="nosuch")
    assert peer.eof and peer.commands == []
    assert time.monotonic() - started < MARGIN_S


# -- idle, leaks ----------------------------------------------------------------------------


def test_silent_client_is_dropped_within_the_env_timeout(engine: Engine,
                                                         start_server: Start) -> None:
    srv = start_server(engine)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        started = time.monotonic()
        closed, got = closed_by_server(sock, ENV_TIMEOUT_S + 1)
        elapsed = time.monotonic() - started
    assert closed and got == b"", "an idle client held its connection"
    assert elapsed < ENV_TIMEOUT_S + 1


def test_200_idle_connections_leave_no_thread_or_fd(engine: Engine,
                                                    start_server: Start) -> None:
    srv = start_server(engine)
    call(srv)  # warm up: Redis pool connection, watchdog and maintenance threads
    assert wait_for(lambda: srv.in_flight() == 0, 5)
    threads_before, fds_before = threading.active_count(), fd_count()

    clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(200)]
    try:
        assert wait_for(lambda: srv.calls_total >= 201, 5)
        assert threading.active_count() > threads_before  # a thread per connection, for now
        assert server_side_sockets(srv.port) > 100  # the probe below sees them
        pending = set(clients)
        end = time.monotonic() + ENV_TIMEOUT_S + 3
        while pending and time.monotonic() < end:
            ready, _, _ = select.select(list(pending), [], [], 0.2)
            for s in ready:
                try:
                    data = s.recv(1)
                except ConnectionResetError:
                    data = b""
                assert data == b""  # never a command for an env that never came
                pending.discard(s)
        assert not pending, f"{len(pending)} idle connections still open"
    finally:
        for s in clients:
            s.close()
    assert wait_for(lambda: srv.in_flight() == 0, 3)
    assert wait_for(lambda: threading.active_count() <= threads_before, 3), (
        threading.active_count(), threads_before)
    assert wait_for(lambda: server_side_sockets(srv.port) == 0, 3), server_side_sockets(srv.port)
    assert wait_for(lambda: fd_count() <= fds_before, 3), (fd_count(), fds_before)


def test_connections_past_max_calls_are_closed_at_once(
        engine: Engine, start_server: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "MAX_CALLS", 2)
    srv = start_server(engine)
    busy = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
    try:
        assert wait_for(lambda: srv.in_flight() == 2, 5)
        with socket.create_connection(("127.0.0.1", srv.port)) as extra:
            started = time.monotonic()
            closed, got = closed_by_server(extra, MARGIN_S)
            assert closed and got == b""
            assert time.monotonic() - started < MARGIN_S
        assert srv.calls_total == 2
    finally:
        for s in busy:
            s.close()
    assert wait_for(lambda: srv.in_flight() == 0, 3)
    assert call(srv).screen_vars()["SCREEN_ACTION"] == "allow"  # capacity is back


# -- allowed clients ------------------------------------------------------------------------


def test_client_outside_allowed_clients_is_closed_without_a_command(
        engine: Engine, start_server: Start) -> None:
    cfg = replace(engine.cfg, server=replace(engine.cfg.server, allowed_clients=("10.0.0.0/8",)))
    srv = start_server(Engine(cfg, engine.ruleset, engine.store))
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        try:
            sock.sendall(env(port=srv.port))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed before we finished: fine
        closed, got = closed_by_server(sock, MARGIN_S)
    assert closed and got == b""
    assert srv.calls_total == 0


# -- deadlines and the watchdog -------------------------------------------------------------


def tiny_deadline(engine: Engine, seconds: int = 1) -> Engine:
    cfg = replace(engine.cfg, server=replace(engine.cfg.server, call_deadline_s=seconds))
    return Engine(cfg, engine.ruleset, engine.store)


def test_call_stuck_on_asterisk_is_released_after_its_deadline(
        engine: Engine, start_server: Start) -> None:
    """Asterisk never answers SET VARIABLE (res_agi has no timeout): the server side gives up."""
    eng = tiny_deadline(engine)
    srv = start_server(eng)
    peer = tcp_peer(srv.port, lambda c, p: SILENT, idle_timeout=10)
    started = time.monotonic()
    peer.start(env(route="health", port=srv.port))
    peer.join(10)
    elapsed = time.monotonic() - started
    assert peer.eof and peer.verbs == ["SET VARIABLE"]
    budget = handlers.deadline_for(eng.cfg, "health")
    assert elapsed < budget + DEADLINE_GRACE_S + 1, elapsed


def test_screen_call_without_challenge_is_released_after_call_deadline(
        engine: Engine, start_server: Start) -> None:
    eng = tiny_deadline(engine)
    srv = start_server(eng)
    peer = tcp_peer(srv.port, lambda c, p: SILENT, idle_timeout=10)
    try:
        peer.start(env(port=srv.port))  # ORDINARY: default allow, no challenge
        assert wait_for(lambda: peer.eof, eng.cfg.server.call_deadline_s + DEADLINE_GRACE_S + 1)
    finally:
        peer.close()  # release the handler thread either way
        peer.join(5)


def test_watchdog_releases_a_handler_stuck_outside_the_protocol(
        engine: Engine, start_server: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler stuck where no AGI read bounds it (here: a rule that blocks): the watchdog
    shuts the socket down so Asterisk gets its channel back."""
    release = threading.Event()

    def stuck(_ctx: Any) -> tuple[bool | None, str]:
        release.wait(20)
        return False, "stuck"

    rule = Rule(name="stuck", where="test:1", test=stuck, action="block", reason="x", score=0.0)
    small = tiny_deadline(engine)
    eng = Engine(small.cfg, RuleSet((rule, *engine.ruleset.rules), ("test",)), engine.store)
    deadline = float(small.cfg.server.call_deadline_s)
    srv = start_server(eng)
    peer = tcp_peer(srv.port, idle_timeout=10)
    try:
        started = time.monotonic()
        peer.start(env(port=srv.port))
        assert wait_for(lambda: peer.eof,
                          deadline + DEADLINE_GRACE_S + WATCHDOG_PERIOD_S + MARGIN_S)
        elapsed = time.monotonic() - started
        assert elapsed >= deadline  # the watchdog, not something else, ended it
        assert peer.commands == []  # closed while the handler was still stuck
    finally:
        release.set()
    peer.join(5)
    assert wait_for(lambda: srv.in_flight() == 0, 5)


# -- stop and reload ------------------------------------------------------------------------


def test_stop_drains_the_call_in_flight(engine: Engine, start_server: Start) -> None:
    srv = start_server(engine)
    peer = tcp_peer(srv.port, in_order([Slow(1.0, "200 result=1")]))
    peer.start(env(port=srv.port))
    assert wait_for(lambda: len(peer.commands) >= 1, 5)  # the call is in flight
    srv.stop()
    thread: threading.Thread = srv.thread  # type: ignore[attr-defined]
    thread.join(10)
    assert not thread.is_alive()
    assert engine.store is not None
    # the call's last step (the after-call write, once the channel is released) ran before
    # serve_forever returned
    assert engine.store.facts(ORDINARY, LINE, time.time()).record.calls == 1
    assert srv.in_flight() == 0
    peer.join(5)
    assert peer.eof
    assert set(peer.screen_vars()) == set(SCREEN_FIELDS)  # finished, not cut
    assert peer.screen_vars()["SCREEN_ACTION"] == "allow"
    with pytest.raises(OSError):  # and nothing listens any more
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


BROKEN_RULES = """rules:
  - name: Not A Valid Name
    when: {no_such_condition: 1}
    action: allow
"""
FIXED_RULES = """rules:
  - name: local-block
    when: {prefix: ["+33353019"]}
    action: block
    reason: local
"""


def test_reload_keeps_the_old_rules_when_broken_and_swaps_when_fixed(
        redis_server: RedisServer, rdb: Any, start_server: Start, tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules_dir)
    config = tmp_path / "callscreen.yaml"
    config.write_text(f"redis: {{url: '{redis_server.url}'}}\nregion: FR\n"
                      'lines: ["01 99 00 00 01"]\nrules_dir: rules\n')
    engine = server_mod.load_engine(config)
    srv = start_server(engine, config_path=config)
    caller = "+33353019999"
    assert call(srv, caller).screen_vars()["SCREEN_ACTION"] == "allow"

    (rules_dir / "99-local.yaml").write_text(BROKEN_RULES)
    assert srv.reload() is False
    assert srv.engine is engine  # the old config and rules stay in force
    assert call(srv, caller).screen_vars()["SCREEN_ACTION"] == "allow"

    (rules_dir / "99-local.yaml").write_text(FIXED_RULES)
    assert srv.reload() is True
    assert srv.engine is not engine
    assert len(srv.engine.ruleset.rules) == len(engine.ruleset.rules) + 1
    assert srv.engine.store is not None and engine.store is not None
    assert srv.engine.store.r is engine.store.r  # same Redis: the pool is kept
    v = call(srv, caller).screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_RULE"]) == ("block", "local-block")


def test_reload_with_a_broken_config_keeps_the_old_one(
        redis_server: RedisServer, rdb: Any, start_server: Start, tmp_path: Path) -> None:
    config = tmp_path / "callscreen.yaml"
    config.write_text(f"redis: {{url: '{redis_server.url}'}}\nregion: FR\n"
                      f"rules_dir: {REPO / 'rules'}\n")
    engine = server_mod.load_engine(config)
    srv = start_server(engine, config_path=config)
    config.write_text("region: [broken\n")
    assert srv.reload() is False and srv.engine is engine
    assert call(srv).screen_vars()["SCREEN_ACTION"] == "allow"


def test_reload_applies_allowed_clients(redis_server: RedisServer, rdb: Any,
                                        start_server: Start, tmp_path: Path) -> None:
    config = tmp_path / "callscreen.yaml"
    base = f"redis: {{url: '{redis_server.url}'}}\nregion: FR\nrules_dir: {REPO / 'rules'}\n"
    config.write_text(base)
    srv = start_server(server_mod.load_engine(config), config_path=config)
    assert call(srv).screen_vars()["SCREEN_ACTION"] == "allow"  # 127.0.0.1 allowed by default
    config.write_text(base + "server: {allowed_clients: [10.0.0.0/8]}\n")
    assert srv.reload() is True
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        try:
            sock.sendall(env(port=srv.port))
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, got = closed_by_server(sock, MARGIN_S)
    assert closed and got == b""  # refused now, without a command
