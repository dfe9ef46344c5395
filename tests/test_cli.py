"""The `callscreen` command line, through click's CliRunner, on the real session Redis.

Exit codes: 0 done, 1 the store or a file failed, 2 bad input with nothing written (checked by
comparing DBSIZE before and after).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner, Result

from callscreen import cli

REPO = Path(__file__).resolve().parent.parent
LINE = "+33199000001"


def write_config(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(
        f"redis: {{url: '{url}'}}\n"
        f"rules_dir: {REPO / 'rules'}\n"
        "region: FR\n"
        "lines:\n"
        "  - {number: '01 99 00 00 01', name: home, timezone: Europe/Paris}\n" + extra,
        encoding="utf-8",
    )
    return path


@pytest.fixture
def conf(tmp_path: Path, redis_server: Any, rdb: redis.Redis) -> Path:
    return write_config(tmp_path / "callscreen.yaml", redis_server.url)


@pytest.fixture
def run(conf: Path) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli.main, ["--config", str(conf), *args])

    return invoke


def unchanged(rdb: redis.Redis, result: Result, before: int, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert rdb.dbsize() == before


# -- check -----------------------------------------------------------------------------------------

def test_check_explains_the_decision(run: Any, rdb: redis.Redis) -> None:
    result = run("check", "03 53 01 02 03", "--to", "01 99 00 00 01", "--at", "2026-06-02T11:00")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "caller   +33353010203 (fixed_line, FR, valid)" in out
    assert "line     +33199000001 home (Tue 2026-06-02 11:00 CEST)" in out
    assert "store    score 0" in out
    assert "trace" in out and "allowlist" in out and "neighbour-spoofing" in out
    assert "verdict  ALLOW  rule=default reason=default" in out
    assert rdb.dbsize() == 0  # check writes nothing


def test_check_json_parses(run: Any) -> None:
    result = run("check", "0162123456", "--to", LINE, "--at", "2026-06-02T21:00", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["number"], data["line"], data["action"], data["rule"], data["reason"]) == (
        "+33162123456", LINE, "block", "arcep-outside-legal-hours", "telemarketing-hours")
    assert data["degraded"] is False
    assert data["at"].startswith("2026-06-02T21:00:00+02:00")
    last = data["trace"][-1]
    assert (last["rule"], last["matched"], last["effect"]) == (
        "arcep-outside-legal-hours", True, "action block")
    assert "tue 21:00 CEST" in last["detail"]


def test_check_with_presentation_and_attestation(run: Any) -> None:
    result = run("check", "0353010203", "--to", LINE, "--pres", "32", "--attestation", "A",
                 "--json")
    data = json.loads(result.stdout)
    assert (data["anonymous"], data["action"], data["rule"]) == (True, "challenge", "anonymous")


def test_check_garbage_caller_is_explained_not_written(run: Any, rdb: redis.Redis) -> None:
    """A caller ID that is not a number is a real call to explain (it would be challenged)."""
    result = run("check", "Bob's phone", "--to", LINE)
    assert result.exit_code == 0
    assert "caller   anonymous" in result.output and "rule=anonymous" in result.output
    result = run("check", "12", "--to", LINE)
    assert "unusable caller ID (unparseable)" in result.output
    assert "rule=invalid-number" in result.output
    assert rdb.dbsize() == 0


@pytest.mark.parametrize("args", [
    ["check", "0353010203", "--to", "0261910001"],
    ["check", "0353010203", "--to", "not a number"],
    ["check", "0353010203", "--to", LINE, "--at", "tuesday"],
    ["check", "0353010203", "--to", LINE, "--attestation", "Z"],
])
def test_check_bad_input_exits_2(run: Any, rdb: redis.Redis, args: list[str]) -> None:
    result = run(*args)
    unchanged(rdb, result, 0)
    if "0261910001" in args:
        assert "is not one of our lines (configured: +33199000001)" in result.output


def test_check_with_redis_down_is_degraded(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = write_config(tmp_path / "down.yaml", f"redis://127.0.0.1:{port}/0")
    result = CliRunner().invoke(cli.main, ["--config", str(conf), "check", "0353010203", "--to",
                                           LINE, "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert (data["degraded"], data["rule"], data["action"]) == (True, "fail-mode", "allow")
    result = CliRunner().invoke(cli.main, ["--config", str(conf), "block", "0353010203"])
    assert result.exit_code == 1
    assert "Redis is unavailable" in result.output


# -- lists -----------------------------------------------------------------------------------------

def test_allow_block_prefixes_for_a_duration_and_per_line(run: Any, rdb: redis.Redis) -> None:
    start = time.time()
    r1 = run("allow", "0162*", "--for", "30d")
    r2 = run("block", "+33163*", "--line", "01 99 00 00 01", "--for", "12h", "--label", "npv")
    r3 = run("block", "03 53 01 02 03")
    r4 = run("allow", "+1 202 555 0142", "--line", LINE, "--for", "2w")
    for r in (r1, r2, r3, r4):
        assert r.exit_code == 0, r.output
    assert "allowed +33162* for all lines until" in r1.output
    assert "blocked +33163* for line +33199000001 until" in r2.output
    assert "blocked +33353010203 for all lines" in r3.output and "until" not in r3.output

    assert rdb.hkeys("cs:allow") == ["+33162*"]
    assert rdb.hkeys("cs:block") == ["+33353010203"]
    assert rdb.hkeys(f"cs:l:{LINE}:block") == ["+33163*"]
    assert rdb.hkeys(f"cs:l:{LINE}:allow") == ["+12025550142"]

    listed = json.loads(run("lists", "--json").stdout)
    by_entry = {e["entry"]: e for e in listed}
    assert by_entry["+33162*"]["expires"] == pytest.approx(start + 30 * 86400, abs=60)
    assert by_entry["+33163*"]["expires"] == pytest.approx(start + 12 * 3600, abs=60)
    assert by_entry["+33163*"]["line"] == LINE and by_entry["+33163*"]["label"] == "npv"
    assert by_entry["+33353010203"]["expires"] is None
    assert by_entry["+12025550142"]["expires"] == pytest.approx(start + 14 * 86400, abs=60)

    text = run("lists").output
    assert "allow  global" in text and "block  line +33199000001" in text and "npv" in text

    # the entries change decisions
    out = json.loads(run("check", "0162000001", "--to", LINE, "--at", "2026-06-02T21:00",
                         "--json").stdout)
    assert (out["action"], out["rule"]) == ("allow", "allowlist")
    out = json.loads(run("check", "0163000001", "--to", LINE, "--json").stdout)
    assert (out["action"], out["rule"]) == ("block", "blocklist")


@pytest.mark.parametrize(("raw", "entry"), [
    ("0162*", "+33162*"), ("+33162*", "+33162*"), ("0033162*", "+33162*"),
    ("+33 1 62*", "+33162*"), ("01.62*", "+33162*"), ("+1202555*", "+1202555*"),
    ("+33353010203", "+33353010203"), ("0033 3 53 01 02 03", "+33353010203"),
])
def test_entry_notations(run: Any, rdb: redis.Redis, raw: str, entry: str) -> None:
    result = run("block", raw)
    assert result.exit_code == 0, result.output
    assert rdb.hkeys("cs:block") == [entry]


def test_unallow_and_unblock(run: Any, rdb: redis.Redis) -> None:
    run("allow", "+33162*")
    run("block", "0353010203", "--line", LINE)
    result = run("unallow", "0162*")
    assert result.exit_code == 0 and "removed +33162* from the allow list of all lines" in (
        result.output)
    result = run("unallow", "0162*")
    assert "+33162* was not on the allow list" in result.output
    result = run("unblock", "0353010203")  # global list: not there
    assert "was not on the block list of all lines" in result.output
    assert run("unblock", "0353010203", "--line", LINE).exit_code == 0
    assert rdb.dbsize() == 0
    assert run("lists").output.strip() == "no list entries"


@pytest.mark.parametrize("args", [
    ["allow", "0353010203", "--for", "3x"],
    ["allow", "0353010203", "--for", "0d"],
    ["block", "0353010203", "--for", "forever"],
    ["block", "12"],
    ["block", "abc"],
    ["block", "0*"],
    ["block", "+0162*"],
    ["block", "01a2*"],
    ["block", "+3316212345678901*"],
    ["allow", "0353010203", "--line", "0261910001"],
    ["report", "Bob's phone"],
    ["report", "0353010203", "--line", "0261910001"],
    ["show", "unknown"],
    ["forgive", "12"],
])
def test_bad_input_exits_2_and_writes_nothing(run: Any, rdb: redis.Redis,
                                              args: list[str]) -> None:
    rdb.set("cs:sentinel", "1")
    result = run(*args)
    unchanged(rdb, result, 1)
    if "3x" in args:
        assert "'3x' is not a duration" in result.output


# -- reputation ------------------------------------------------------------------------------------

def test_report_once_per_reporter_show_and_forgive(run: Any, rdb: redis.Redis) -> None:
    first = run("report", "03 53 01 02 03")
    assert first.exit_code == 0
    assert "reported +33353010203 as admin: counted; score now 40" in first.output
    second = run("report", "+33353010203")
    assert "already reported by this reporter, not counted again; score now 40" in second.output
    by_line = run("report", "0353010203", "--line", "01 99 00 00 01")
    assert "as +33199000001: counted; score now 65" in by_line.output

    shown = run("show", "0353010203", "--line", LINE)
    data = json.loads(shown.stdout)
    assert data["record"]["reporters"] == 2 and data["record"]["score"] == pytest.approx(65)
    assert data["reporters"] == ["admin", "local/+33199000001"]
    assert data["record_ttl_s"] > 0 and data["line"] == LINE

    out = json.loads(run("check", "0353010203", "--to", LINE, "--json").stdout)
    assert (out["action"], out["rule"]) == ("voicemail", "bad-reputation")

    forgiven = run("forgive", "0353010203")
    assert forgiven.exit_code == 0 and "forgave +33353010203" in forgiven.output
    assert "+33353010203 had no reputation" in run("forgive", "0353010203").output
    assert json.loads(run("show", "0353010203").stdout)["record"]["reports"] == 0


def test_stats(run: Any) -> None:
    run("report", "0353010203")
    run("block", "+33162*")
    run("allow", "0353010204", "--line", LINE)
    result = run("stats")
    assert result.exit_code == 0
    stats = dict(line.split() for line in result.output.strip().splitlines())
    assert (stats["numbers"], stats["lines"], stats["allow_entries"], stats["block_entries"]) == (
        "1", "1", "1", "1")
    assert int(stats["used_memory"]) > 0


# -- export / import -------------------------------------------------------------------------------

def test_export_import_round_trip(run: Any, rdb: redis.Redis, tmp_path: Path) -> None:
    run("report", "0353010203")
    run("report", "0353010203", "--line", LINE)
    run("block", "+33162*", "--for", "30d")
    run("allow", "0353010204", "--line", LINE)
    dump = tmp_path / "dump.jsonl"
    result = run("export", str(dump))
    # the record (its voters inside), the admin's vote log, the line's rate counter and vote
    # log, 2 lists
    assert result.exit_code == 0 and "exported 6 keys" in result.output
    lines = dump.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)
    before = {k: (rdb.type(k), rdb.dump(k)) for k in rdb.keys("*")}
    ttl_before = rdb.ttl("cs:n:+33353010203")

    rdb.flushdb()
    result = run("import", str(dump))
    assert result.exit_code == 0 and "imported 6 keys" in result.output

    after = {k: (rdb.type(k), rdb.dump(k)) for k in rdb.keys("*")}
    assert after.keys() == before.keys()
    for key in before:
        assert after[key][0] == before[key][0]
    assert rdb.hgetall("cs:n:+33353010203")["rep"] == "2"
    assert rdb.ttl("cs:n:+33353010203") == pytest.approx(ttl_before, abs=5)
    assert sorted(k for k in rdb.hkeys("cs:n:+33353010203") if k.startswith("v:")) == [
        "v:admin", "v:local/+33199000001"]


def test_export_to_stdout(run: Any) -> None:
    run("block", "+33162*")
    result = run("export")
    record = json.loads(result.stdout.strip())
    assert record == {"key": "block", "type": "hash", "ttl_ms": None,
                      "value": {"+33162*": record["value"]["+33162*"]}}


GOOD = json.dumps({"key": "allow", "type": "hash", "value": {"+33353010203": "0|x"},
                   "ttl_ms": None})


@pytest.mark.parametrize(("bad", "words"), [
    ("this is not json", ["Expecting value"]),
    ('{"key": "allow", "type": "hash"}', ["needs key, type and value"]),
    ('["allow", "hash", {}]', ["needs key, type and value"]),
    ('{"key": "evil:key", "type": "hash", "value": {"a": "b"}}', ["not a callscreen key"]),
    ('{"key": "n:0353010203", "type": "hash", "value": {"c": "1"}}', ["not a callscreen key"]),
])
def test_import_malformed_file_exits_2_with_file_line(run: Any, rdb: redis.Redis, tmp_path: Path,
                                                      bad: str, words: list[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n")
    result = run("import", str(src))
    unchanged(rdb, result, 0)
    assert f"{src}:3: " in result.output and "nothing imported" in result.output
    for word in words:
        assert word in result.output


@pytest.mark.parametrize("bad", [
    '{"key": "n:+33353010203", "type": "bogus", "value": 1}',
    '{"key": "n:+33353010203", "type": "hash", "value": [1, 2]}',
    '{"key": "allow", "type": "hash", "value": {}}',
])
def test_import_bad_type_or_value_exits_2(run: Any, rdb: redis.Redis, tmp_path: Path,
                                          bad: str) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(f"{GOOD}\n{bad}\n")
    result = run("import", str(src))
    unchanged(rdb, result, 0)
    assert f"{src}:2: " in result.output


def test_import_error_late_in_a_big_file_writes_nothing(run: Any, rdb: redis.Redis,
                                                        tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    good = [json.dumps({"key": f"n:+3353649{i:04d}", "type": "hash", "value": {"c": "1"},
                        "ttl_ms": 60000}) for i in range(600)]
    bad = json.dumps({"key": "n:+33353010203", "type": "bogus", "value": 1})
    src.write_text("\n".join([*good, bad]) + "\n")
    result = run("import", str(src))
    assert rdb.dbsize() == 0
    assert result.exit_code == 2


def test_import_ftc_dnc_counts_each_number_once(run: Any, rdb: redis.Redis) -> None:
    sample = REPO / "tests" / "samples" / "ftc_sample.csv"
    first = run("import", "ftc-dnc", str(sample))
    assert first.exit_code == 0, first.output
    assert "imported             5" in first.output and "invalid            1" in first.output
    again = run("import", "ftc-dnc", str(sample))
    assert "imported             0" in again.output and "already              5" in again.output
    record = json.loads(run("show", "+12125550123").output)["record"]
    assert (record["reports"], record["reporters"], record["score"]) == (1, 1, 25.0)
    rolled = run("reporter", "rollback", "src:ftc-dnc")
    assert rolled.exit_code == 0, rolled.output
    record = json.loads(run("show", "+12125550123").output)["record"]
    assert (record["reports"], record["score"]) == (0, 0.0)


def test_import_csv_by_column_name(run: Any, rdb: redis.Redis, tmp_path: Path) -> None:
    src = tmp_path / "list.csv"
    src.write_text("label;number\nx;05 36 49 00 01\ny;not a number\n")
    result = run("import", "csv", str(src), "--number-column", "Number", "--label", "club",
                 "--delimiter", ";")
    assert result.exit_code == 0, result.output
    assert "as src:club" in result.output and "unparseable        1" in result.output
    assert json.loads(run("show", "0536490001").output)["record"]["reports"] == 1


def test_import_csv_missing_column_exits_2_and_writes_nothing(run: Any, rdb: redis.Redis,
                                                              tmp_path: Path) -> None:
    src = tmp_path / "list.csv"
    src.write_text("label,phone\nx,0536490001\n")
    before = rdb.dbsize()
    result = run("import", "csv", str(src), "--number-column", "number", "--label", "club")
    unchanged(rdb, result, before)
    assert "missing column 'number'" in result.output


# -- config check ----------------------------------------------------------------------------------

def test_config_check_prints_merged_config_and_masks_password(tmp_path: Path) -> None:
    main = write_config(tmp_path / "callscreen.yaml", "redis://callscreen:s3cr3t-pw@127.0.0.1:6379/2",
                        "thresholds: {challenge: 25}\n")
    d = tmp_path / "callscreen.d"
    d.mkdir()
    (d / "10-site.yaml").write_text("thresholds: {voicemail: 70}\nfail_mode: closed\n")
    result = CliRunner().invoke(cli.main, ["--config", str(main), "config", "check"])
    assert result.exit_code == 0, result.output
    assert "s3cr3t" not in result.output
    assert f"# read: {main}, {d / '10-site.yaml'}" in result.output
    data = yaml.safe_load(result.stdout)
    assert data["redis"]["url"] == "redis://callscreen:***@127.0.0.1:6379/2"
    assert data["thresholds"] == {"challenge": 25.0, "voicemail": 70.0, "block": 150.0}
    assert data["fail_mode"] == "closed"
    assert data["lines"] == [{"number": LINE, "name": "home", "timezone": "Europe/Paris",
                              "language": "en"}]


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:only-pw@localhost:6379/0", "redis://:***@localhost:6379/0"),
    ("rediss://user:pw-2@redis.example.net:6380/0", "rediss://user:***@redis.example.net:6380/0"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("unix:///run/redis/redis.sock?db=0", "unix:///run/redis/redis.sock?db=0"),
])
def test_mask_password(url: str, masked: str) -> None:
    assert cli.mask_password(url) == masked


def test_config_check_reports_errors_with_file_line(tmp_path: Path) -> None:
    main = write_config(tmp_path / "callscreen.yaml", "redis://127.0.0.1/0", "fail_mode: shut\n")
    result = CliRunner().invoke(cli.main, ["--config", str(main), "config", "check"])
    assert result.exit_code == 1
    assert f"{main}:6: fail_mode 'shut'" in result.output
