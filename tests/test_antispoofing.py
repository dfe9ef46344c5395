"""Anti-spoofing features on the real session Redis: callback storms (detection, baseline, quiet
expiry, forced storms, evidence), storm notices (log, command, AMI UserEvent), votes (window,
rate limit, distinct PBXs, rollback), reports weighted by attestation and storms, learning
(lines called, neighbour bursts, greylist), the emergency bypass, spoofed numbers and the storm
prompt through the AGI handler with the fake Asterisk on a socketpair.

Windows and decay are tested at their edges by passing `now` to the Store API. The only real
waits are the storm quiet expiry, which is a Redis TTL: a store built with quiet_minutes=0.05
(3 s), waited for with a bounded poll.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from fake_asterisk import HANGUP, Channel, FakeAsterisk, by_verb, fastagi_env, run_direct, typed
from support import RedisServer, lines_config, wait_for

from callscreen import notify
from callscreen.config import Config, StormConfig
from callscreen.engine import Engine
from callscreen.rules import RuleSet
from callscreen.store import Record, Store, StoreFacts

LINE = "+33199000001"  # FR 01 99 00 00 01, the "home" line of the cfg fixture
LINE_US = "+12025550100"  # the "us-office" line
T0 = 1_780_000_000.0  # a fixed "now" (2026-05-28)
HOUR_S, DAY_S = 3600, 86400
DIGITS = "0123456789"


def unknown(i: int) -> str:
    """Distinct strangers, FR 03 53 01 xx xx (not neighbours of the line)."""
    return f"+3335301{i:04d}"


def seed(i: int) -> str:
    """Distinct baseline callers, FR 04 65 71 xx xx."""
    return f"+3346571{i:04d}"


def neighbour(i: int) -> str:
    """Neighbours of LINE, FR 01 99 00 xx xx (never 00 01, the line itself)."""
    assert i >= 2
    return f"+3319900{i:04d}"


def other(i: int) -> str:
    """Numbers that get reported, FR 05 36 49 xx xx."""
    return f"+3353649{i:04d}"


def rec(store: Store, number: str, now: float = T0) -> Record:
    return store.facts(number, None, now).record


def line_facts(store: Store, line: str, now: float = T0, number: str = unknown(9999)
               ) -> StoreFacts:
    return store.facts(number, line, now)


def call(store: Store, number: str, now: float, line: str = LINE, **kw: Any) -> str:
    """One unknown caller on the line (unless told otherwise): the storm transition."""
    kw.setdefault("unknown", True)
    return store.record_call(number, line, now, kw.pop("action", "allow"),
                             kw.pop("reason", "default"), **kw)



def with_storm(cfg: Config, **kw: Any) -> Config:
    return replace(cfg, storm=replace(cfg.storm, **kw))


@pytest.fixture
def quick_store(cfg: Config) -> Store:
    """Storms end after 3 quiet seconds (a real Redis TTL)."""
    return Store.from_config(with_storm(cfg, quiet_minutes=0.05))


# -- 1. storm detection --------------------------------------------------------------------------


def test_sixth_distinct_unknown_caller_starts_a_storm_on_that_line_only(store: Store) -> None:
    """5 distinct unknown callers in the window: no storm; the 6th starts one, for that line
    only, and the line's own number is flagged spoofed."""
    for i in range(1, 6):
        assert call(store, unknown(i), T0 + i) == ""
    assert not line_facts(store, LINE, T0 + 5).storm
    assert call(store, unknown(6), T0 + 6) == "started"
    assert line_facts(store, LINE, T0 + 7).storm
    assert not line_facts(store, LINE_US, T0 + 7).storm
    assert rec(store, LINE, T0 + 7).spoofed
    assert not rec(store, LINE_US, T0 + 7).spoofed
    state = store.storm_state(LINE)
    assert (float(state["started"]), state["forced"], state["callers"]) == (T0 + 6, "0", "6")
    assert 1790 <= int(state["ttl_s"]) <= 1800  # storm.quiet_minutes = 30
    assert store.storm_state(LINE_US) == {}
    # The line's own number stays flagged for reputation.spoofed_days.
    assert rec(store, LINE, T0 + 6 + 30 * DAY_S - 1).spoofed
    assert not rec(store, LINE, T0 + 6 + 30 * DAY_S).spoofed


def test_same_unknown_caller_twice_counts_once(store: Store) -> None:
    """A caller who rings back is still one caller."""
    for i in range(1, 6):
        assert call(store, unknown(i), T0 + i) == ""
    assert call(store, unknown(3), T0 + 10) == ""
    assert call(store, unknown(3), T0 + 11) == ""
    assert not line_facts(store, LINE, T0 + 12).storm
    assert call(store, unknown(6), T0 + 12) == "started"


def test_contacts_and_trusted_callers_never_count(store: Store) -> None:
    """unknown=False (contacts, trusted, allowlisted): however many, no storm."""
    for i in range(1, 6):
        assert call(store, unknown(i), T0 + i) == ""
    for i in range(10, 30):
        assert call(store, unknown(i), T0 + i, unknown=False) == ""
    assert not line_facts(store, LINE, T0 + 30).storm
    assert call(store, unknown(6), T0 + 31) == "started"


def test_callers_older_than_the_window_drop_out(store: Store) -> None:
    """Window 60 min: a caller exactly 3600 s old is out, one 3599 s old still counts."""
    for line in (LINE, LINE_US):
        for i in range(1, 6):
            assert call(store, unknown(i), T0 + (i - 1) * 60, line) == ""
    # First caller at T0: out of the window at T0 + 3600 ...
    assert call(store, unknown(6), T0 + HOUR_S, LINE) == ""
    assert not line_facts(store, LINE, T0 + HOUR_S).storm
    # ... still in it at T0 + 3599.
    assert call(store, unknown(6), T0 + HOUR_S - 1, LINE_US) == "started"


