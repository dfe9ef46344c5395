"""FastAGI server (`callscreen serve`): thread per call, one Redis pool, atomic reloads.

A challenge holds a call for seconds, so a thread per connection is the simple, right model here.
Every connection has a deadline; a watchdog closes the socket of a call that outlives it, so
Asterisk gets its channel back and the dialplan applies its default. SIGHUP reloads config and
rules (a broken file keeps the old ones in force and logs file:line); SIGTERM stops accepting and
drains the calls in flight.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from callscreen import config as config_mod
from callscreen import handlers, rules
from callscreen.agi import ENV_TIMEOUT_S, Session, SocketTransport
from callscreen.config import ConfigError
from callscreen.engine import Engine
from callscreen.store import Store

log = logging.getLogger(__name__)

MAX_CALLS = 512  # concurrent connections; past this a new one is closed (the dialplan default)
WATCHDOG_PERIOD_S = 0.5
DEADLINE_GRACE_S = 1.0
MAINTENANCE_PERIOD_S = 15.0


def load_engine(config_path: str | Path | None, store: Store | None = None) -> Engine:
    """Config + rules + store; raises ConfigError/RulesError without side effects."""
    cfg = config_mod.load(config_path)
    ruleset = rules.load_dir(cfg.rules_dir)
    if store is None or store.redis_config != cfg.redis:
        store = Store.from_config(cfg)
    else:  # same Redis: keep the connection pool, take every new setting
        store = Store.from_config(cfg, client=store.r)
    return Engine(cfg, ruleset, store)


@dataclass
class _Conn:
    sock: socket.socket
    peer: str
    started: float
    deadline: float  # until the session exists: the env timeout plus the base budget
    session: Session | None = None

    def current_deadline(self) -> float:
        return self.session.deadline if self.session is not None else self.deadline


class FastAGIServer:
    def __init__(self, engine: Engine, config_path: str | Path | None = None,
                 bind: str | None = None, port: int | None = None):
        self.engine = engine
        self.config_path = config_path
        cfg = engine.cfg
        self.bind = bind or cfg.server.bind
        self.port = cfg.server.port if port is None else port
        self.allowed = [ipaddress.ip_network(c, strict=False) for c in cfg.server.allowed_clients]
        self._peer_verdicts: dict[str, bool] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        self._threads: set[threading.Thread] = set()
        self.calls_total = 0
        self.listener: socket.socket | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.bind, self.port))
        sock.listen(256)
        sock.settimeout(WATCHDOG_PERIOD_S)
        self.listener = sock
        host, port = sock.getsockname()[:2]
        self.port = port
        log.info("FastAGI listening on %s:%d", host, port)
        return host, port

    def install_signals(self) -> None:
        """Main thread only: SIGHUP reloads, SIGTERM/SIGINT drain and stop."""
        signal.signal(signal.SIGHUP, self._on_sighup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)

    def _on_sighup(self, _sig: int, _frame: FrameType | None) -> None:
        self._reload.set()

    def _on_stop(self, _sig: int, _frame: FrameType | None) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self, drain_s: float = 30.0) -> None:
        if self.listener is None:
            self.open()
        assert self.listener is not None
        watchdog = threading.Thread(target=self._watchdog, name="watchdog", daemon=True)
        watchdog.start()
        threading.Thread(target=self._maintenance, name="maintenance", daemon=True).start()
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                try:
                    sock, addr = self.listener.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self._stop.is_set():
                        break
                    log.warning("accept failed: %s", exc)
                    time.sleep(0.05)
                    continue
                self._start(sock, addr[0])
        finally:
            self.listener.close()
            self._drain(drain_s)

    def _drain(self, drain_s: float) -> None:
        end = time.monotonic() + drain_s
        with self._lock:
            threads = list(self._threads)
        if threads:
            log.info("draining %d call(s) in flight", len(threads))
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        log.info("FastAGI server stopped after %d call(s)", self.calls_total)

    def reload(self) -> bool:
        """Swap in new config + rules atomically; keep the old ones if anything is wrong."""
        try:
            engine = load_engine(self.config_path, self.engine.store)
        except (ConfigError, rules.RulesError) as exc:
            for problem in exc.problems:
                log.error("reload refused, keeping previous config and rules: %s", problem)
            return False
        except Exception:  # a reload must never take the server down
            log.exception("reload refused, keeping previous config and rules")
            return False
        self.engine = engine
        # Who may connect takes effect now too (the address and port need a restart).
        self.allowed = [ipaddress.ip_network(c, strict=False)
                        for c in engine.cfg.server.allowed_clients]
        self._peer_verdicts = {}
        log.info("reloaded: %d rules from %d files", len(engine.ruleset.rules),
                 len(engine.ruleset.files))
        return True

    # -- connections -----------------------------------------------------------------------------
    def _allowed(self, peer: str) -> bool:
        # Asterisk connects from one or two addresses: parsing each one once saves ~5% of a
        # decision's CPU. Bounded: a flood of other addresses cannot grow it.
        known = self._peer_verdicts.get(peer)
        if known is None:
            known = self._check_peer(peer)
            if len(self._peer_verdicts) < 1024:
                self._peer_verdicts[peer] = known
        return known

    def _check_peer(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.allowed)

    def _start(self, sock: socket.socket, peer: str) -> None:
        if not self._allowed(peer):
            log.warning("refused FastAGI connection from %s (not in allowed_clients)", peer)
            sock.close()
            return
        with self._lock:
            busy = len(self._threads) >= MAX_CALLS
        if busy:
            log.error("too many calls in flight (%d): closing a new one", MAX_CALLS)
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(target=self._serve, args=(sock, peer), daemon=True)
        with self._lock:
            self._threads.add(thread)
            self.calls_total += 1
        thread.start()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        key = id(sock)
        now = time.monotonic()
        conn = _Conn(sock, peer, now,
                     now + ENV_TIMEOUT_S + handlers.deadline_for(self.engine.cfg, "screen"))
        with self._lock:
            self._conns[key] = conn
        try:
            handlers.run(SocketTransport(sock), lambda: self.engine,
                         on_session=lambda session: setattr(conn, "session", session))
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self._lock:
                self._conns.pop(key, None)
                self._threads.discard(threading.current_thread())

    def _watchdog(self) -> None:
        """Close sockets of calls past their deadline: a stuck handler never holds a call."""
        while not self._stop.wait(WATCHDOG_PERIOD_S) or self._threads:
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._conns.values()
                        if now > c.current_deadline() + DEADLINE_GRACE_S]
            for conn in late:
                log.error("call from %s over its deadline: releasing the channel", conn.peer)
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._stop.is_set() and not self._threads:
                return

    def _maintenance(self) -> None:
        """Announce storms that ended quietly (no call came to notice); replay the writes
        spooled while Redis was away."""
        while not self._stop.wait(MAINTENANCE_PERIOD_S):
            self.check_storms()
            store = self.engine.store
            if store is not None:
                try:
                    store.replay_spool()
                except Exception:  # noqa: BLE001 - try again next round
                    log.exception("spool replay failed")

    def check_storms(self) -> list[str]:
        engine = self.engine
        ended: list[str] = []
        if engine.store is None:
            return ended
        for line in engine.cfg.lines:
            try:
                if engine.store.storm_ended(line.did):
                    ended.append(line.did)
                    engine.announce_storm("end", line.did)
            except Exception as exc:  # noqa: BLE001 - Redis down: try again next round
                log.debug("storm check for %s failed: %s", line.did, exc)
        return ended

    def in_flight(self) -> int:
        with self._lock:
            return len(self._threads)
