"""`callscreen storm|spoofed|reporter` through click's CliRunner, on the real session Redis.

Exit codes: 0 done, 2 bad input with nothing written (checked with DBSIZE before and after).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from support import RedisServer, lines_config

from callscreen import cli
from callscreen.store import Store

REPO = Path(__file__).resolve().parent.parent
LINE = "+33199000001"
LINE_US = "+12025550100"
CALLER = "+33261910001"  # FR 02 61 91 00 01
T0 = 1_780_000_000.0
YAML = (
    "region: FR\n"
    "lines:\n"
    "  - {number: '01 99 00 00 01', name: home, timezone: Europe/Paris}\n"
    "  - {number: '+12025550100', name: us-office, timezone: America/New_York}\n"
)

Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path, redis_server: RedisServer, rdb: redis.Redis) -> Run:
    conf = tmp_path / "callscreen.yaml"
    conf.write_text(f"redis: {{url: '{redis_server.url}'}}\nrules_dir: {REPO / 'rules'}\n" + YAML,
                    encoding="utf-8")
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli.main, ["--config", str(conf), *args])

    return invoke


@pytest.fixture
def store(redis_server: RedisServer, rdb: redis.Redis) -> Store:
    """The store the CLI sees (same Redis, same prefix, pbx_id local)."""
    return Store.from_config(lines_config(redis_server.url, YAML))


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def refused(run: Run, rdb: redis.Redis, *args: str) -> Result:
    """Bad input: exit 2, nothing written."""
    before = rdb.dbsize()
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert rdb.dbsize() == before
    return result


def test_storm_start_status_stop(run: Run, store: Store, rdb: redis.Redis) -> None:
    """start forces a storm on that line only (national notation accepted), status tells it,
    stop ends it, a second stop says there was none."""
    assert ok(run("storm", "status", "--line", LINE)) == f"line {LINE}: no storm\n"
    assert ok(run("storm", "start", "--line", "01 99 00 00 01")) == (
        f"line {LINE}: storm started; unknown callers now hear the explanation\n")
    assert store.facts(CALLER, LINE, time.time()).storm
    assert not store.facts(CALLER, LINE_US, time.time()).storm
    assert 23 * 3600 < rdb.ttl(store.k_line(LINE, "storm")) <= 24 * 3600
    status = ok(run("storm", "status", "--line", LINE))
    assert status.startswith(f"line {LINE}: STORM (forced by an admin) since ")
    assert ", 0 unknown callers, " in status
    assert ok(run("storm", "status", "--line", LINE_US)) == f"line {LINE_US}: no storm\n"
    assert ok(run("storm", "stop", "--line", LINE)) == f"line {LINE}: storm stopped\n"
    assert not store.facts(CALLER, LINE, time.time()).storm
    assert ok(run("storm", "stop", "--line", LINE)) == f"line {LINE}: no storm\n"


def test_storm_status_of_a_detected_storm(run: Run, store: Store) -> None:
    now = time.time()
    for i in range(1, 7):
        result = store.record_call(f"+3335301{i:04d}", LINE, now + i, "allow", "default",
                                   unknown=True)
    assert result == "started"
    status = ok(run("storm", "status", "--line", LINE))
    assert re.fullmatch(rf"line \{LINE}: STORM \(detected\) since \d{{4}}-\d\d-\d\d \d\d:\d\d, "
                        r"6 unknown callers, ends after (29|30) quiet minutes\n", status), status


def test_storm_evidence_csv_and_json(run: Run, store: Store) -> None:
    """Oldest first; CSV with a header; JSON with the line and the calls."""
    store.storm_evidence_add(LINE, CALLER, T0, "callscreen/storm-explain", "pressed-1:allow")
    store.storm_evidence_add(LINE, None, T0 + 90, "beep", "abandon:voicemail")
    iso = [dt.datetime.fromtimestamp(t, dt.UTC).isoformat() for t in (T0, T0 + 90)]
    out = ok(run("storm", "evidence", "--line", LINE, "--format", "csv"))
    rows = list(csv.reader(io.StringIO(out)))
    assert rows == [
        ["time_iso", "caller", "heard", "outcome", "time"],
        [iso[0], CALLER, "callscreen/storm-explain", "pressed-1:allow", "1780000000"],
        [iso[1], "anonymous", "beep", "abandon:voicemail", "1780000090"],
    ]
    assert iso[0] == "2026-05-28T20:26:40+00:00"
    assert ok(run("storm", "evidence", "--line", LINE)) == out  # csv is the default
    data = json.loads(ok(run("storm", "evidence", "--line", LINE, "--format", "json")))
    assert data["line"] == LINE
    assert [(c["caller"], c["outcome"], c["time_iso"]) for c in data["calls"]] == [
        (CALLER, "pressed-1:allow", iso[0]), ("anonymous", "abandon:voicemail", iso[1])]
    empty = ok(run("storm", "evidence", "--line", LINE_US, "--format", "csv"))
    assert empty == "time_iso,caller,heard,outcome,time\n"


@pytest.mark.parametrize("command", ["status", "start", "stop", "evidence"])
def test_storm_commands_refuse_an_unknown_line(run: Run, rdb: redis.Redis, command: str) -> None:
    result = refused(run, rdb, "storm", command, "--line", "03 53 01 00 01")
    assert "is not one of our lines" in result.output
    refused(run, rdb, "storm", command)  # --line is required


def test_storm_evidence_refuses_an_unknown_format(run: Run, rdb: redis.Redis) -> None:
    refused(run, rdb, "storm", "evidence", "--line", LINE, "--format", "xml")


def test_spoofed_for_then_show_then_clear(run: Run, store: Store) -> None:
    """`spoofed NUMBER --for 7d` flags it (show says so) until about 7 days from now; --clear."""
    out = ok(run("spoofed", "02 61 91 00 01", "--for", "7d"))
    assert out.startswith(f"{CALLER} flagged as spoofed until ")
    shown = json.loads(ok(run("show", CALLER)))
    assert shown["record"]["spoofed"] is True
    now = time.time()
    assert store.facts(CALLER, None, now + 7 * 86400 - 60).record.spoofed
    assert not store.facts(CALLER, None, now + 7 * 86400 + 60).record.spoofed
    assert ok(run("spoofed", CALLER, "--clear")) == f"{CALLER} is no longer flagged as spoofed\n"
    assert json.loads(ok(run("show", CALLER)))["record"]["spoofed"] is False


def test_spoofed_default_duration_is_spoofed_days(run: Run, store: Store) -> None:
    ok(run("spoofed", CALLER))
    now = time.time()
    assert store.facts(CALLER, None, now + 29 * 86400).record.spoofed
    assert not store.facts(CALLER, None, now + 30 * 86400 + 60).record.spoofed


@pytest.mark.parametrize("args", [("123",), ("nonsense",), (CALLER, "--for", "0d"),
                                  (CALLER, "--for", "7 days")])
def test_spoofed_refuses_bad_input(run: Run, rdb: redis.Redis, args: tuple[str, ...]) -> None:
    refused(run, rdb, "spoofed", *args)


def test_reporter_rollback_of_a_line(run: Run, store: Store) -> None:
    """Every counted vote of the line is undone and counted in the output; again: 0."""
    now = time.time()
    store.vote(CALLER, LINE, now)
    store.vote("+33261910002", LINE, now)
    store.vote(CALLER, LINE_US, now)
    assert ok(run("reporter", "rollback", LINE)) == f"rolled back 2 vote(s) of {LINE}\n"
    r = store.facts(CALLER, None, time.time()).record
    assert (r.reports, r.reporters) == (1, 1)
    assert r.score == pytest.approx(25.0, abs=0.01)
    assert store.facts("+33261910002", None, time.time()).record.reports == 0
    assert ok(run("reporter", "rollback", "0199000001")) == f"rolled back 0 vote(s) of {LINE}\n"


def test_reporter_rollback_of_admin(run: Run, store: Store) -> None:
    store.vote(CALLER, "admin", time.time())
    assert ok(run("reporter", "rollback", "admin")) == "rolled back 1 vote(s) of admin\n"
    assert store.facts(CALLER, None, time.time()).record.score == 0.0


@pytest.mark.parametrize("who", ["bogus", "03 53 01 00 01", "src:Bad Name", "src:"])
def test_reporter_rollback_refuses_bad_input(run: Run, rdb: redis.Redis, store: Store,
                                            who: str) -> None:
    store.vote(CALLER, LINE, time.time())
    result = refused(run, rdb, "reporter", "rollback", who)
    assert "Error" in result.output
    assert store.facts(CALLER, None, time.time()).record.reports == 1