def test_busy_baseline_raises_the_bar(store: Store, cfg: Config) -> None:
    """A line that usually gets ~3 unknown callers an hour: 6 is no storm; factor x usual is.

    Buckets are seeded through record_call over the previous 7 days (2 to 167 hours ago, 3
    distinct callers each hour); the current window is empty of them.
    """
    hour = int(T0 // HOUR_S)
    now = hour * HOUR_S + 1800.0  # mid-hour: the burst stays in the current hour's bucket
    n = 0
    for back in range(167, 1, -1):  # oldest first, as time goes
        for minute in (0, 20, 40):
            n += 1
            assert call(store, seed(n), (hour - back) * HOUR_S + minute * 60) == ""
    assert not line_facts(store, LINE, now).storm
    usual = n / (cfg.storm.baseline_days * 24) * (cfg.storm.window_minutes / 60)
    needed = math.ceil(cfg.storm.factor * usual)
    assert needed == 9  # 498 callers / 168 h = 2.96 an hour, x 3
    for i in range(1, needed):
        assert call(store, unknown(i), now + i) == "", f"caller {i} of a {needed - 1} burst"
    assert not line_facts(store, LINE, now + needed).storm
    assert call(store, unknown(needed), now + needed) == "started"


def test_recurring_unknown_callers_count_in_the_baseline(store: Store) -> None:
    """The same 3 unknown callers every 20 minutes for a week are a busy line's usual rate."""
    hour = int(T0 // HOUR_S)
    now = hour * HOUR_S + 1800.0
    for back in range(167, 1, -1):  # oldest first, as time goes
        for minute in (0, 20, 40):
            for j in (1, 2, 3):
                assert call(store, seed(j), (hour - back) * HOUR_S + minute * 60 + j) == ""
    for i in range(1, 7):
        call(store, unknown(i), now + i)
    # 6 new unknown callers in the window (the regulars last called 2 h ago), against 3
    # distinct ones every hour usually: below factor 3 x usual (9), as with distinct seeds.
    assert not line_facts(store, LINE, now + 7).storm


def test_unknown_callers_refresh_the_quiet_ttl_known_callers_do_not(
        store: Store, rdb: redis.Redis) -> None:
    """During a storm each unknown caller renews the quiet TTL (storm.quiet_minutes)."""
    for i in range(1, 7):
        call(store, unknown(i), T0 + i)
    key = store.k_line(LINE, "storm")
    rdb.expire(key, 100)
    assert call(store, unknown(50), T0 + 60, unknown=False) == ""
    assert rdb.ttl(key) <= 100
    assert call(store, unknown(51), T0 + 61) == ""  # no second 'started' while it lasts
    assert 1790 <= rdb.ttl(key) <= 1800
    state = store.storm_state(LINE)
    assert float(state["last"]) == T0 + 61 and state["callers"] == "7"


def test_storm_ends_after_quiet_and_is_announced_once(quick_store: Store) -> None:
    """After quiet_minutes without unknown callers (a real TTL, 3 s here) the storm is over;
    the end is reported once: by the next call on the line (record_call -> 'ended') or by the
    maintenance check (storm_ended), never by both."""
    now = time.time()
    for line in (LINE, LINE_US):
        for i in range(1, 7):
            result = call(quick_store, unknown(i), now + i, line)
        assert result == "started"
    assert line_facts(quick_store, LINE, now).storm
    assert wait_for(lambda: not line_facts(quick_store, LINE, now).storm
                      and not line_facts(quick_store, LINE_US, now).storm)
    # LINE: the next call (a contact: any call) notices the end, once.
    assert call(quick_store, unknown(100), now + 10, unknown=False) == "ended"
    assert call(quick_store, unknown(101), now + 11, unknown=False) == ""
    assert quick_store.storm_ended(LINE) is False
    # LINE_US: the maintenance check notices it, once; the next call then says nothing.
    assert quick_store.storm_ended(LINE_US) is True
    assert quick_store.storm_ended(LINE_US) is False
    assert call(quick_store, unknown(100), now + 10, LINE_US, unknown=False) == ""


@pytest.mark.parametrize("noticed_by", ["call", "maintenance"])
def test_storm_does_not_restart_on_the_next_unknown_caller_after_ending(
        store: Store, rdb: redis.Redis, noticed_by: str) -> None:
    """After a storm ended quietly (noticed by the next call, or by the server's maintenance
    check), one new unknown caller 40 minutes later is not a new storm."""
    now = time.time()
    for i in range(1, 7):
        call(store, unknown(i), now + i)
    rdb.pexpire(store.k_line(LINE, "storm"), 1)  # the quiet TTL runs out
    assert wait_for(lambda: not line_facts(store, LINE, now).storm)
    if noticed_by == "call":
        assert call(store, unknown(20), now + 40 * 60, unknown=False) == "ended"
    else:
        assert store.storm_ended(LINE) is True
    assert call(store, unknown(21), now + 41 * 60) == ""
    assert not line_facts(store, LINE, now + 41 * 60).storm


def test_forced_storm_keeps_max_hours_and_stops_on_demand(store: Store, rdb: redis.Redis) -> None:
    """storm_start: TTL storm.max_hours, not shortened by callers; storm_stop ends it silently."""
    store.storm_start(LINE, T0)
    key = store.k_line(LINE, "storm")
    assert line_facts(store, LINE).storm and not line_facts(store, LINE_US).storm
    assert 24 * HOUR_S - 10 <= rdb.ttl(key) <= 24 * HOUR_S
    state = store.storm_state(LINE)
    assert (state["forced"], state["callers"], float(state["started"])) == ("1", "0", T0)
    assert call(store, unknown(1), T0 + 5) == ""
    assert rdb.ttl(key) > 1800  # not cut down to quiet_minutes
    assert store.storm_state(LINE)["callers"] == "1"
    assert store.storm_stop(LINE) is True
    assert not line_facts(store, LINE).storm
    assert store.storm_state(LINE) == {}
    assert store.storm_stop(LINE) is False
    assert store.storm_ended(LINE) is False  # a stop is not announced again as an end
    assert call(store, unknown(2), T0 + 6) == ""


def test_storm_evidence_order_and_content(store: Store, rdb: redis.Redis) -> None:
    """Oldest first, one dict per call; labels lose the separator; no number -> anonymous."""
    store.storm_evidence_add(LINE, unknown(1), T0, "callscreen/storm-explain", "pressed-1:allow")
    store.storm_evidence_add(LINE, None, T0 + 60, "beep", "abandon:voicemail")
    store.storm_evidence_add(LINE, unknown(2), T0 + 120.4, "be|ep", "no-key:voicemail")
    assert store.storm_evidence(LINE) == [
        {"time": "1780000000", "caller": unknown(1), "heard": "callscreen/storm-explain",
         "outcome": "pressed-1:allow"},
        {"time": "1780000060", "caller": "anonymous", "heard": "beep",
         "outcome": "abandon:voicemail"},
        {"time": "1780000120", "caller": unknown(2), "heard": "beep",
         "outcome": "no-key:voicemail"},
    ]
    assert store.storm_evidence(LINE_US) == []
    assert 89 * DAY_S < rdb.ttl(store.k_line(LINE, "storm:ev")) <= 90 * DAY_S


# -- 2. engine and notices -----------------------------------------------------------------------


class NoticeSpy:
    """Wraps notify.storm: keeps (state, line, callers) and the background threads."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.threads: list[threading.Thread] = []
        self.real = notify.storm

    def __call__(self, cfg: StormConfig, state: str, line: str, callers: int = 0
                 ) -> threading.Thread:
        self.calls.append((state, line, callers))
        thread = self.real(cfg, state, line, callers)
        self.threads.append(thread)
        return thread

    def join(self) -> None:
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()


@pytest.fixture
def notices(monkeypatch: pytest.MonkeyPatch) -> Iterator[NoticeSpy]:
    spy = NoticeSpy()
    monkeypatch.setattr(notify, "storm", spy)
    yield spy
    spy.join()


def decide_and_record(engine: Engine, number: str, at: float) -> None:
    line = engine.cfg.line_for(LINE)
    call_ = engine.make_call(number, line, dt.datetime.fromtimestamp(at, dt.UTC))
    assert engine.record(engine.decide(call_))


def test_engine_announces_storm_start_and_end(engine: Engine, rdb: redis.Redis,
                                              notices: NoticeSpy,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """engine.record: the 6th unknown caller logs a WARNING "callback storm STARTED on line ..."
    and the notice carries the caller count; the first call after the end announces the end."""
    caplog.set_level(logging.INFO)
    now = time.time()
    for i in range(1, 6):
        decide_and_record(engine, unknown(i), now + i)
    assert notices.calls == []
    decide_and_record(engine, unknown(6), now + 6)
    assert notices.calls == [("start", LINE, 6)]
    started = [r for r in caplog.records if "callback storm STARTED" in r.getMessage()]
    assert len(started) == 1 and started[0].levelno == logging.WARNING
    assert started[0].getMessage() == (
        f"callback storm STARTED on line {LINE} (6 unknown callers in the window)")
    assert engine.store is not None
    storm_key = engine.store.k_line(LINE, "storm")
    rdb.pexpire(storm_key, 1)
    assert wait_for(lambda: not rdb.exists(storm_key))
    decide_and_record(engine, unknown(7), now + 7)
    assert notices.calls[1:] == [("end", LINE, 0)]
    assert any(r.getMessage().startswith(f"callback storm ended on line {LINE}")
               for r in caplog.records)


@pytest.mark.parametrize("state", ["start", "end"])
def test_notify_command_gets_the_event_in_its_environment(tmp_path: Path, state: str) -> None:
    """notify_command runs (no shell) with CALLSCREEN_EVENT/LINE/CALLERS in its environment."""
    out = tmp_path / "env.txt"
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\nenv | grep '^CALLSCREEN_' | sort > \"$1\"\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    cfg = StormConfig(notify_command=(str(script), str(out)))
    thread = notify.storm(cfg, state, LINE, 7)
    thread.join(10)
    assert not thread.is_alive()
    assert out.read_text(encoding="utf-8").splitlines() == [
        "CALLSCREEN_CALLERS=7", f"CALLSCREEN_EVENT=storm-{state}", f"CALLSCREEN_LINE={LINE}"]


class FakeAMI:
    """Asterisk's manager side, just enough of it: the banner, then the replies once Logoff
    has arrived (the client sends Login, UserEvent and Logoff without waiting)."""

    def __init__(self, auth_ok: bool = True):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.auth_ok = auth_ok
        self.data = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"ami://callscreen:s3cret@127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            conn.sendall(b"Asterisk Call Manager/9.0.0\r\n")
            while b"Action: Logoff\r\n\r\n" not in self.data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.data += chunk
            login = (b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
                     if self.auth_ok else
                     b"Response: Error\r\nMessage: Authentication failed\r\n\r\n")
            conn.sendall(login + b"Response: Success\r\n\r\n"
                         + b"Response: Goodbye\r\nMessage: Thanks for all the fish.\r\n\r\n")
        self.listener.close()

    def blocks(self) -> list[list[tuple[str, str]]]:
        self.thread.join(10)
        out = []
        for block in self.data.decode("utf-8").split("\r\n\r\n"):
            if block:
                out.append([(k, v) for k, _, v in (ln.partition(": ")
                                                   for ln in block.split("\r\n"))])
        return out


def test_ami_user_event_logs_in_and_sends_the_event() -> None:
    """Login with the URL's account, UserEvent CallscreenStorm with Line/State/Callers, Logoff."""
    ami = FakeAMI()
    assert notify.ami_user_event(ami.url, {"Line": LINE, "State": "start", "Callers": "6"})
    assert ami.blocks() == [
        [("Action", "Login"), ("Username", "callscreen"), ("Secret", "s3cret"),
         ("Events", "off")],
        [("Action", "UserEvent"), ("UserEvent", "CallscreenStorm"), ("Line", LINE),
         ("State", "start"), ("Callers", "6")],
        [("Action", "Logoff")],
    ]


def test_ami_header_values_cannot_inject_headers_or_actions() -> None:
    """CR/LF in a value are dropped: the value stays on its own header line."""
    ami = FakeAMI()
    hostile = f"{LINE}\r\nAction: Originate\r\n\r\nAction: Command\r\nCommand: core stop now"
    assert notify.ami_user_event(ami.url, {"Line": hostile, "State": "start\n", "Callers": "6"})
    blocks = ami.blocks()
    assert [b[0] for b in blocks] == [("Action", "Login"), ("Action", "UserEvent"),
                                      ("Action", "Logoff")]
    event = dict(blocks[1])
    assert list(event) == ["Action", "UserEvent", "Line", "State", "Callers"]
    assert event["Line"].startswith(LINE + "Action: Originate")
    assert len(event["Line"]) <= 64 and event["State"] == "start"


def test_ami_refused_login_or_bad_url_is_false() -> None:
    """A refused login and a malformed URL report failure (and never raise)."""
    ami = FakeAMI(auth_ok=False)
    assert notify.ami_user_event(ami.url, {"Line": LINE}) is False
    ami.thread.join(10)
    assert notify.ami_user_event("http://user:pw@127.0.0.1:5038", {"Line": LINE}) is False


def test_storm_notice_goes_to_ami() -> None:
    """notify.storm with notify_ami raises the UserEvent in its background thread."""
    ami = FakeAMI()
    thread = notify.storm(StormConfig(notify_ami=ami.url), "end", LINE_US, 0)
    thread.join(10)
    event = dict(ami.blocks()[1])
    assert (event["Line"], event["State"], event["Callers"]) == (LINE_US, "end", "0")


# -- 3. votes ------------------------------------------------------------------------------------


def test_one_vote_per_reporter_per_vote_window(store: Store) -> None:
    """vote_window_days = 30: a second vote 1 s before the window is over is a repeat; at the
    window it counts again (reports +1, reporters unchanged)."""
    n = other(1)
    assert store.vote(n, LINE, T0)[0] is True
    assert store.vote(n, LINE, T0 + 30 * DAY_S - 1) == (False, "repeat")
    r = rec(store, n, T0 + 30 * DAY_S)
    assert (r.reports, r.reporters, r.pbxs) == (1, 1, 1)
    counted, score = store.vote(n, LINE, T0 + 30 * DAY_S)
    assert counted and float(score) == pytest.approx(25 * 0.5 + 25)  # one half-life later
    r = rec(store, n, T0 + 30 * DAY_S)
    assert (r.reports, r.reporters, r.pbxs) == (2, 1, 1)
    assert store.vote(n, LINE, T0 + 31 * DAY_S) == (False, "repeat")


def test_reporter_rate_per_hour(store: Store) -> None:
    """A line counts at most 20 distinct reports an hour; admin and imports are not limited."""
    for i in range(20):
        assert store.vote(other(i), LINE, T0)[0] is True, i
    assert store.vote(other(0), LINE, T0) == (False, "repeat")
    assert store.vote(other(20), LINE, T0) == (False, "rate-limited")
    assert rec(store, other(20)) == Record()
    assert store.vote(other(20), LINE_US, T0)[0] is True  # another line has its own budget
    for i in range(25):
        assert store.vote(other(100 + i), "admin", T0)[0] is True
        assert store.vote(other(200 + i), "src:ftc-dnc", T0)[0] is True


def test_reports_count_distinct_pbxs(store: Store, cfg: Config) -> None:
    """Two lines of one PBX are one PBX; the same line number on another PBX makes two."""
    n = other(1)
    store.vote(n, LINE, T0)
    store.vote(n, LINE_US, T0)
    r = rec(store, n)
    assert (r.reports, r.reporters, r.pbxs) == (2, 2, 1)
    remote = Store.from_config(replace(cfg, pbx_id="other"), store.r)
    assert remote.vote(n, LINE, T0)[0] is True
    store.vote(n, "admin", T0)
    r = rec(store, n)
    assert (r.reports, r.reporters, r.pbxs) == (4, 4, 2)
    assert store.show(n, None, T0)["reporters"] == [
        "admin", f"local/{LINE_US}", f"local/{LINE}", f"other/{LINE}"]


def test_reporter_rollback_undoes_a_lines_votes(store: Store, rdb: redis.Redis) -> None:
    """Rollback one half-life later: what the other reporters left stays (decayed), the line's
    votes are gone with their counts and log, and a second rollback undoes nothing."""
    n1, n2, n3 = other(1), other(2), other(3)
    store.vote(n1, LINE, T0)
    store.vote(n2, LINE, T0)
    store.vote(n1, LINE_US, T0)
    store.vote(n3, "admin", T0)
    later = T0 + 30 * DAY_S
    assert rec(store, n1, later).score == pytest.approx(25.0)
    assert store.reporter_rollback(LINE, later) == 2
    r1, r2, r3 = rec(store, n1, later), rec(store, n2, later), rec(store, n3, later)
    assert r1.score == pytest.approx(12.5, abs=0.01)  # LINE_US's 25, one half-life later
    assert (r1.reports, r1.reporters) == (1, 1)
    assert store.show(n1, None, later)["reporters"] == [f"local/{LINE_US}"]
    assert (r2.score, r2.reports, r2.reporters) == (0.0, 0, 0)
    assert r3.score == pytest.approx(20.0, abs=0.01) and r3.reports == 1  # untouched
    assert rdb.exists(store.k_reporter_log(f"local/{LINE}")) == 0
    assert store.reporter_rollback(LINE, later) == 0
    assert rec(store, n1, later).reports == 1
    assert store.vote(n1, LINE, later)[0] is True  # the line may vote again


def test_rollback_of_a_vote_counted_twice(store: Store) -> None:
    """Two counted votes (30 days apart) on one number: both undone, the reporter once."""
    n = other(1)
    store.vote(n, LINE, T0)
    store.vote(n, LINE, T0 + 30 * DAY_S)
    assert store.reporter_rollback(LINE, T0 + 30 * DAY_S) == 2
    r = rec(store, n, T0 + 30 * DAY_S)
    assert (r.score, r.reports, r.reporters) == (0.0, 0, 0)


def test_admin_rollback(store: Store) -> None:
    store.vote(other(1), "admin", T0)
    assert rec(store, other(1)).score == 40.0
    assert store.reporter_rollback("admin", T0) == 1
    assert rec(store, other(1)).score == 0.0


def test_rollback_of_a_pbxs_only_reporter_removes_the_pbx(store: Store, cfg: Config) -> None:
    n = other(1)
    remote = Store.from_config(replace(cfg, pbx_id="other"), store.r)
    store.vote(n, LINE, T0)
    remote.vote(n, LINE, T0)
    assert rec(store, n).pbxs == 2
    assert store.reporter_rollback(LINE, T0) == 1
    r = rec(store, n)
    assert (r.reporters, r.reports) == (1, 1)
    assert r.pbxs == 1  # only "other" still reports it


def test_import_reports_is_one_idempotent_vote(store: Store) -> None:
    """An imported list weighs like one reporter, counted once."""
    numbers = [other(1), other(2)]
    assert store.import_reports(numbers, "ftc-dnc", T0, 30.0) == (2, 0)
    assert store.import_reports(numbers, "ftc-dnc", T0 + DAY_S, 30.0) == (0, 2)
    r = rec(store, other(1))
    assert (r.score, r.reports, r.reporters, r.pbxs) == (30.0, 1, 1, 0)


def test_rollback_of_an_import_source(store: Store) -> None:
    numbers = [other(1), other(2)]
    store.vote(other(1), LINE, T0)
    assert store.import_reports(numbers, "ftc-dnc", T0, 30.0) == (2, 0)
    assert store.reporter_rollback("src:ftc-dnc", T0) == 2
    assert rec(store, other(2)).score == 0.0
    r1 = rec(store, other(1))
    assert (r1.score, r1.reports, r1.reporters) == (25.0, 1, 1)


def test_a_whole_import_source_rolls_back(store: Store, rdb: redis.Redis) -> None:
    """Rolling back a large import undoes every number it brought, and only its votes."""
    numbers = [f"+1202555{i:04d}" for i in range(10_050)]
    assert store.import_reports(numbers, "big", T0, 30.0) == (10_050, 0)
    assert store.import_reports(numbers[:10], "small", T0, 30.0) == (10, 0)
    assert store.reporter_rollback("src:big", T0) == 10_050
    assert rec(store, numbers[-1]).score == 0.0
    assert (rec(store, numbers[0]).score, rec(store, numbers[0]).reporters) == (30.0, 1)
    assert store.reporter_rollback("src:big", T0) == 0


def test_a_late_event_does_not_rewind_the_decay_clock(store: Store) -> None:
    """An event stamped before the record's last update (another PBX's late write) adds what is
    left of its weight, without moving the decay clock back (no hour decayed twice)."""
    n = other(1)
    store.vote(n, LINE, T0 + 30 * DAY_S)  # 25 at T0 + 30 days
    store.vote(n, LINE_US, T0)  # 25 stamped one half-life earlier: 12.5 left
    assert rec(store, n, T0 + 30 * DAY_S).score == pytest.approx(37.5, abs=0.01)
    assert rec(store, n, T0 + 60 * DAY_S).score == pytest.approx(18.75, abs=0.01)


# -- AGI helpers ---------------------------------------------------------------------------------


def agi_env(caller: str, route: str = "screen", args: tuple[str, ...] = ("0199000001",),
            **channel: Any) -> bytes:
    return fastagi_env(route, args, Channel(callerid=caller, **channel))


def report_last_caller(engine: Engine, line: str = LINE) -> FakeAsterisk:
    outcome, peer = run_direct(engine, agi_env(line, route="report", args=(line,)))
    assert outcome.ok
    return peer


def now_rec(engine: Engine, number: str) -> Record:
    assert engine.store is not None
    return rec(engine.store, number, time.time())


# -- 4. reports through the handler --------------------------------------------------------------


@pytest.mark.parametrize(("attestation", "weight"), [
    ("unknown", 25.0), ("A", 25.0), ("B", 25.0), ("C", 12.5), ("failed", 6.25)])
def test_report_weight_follows_the_attestation(engine: Engine, attestation: str,
                                               weight: float) -> None:
    """*60: full weight, half for attestation C, a quarter for a failed verification."""
    assert engine.store is not None
    engine.store.record_call(unknown(1), LINE, time.time(), "allow", "default",
                             attestation=attestation)
    peer = report_last_caller(engine)
    assert peer.variables == {"CALLSCREEN_RESULT": "ok"}
    r = now_rec(engine, unknown(1))
    assert r.reports == 1 and r.score == pytest.approx(weight, abs=0.01)


def test_report_after_a_screened_c_attested_call_weighs_half(engine: Engine) -> None:
    """The attestation given to the screen route (2nd argument) is what *60 weighs."""
    run_direct(engine, agi_env(unknown(1), args=("0199000001", "c")))
    report_last_caller(engine)
    assert now_rec(engine, unknown(1)).score == pytest.approx(12.5, abs=0.01)


def test_report_of_a_storm_caller_is_not_counted(engine: Engine) -> None:
    """A caller who called during a storm is a victim too: *60 answers ok but counts nothing."""
    assert engine.store is not None
    engine.store.record_call(unknown(1), LINE, time.time(), "voicemail", "storm", unknown=True)
    peer = report_last_caller(engine)
    assert peer.variables == {"CALLSCREEN_RESULT": "ok"}
    r = now_rec(engine, unknown(1))
    assert (r.reports, r.reporters, r.score) == (0, 0, 0.0)


def test_report_of_a_caller_screened_during_a_storm(engine: Engine) -> None:
    """Through the handlers: a storm caller goes to voicemail, then *60 does not count him."""
    assert engine.store is not None
    engine.store.storm_start(LINE, time.time())
    outcome, peer = run_direct(engine, agi_env(unknown(1)))
    assert peer.screen_vars()["SCREEN_REASON"] == "storm"
    report_last_caller(engine)
    assert now_rec(engine, unknown(1)).reports == 0


@pytest.mark.parametrize(("age_s", "result"), [(59 * 60, "ok"), (61 * 60, "none")])
def test_report_window(engine: Engine, age_s: int, result: str) -> None:
    """features.report_window_minutes = 60: an older last caller is not reported."""
    assert engine.store is not None
    engine.store.record_call(unknown(1), LINE, time.time() - age_s, "allow", "default")
    peer = report_last_caller(engine)
    assert peer.variables == {"CALLSCREEN_RESULT": result}
    assert now_rec(engine, unknown(1)).reports == (1 if result == "ok" else 0)


# -- 5. learning ---------------------------------------------------------------------------------


def test_lines_called_counts_distinct_lines_in_the_velocity_window(store: Store) -> None:
    n = unknown(1)
    store.record_call(n, LINE, T0, "allow", "default")
    store.record_call(n, LINE_US, T0 + 10, "allow", "default")
    store.record_call(n, LINE, T0 + 20, "allow", "default")
    f = store.facts(n, LINE, T0 + 30)
    assert (f.lines_called, f.velocity) == (2, 3)
    # LINE_US at T0 + 10 leaves the 60-minute window after T0 + 3610.
    assert store.facts(n, LINE, T0 + 10 + HOUR_S).lines_called == 2
    assert store.facts(n, LINE, T0 + 11 + HOUR_S).lines_called == 1
    assert store.facts(n, LINE, T0 + 21 + HOUR_S).lines_called == 0
    assert store.facts(unknown(2), LINE, T0 + 30).lines_called == 0


def test_neighbour_bursts_count_per_line_and_age_out(store: Store) -> None:
    """Distinct neighbour-prefix callers of one line within neighbour_burst_window_minutes."""
    for i in range(2, 6):
        store.record_call(neighbour(i), LINE, T0 + i, "allow", "default", neighbour=True)
    store.record_call(neighbour(5), LINE, T0 + 6, "allow", "default", neighbour=True)
    store.record_call(unknown(1), LINE, T0 + 7, "allow", "default")  # not a neighbour
    assert line_facts(store, LINE, T0 + 10).neighbour_burst == 4
    assert line_facts(store, LINE_US, T0 + 10).neighbour_burst == 0
    # neighbour(2) called at T0 + 2: in the window up to T0 + 3602, out after.
    assert line_facts(store, LINE, T0 + 2 + HOUR_S).neighbour_burst == 4
    assert line_facts(store, LINE, T0 + 3 + HOUR_S).neighbour_burst == 3
    assert line_facts(store, LINE, T0 + 6 + HOUR_S).neighbour_burst == 1  # neighbour(5) again
    assert line_facts(store, LINE, T0 + 7 + HOUR_S).neighbour_burst == 0


def test_neighbour_burst_through_the_engine_scores(engine: Engine) -> None:
    """The engine flags neighbours itself; 4 distinct ones give the next one +20."""
    for i in range(2, 6):
        decide_and_record(engine, neighbour(i), T0 + i)
    line = engine.cfg.line_for(LINE)
    decision = engine.decide(engine.make_call(neighbour(6), line,
                                              dt.datetime.fromtimestamp(T0 + 10, dt.UTC)))
    assert decision.facts is not None and decision.facts.neighbour_burst == 4
    assert decision.verdict.score == 20
    assert decision.verdict.rule == "neighbour-spoofing"


@pytest.fixture
def grey_cfg(cfg: Config) -> Config:
    return replace(cfg, learning=replace(cfg.learning, greylist_minutes=10))


@pytest.mark.parametrize(("action", "reason", "greylisted"), [
    ("voicemail", "reputation", True), ("voicemail", "score", True),
    ("voicemail", "challenge-failed", False), ("voicemail", "telemarketing", False),
    ("allow", "reputation", False)])
def test_greylist_only_after_voicemail_by_reputation(grey_cfg: Config, action: str, reason: str,
                                                     greylisted: bool) -> None:
    """greylist_minutes = 10: True at 9:59 after voicemail by reputation/score, False at 10:01."""
    store = Store.from_config(grey_cfg)
    n = unknown(1)
    store.record_call(n, LINE, T0, action, reason)
    assert line_facts(store, LINE, T0 + 599, n).recent_voicemail is greylisted
    assert line_facts(store, LINE, T0 + 601, n).recent_voicemail is False
    assert line_facts(store, LINE_US, T0 + 1, n).recent_voicemail is False
    assert line_facts(store, LINE, T0 + 1, unknown(2)).recent_voicemail is False


def test_greylist_off_by_default(store: Store) -> None:
    store.record_call(unknown(1), LINE, T0, "voicemail", "reputation")
    assert line_facts(store, LINE, T0 + 1, unknown(1)).recent_voicemail is False


def test_greylist_retry_with_the_shipped_rules(grey_cfg: Config,
                                               shipped_rules: RuleSet) -> None:
    """A bad-reputation caller sent to voicemail who retries within 10 minutes rings."""
    eng = Engine(grey_cfg, shipped_rules, Store.from_config(grey_cfg))
    assert eng.store is not None
    n = unknown(1)
    eng.store.vote(n, "admin", T0)
    eng.store.vote(n, LINE_US, T0)
    line = grey_cfg.line_for(LINE)

    def decide(at: float) -> Any:
        return eng.decide(eng.make_call(n, line, dt.datetime.fromtimestamp(at, dt.UTC)))

    first = decide(T0 + 60)
    assert (first.verdict.action, first.verdict.rule) == ("voicemail", "bad-reputation")
    assert eng.record(first)
    retry = decide(T0 + 60 + 300)
    assert (retry.verdict.action, retry.verdict.rule) == ("allow", "greylist-retry")
    late = decide(T0 + 60 + 601)
    assert (late.verdict.action, late.verdict.rule) == ("voicemail", "bad-reputation")


# -- 6. emergency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dialled", ["112", "15"])
def test_learn_emergency_number_fr(engine: Engine, rdb: redis.Redis, dialled: str) -> None:
    """The outbound hook sees 112 or 15: CALLSCREEN_RESULT emergency, then emergency for ~2 h."""
    assert engine.store is not None
    outcome, peer = run_direct(engine, agi_env(LINE, route="learn", args=(dialled,)))
    assert outcome.ok and peer.variables == {"CALLSCREEN_RESULT": "emergency"}
    assert line_facts(engine.store, LINE, time.time()).emergency
    assert line_facts(engine.store, LINE_US, time.time()).emergency  # the whole PBX
    assert 120 * 60 - 10 <= rdb.ttl(engine.store.k_emergency()) <= 120 * 60
    assert str(rdb.get(engine.store.k_emergency())).endswith("|" + dialled)
    assert engine.store.facts(None, LINE, time.time()).emergency  # anonymous callers too


def test_learn_911_on_a_us_pbx(redis_server: RedisServer, rdb: redis.Redis,
                               shipped_rules: RuleSet) -> None:
    us = lines_config(redis_server.url, "region: US\nlines:\n"
                      "  - {number: '+12025550100', name: office, timezone: America/New_York}\n")
    eng = Engine(us, shipped_rules, Store.from_config(us))
    outcome, peer = run_direct(eng, agi_env(LINE_US, route="learn", args=("911",)))
    assert peer.variables == {"CALLSCREEN_RESULT": "emergency"}
    assert eng.store is not None and line_facts(eng.store, LINE_US, time.time()).emergency


def test_911_is_not_an_emergency_number_in_france(engine: Engine, rdb: redis.Redis) -> None:
    assert engine.store is not None
    outcome, peer = run_direct(engine, agi_env(LINE, route="learn", args=("911",)))
    assert peer.variables == {"CALLSCREEN_RESULT": "none"}
    assert rdb.exists(engine.store.k_emergency()) == 0


def test_learn_a_normal_number_is_a_contact_not_an_emergency(engine: Engine,
                                                             rdb: redis.Redis) -> None:
    assert engine.store is not None
    outcome, peer = run_direct(engine, agi_env(LINE, route="learn", args=("0261910012",)))
    assert peer.variables == {"CALLSCREEN_RESULT": "ok"}
    f = engine.store.facts("+33261910012", LINE, time.time())
    assert f.contact and not f.emergency
    assert rdb.exists(engine.store.k_emergency()) == 0


def test_emergency_callback_beats_the_blocklist_until_it_expires(engine: Engine,
                                                                 rdb: redis.Redis) -> None:
    """emergency-callback (00-emergency) comes before the blocklist; once the key's TTL ran out
    the blocklist applies again."""
    assert engine.store is not None
    n = unknown(1)
    engine.store.list_add("block", n, None, None, "test")
    line = engine.cfg.line_for(LINE)

    def verdict() -> tuple[str, str]:
        v = engine.decide(engine.make_call(n, line)).verdict
        return v.action, v.rule

    assert verdict() == ("block", "blocklist")
    engine.store.emergency_start(time.time(), 1, "112")
    assert 50 <= rdb.ttl(engine.store.k_emergency()) <= 60
    assert verdict() == ("allow", "emergency-callback")
    key = engine.store.k_emergency()
    rdb.pexpire(key, 1)  # the minute is over
    assert wait_for(lambda: not rdb.exists(key))
    assert verdict() == ("block", "blocklist")


# -- 7. spoofed numbers ---------------------------------------------------------------------------


def test_set_spoofed_until_expiry_and_clear(store: Store) -> None:
    n = other(1)
    store.set_spoofed(n, T0 + HOUR_S)
    assert rec(store, n, T0).spoofed
    assert rec(store, n, T0 + HOUR_S - 1).spoofed
    assert not rec(store, n, T0 + HOUR_S).spoofed
    store.set_spoofed(n, None)
    assert not rec(store, n, T0).spoofed
    store.set_spoofed(n, None)  # clearing twice is fine
    assert rec(store, n, T0) == Record()


def test_spoofed_reported_number_is_challenged_not_sent_to_voicemail(engine: Engine,
                                                                     cfg: Config) -> None:
    """5 reports: bad-reputation voicemail; flagged spoofed: spoofed-number challenge instead."""
    assert engine.store is not None
    n = unknown(42)
    now = time.time()
    remote = Store.from_config(replace(cfg, pbx_id="other"), engine.store.r)
    for reporter in (LINE, LINE_US, "admin", "src:ftc-dnc"):
        assert engine.store.vote(n, reporter, now)[0]
    assert remote.vote(n, LINE, now)[0]
    r = now_rec(engine, n)
    assert (r.reports, r.reporters, r.pbxs) == (5, 5, 2)
    line = engine.cfg.line_for(LINE)
    v = engine.decide(engine.make_call(n, line)).verdict
    assert (v.action, v.rule, v.reason) == ("voicemail", "bad-reputation", "reputation")
    engine.store.set_spoofed(n, now + DAY_S)
    v = engine.decide(engine.make_call(n, line)).verdict
    assert (v.action, v.rule, v.reason, v.challenge) == (
        "challenge", "spoofed-number", "spoofed", "digits")


# -- 8. the storm prompt through the handler ------------------------------------------------------


def storm_engine(cfg: Config, shipped_rules: RuleSet, sounds: Path, **storm: Any) -> Engine:
    cfg = replace(cfg, challenge=replace(cfg.challenge, sounds_dir=str(sounds)))
    if storm:
        cfg = with_storm(cfg, **storm)
    eng = Engine(cfg, shipped_rules, Store.from_config(cfg))
    assert eng.store is not None
    eng.store.storm_start(LINE, time.time())
    return eng


def evidence(eng: Engine) -> list[tuple[str, str, str]]:
    assert eng.store is not None
    return [(e["caller"], e["heard"], e["outcome"]) for e in eng.store.storm_evidence(LINE)]


def test_storm_caller_hears_the_beep_fallback_and_presses_1(cfg: Config, shipped_rules: RuleSet,
                                                           tmp_path: Path) -> None:
    """ANSWER, STREAM FILE (no storm prompt installed: beep) with every digit as escape, GET
    DATA for one digit; '1' -> allow, reason storm; evidence pressed-1:allow."""
    eng = storm_engine(cfg, shipped_rules, tmp_path)
    outcome, peer = run_direct(eng, agi_env(unknown(1)), by_verb({"GET DATA": typed("1")}))
    assert outcome.ok
    assert peer.verbs == ["ANSWER", "STREAM FILE", "GET DATA", "SET VARIABLE"]
    assert peer.commands[1].argv[2:] == ["beep", DIGITS]
    assert peer.commands[2].argv[2:] == ["beep", str(cfg.challenge.timeout_ms), "1"]
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"], v["SCREEN_RULE"], v["SCREEN_NUMBER"]) == (
        "allow", "storm", "callback-storm", unknown(1))
    assert evidence(eng) == [(unknown(1), "beep", "pressed-1:allow")]
    assert eng.store is not None
    last = eng.store.last_caller(LINE)
    assert last is not None and last[1:] == (unknown(1), "allow", "storm")


def test_storm_prompt_when_installed_and_1_during_it(cfg: Config, shipped_rules: RuleSet,
                                                     tmp_path: Path) -> None:
    """Our storm-explain prompt when it exists; '1' typed during it skips GET DATA."""
    (tmp_path / "en" / "callscreen").mkdir(parents=True)
    (tmp_path / "en" / "callscreen" / "storm-explain.gsm").write_bytes(b"\0" * 33)
    eng = storm_engine(cfg, shipped_rules, tmp_path)
    respond = by_verb({"STREAM FILE": "200 result=49 endpos=4000"})
    outcome, peer = run_direct(eng, agi_env(unknown(1)), respond)
    assert peer.verbs == ["ANSWER", "STREAM FILE", "SET VARIABLE"]
    assert peer.commands[1].argv[2:] == ["callscreen/storm-explain", DIGITS]
    assert peer.screen_vars()["SCREEN_ACTION"] == "allow"
    assert evidence(eng) == [(unknown(1), "callscreen/storm-explain", "pressed-1:allow")]


def test_storm_caller_pressing_nothing_or_another_key_goes_to_voicemail(
        cfg: Config, shipped_rules: RuleSet, tmp_path: Path) -> None:
    eng = storm_engine(cfg, shipped_rules, tmp_path)
    outcome, peer = run_direct(eng, agi_env(unknown(1)))  # GET DATA times out
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"]) == ("voicemail", "storm")
    outcome, peer = run_direct(eng, agi_env(unknown(2)), by_verb({"GET DATA": typed("2")}))
    assert peer.screen_vars()["SCREEN_ACTION"] == "voicemail"
    assert evidence(eng) == [(unknown(1), "beep", "no-key:voicemail"),
                             (unknown(2), "beep", "no-key:voicemail")]


def test_storm_press1_voicemail_policy(cfg: Config, shipped_rules: RuleSet,
                                       tmp_path: Path) -> None:
    """storm.press1 = voicemail: even '1' goes to voicemail."""
    eng = storm_engine(cfg, shipped_rules, tmp_path, press1="voicemail")
    outcome, peer = run_direct(eng, agi_env(unknown(1)), by_verb({"GET DATA": typed("1")}))
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"]) == ("voicemail", "storm")
    assert evidence(eng) == [(unknown(1), "beep", "pressed-1:voicemail")]


def test_storm_caller_hanging_up_during_the_prompt(cfg: Config, shipped_rules: RuleSet,
                                                   tmp_path: Path) -> None:
    """Hangup: no variable set on a dead channel; evidence abandon:voicemail."""
    eng = storm_engine(cfg, shipped_rules, tmp_path)
    outcome, peer = run_direct(eng, agi_env(unknown(1)), by_verb({"STREAM FILE": HANGUP}))
    assert peer.verbs == ["ANSWER", "STREAM FILE"]
    assert peer.variables == {}
    assert evidence(eng) == [(unknown(1), "beep", "abandon:voicemail")]


def test_anonymous_caller_during_a_storm(cfg: Config, shipped_rules: RuleSet,
                                         tmp_path: Path) -> None:
    """No number: still the storm explanation; evidence says anonymous."""
    eng = storm_engine(cfg, shipped_rules, tmp_path)
    outcome, peer = run_direct(eng, agi_env("unknown", callingpres=32),
                               by_verb({"GET DATA": typed("1")}))
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_RULE"], v["SCREEN_NUMBER"]) == (
        "allow", "callback-storm", "anonymous")
    assert evidence(eng) == [("anonymous", "beep", "pressed-1:allow")]


def test_contact_during_a_storm_rings_without_a_prompt(cfg: Config, shipped_rules: RuleSet,
                                                       tmp_path: Path) -> None:
    eng = storm_engine(cfg, shipped_rules, tmp_path)
    assert eng.store is not None
    eng.store.add_contact(LINE, unknown(1), time.time(), DAY_S)
    outcome, peer = run_direct(eng, agi_env(unknown(1)))
    assert peer.verbs == ["SET VARIABLE"]
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_RULE"]) == ("allow", "known-contact")
    assert evidence(eng) == []
    assert eng.store.storm_state(LINE)["callers"] == "0"  # a contact is not a storm caller
