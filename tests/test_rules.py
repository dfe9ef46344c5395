"""rules: lint errors with file:line, and evaluation (any/all/not, time windows, score rules and
thresholds, degraded evaluation by fail mode). Pure: no Redis; StoreFacts are built by hand."""

from __future__ import annotations

import dataclasses
import datetime as dt
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from callscreen import cli, rules
from callscreen import config as config_mod
from callscreen.config import Config
from callscreen.numbers import normalise
from callscreen.rules import RulesError, RuleSet
from callscreen.screen import Call, Verdict, decide
from callscreen.store import EMPTY_FACTS, Record, StoreFacts

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "rules"
PARIS = ZoneInfo("Europe/Paris")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def lint_problems(*files: Path) -> list[str]:
    with pytest.raises(RulesError) as info:
        rules.load_files(files)
    return info.value.problems


# -- lint ------------------------------------------------------------------------------------------

RULE_HEAD = "rules:\n  - name: r1\n"


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("    when: {colour: red}\n    action: block\n", 3, ["unknown condition 'colour'"]),
        ("    when:\n      any:\n        - {anonymous: true}\n        - {colour: red}\n"
         "    action: block\n", 6, ["unknown condition 'colour'"]),
        ("    when: {}\n    action: drop\n", 4, ["action 'drop'"]),
        ("    when:\n      time: {hours: ['25:00-26:00']}\n    action: block\n", 4,
         ["'25:00-26:00'"]),
        ("    when:\n      time: {hours: ['10h-12h']}\n    action: block\n", 4, ["'10h-12h'"]),
        ("    when:\n      time: {hours: ['10:00-10:00']}\n    action: block\n", 4, ["empty"]),
        ("    when:\n      time: {hours: ['24:00-24:30']}\n    action: block\n", 4,
         ["past 24:00"]),
        ("    when:\n      time: {days: [funday]}\n    action: block\n", 4, ["'funday'"]),
        ("    when:\n      time: {days: mon-fryday}\n    action: block\n", 4, ["mon-fryday"]),
        ("    when:\n      time: {weeks: 2}\n    action: block\n", 4, ["weeks"]),
        ("    when: {}\n    action: block\n    score: 10\n", 2, ["exactly one of"]),
        ("    when: {}\n", 2, ["exactly one of"]),
        ("    when: {}\n    score: lots\n", 4, ["score must be a number"]),
        ("    when: {prefix: ['0162']}\n    action: block\n", 3, ["'0162'", "E.164 prefix"]),
        ("    when: {prefix: ['+33 162']}\n    action: block\n", 3, ["'+33 162'"]),
        ("    when: {number_type: [landline]}\n    action: block\n", 3, ["'landline'"]),
        ("    when: {country: [FRA]}\n    action: block\n", 3, ["'FRA'"]),
        ("    when: {line: ['0199000001']}\n    action: block\n", 3, ["'0199000001'"]),
        ("    when: {attestation: [D]}\n    action: block\n", 3, ["'D'"]),
        ("    when: {anonymous: yes please}\n    action: block\n", 3, ["true or false"]),
        ("    when: {score_at_least: high}\n    action: block\n", 3, ["takes a number"]),
        ("    when: {any: []}\n    action: block\n", 3, ["'any' takes a list"]),
        ("    when: [anonymous]\n    action: block\n", 3, ["'when' must be a mapping"]),
        ("    action: block\n", 2, ["no 'when'"]),
        ("    when: {}\n    action: block\n    reason: Too Loud!\n", 5, ["reason"]),
        ("    when: {}\n    action: block\n    colour: red\n", 5, ["unknown rule key 'colour'"]),
        ("    when: {}\n    action: block\n    enabled: maybe\n", 5, ["enabled"]),
    ],
)
def test_lint_problem_names_file_and_line(tmp_path: Path, body: str, line: int,
                                          words: list[str]) -> None:
    path = write(tmp_path / "10-x.yaml", RULE_HEAD + body)
    problems = lint_problems(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{line}: "), problems[0]
    for word in words:
        assert word in problems[0]


def test_bad_rule_name(tmp_path: Path) -> None:
    path = write(tmp_path / "10-x.yaml", "rules:\n  - name: Bad Name\n    when: {}\n"
                 "    action: allow\n    reason: ok\n")
    assert lint_problems(path)[0].startswith(f"{path}:2: rule name 'Bad Name'")


def test_duplicate_rule_name_across_two_files(tmp_path: Path) -> None:
    first = write(tmp_path / "10-a.yaml", "rules:\n  - name: same\n    when: {}\n"
                  "    action: allow\n")
    second = write(tmp_path / "20-b.yaml", "# second\nrules:\n  - name: other\n    when: {}\n"
                   "    score: 1\n  - name: same\n    when: {}\n    action: block\n")
    problems = lint_problems(first, second)
    assert problems == [f"{second}:6: duplicate rule name 'same' (first at {first}:2)"]


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "10-x.yaml", "rules:\n  - name: a\n    when: {anonymous: true\n"
                 "    action: block\n")
    problems = lint_problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:4: ")


@pytest.mark.parametrize("text", ["- name: a\n", "rules: nope\n", "hello\n"])
def test_not_a_rules_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "10-x.yaml", text)
    assert lint_problems(path) == [f"{path}:1: a rules file is a mapping with a 'rules:' list"]


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    a = write(tmp_path / "10-a.yaml", "rules:\n  - name: a\n    when: {colour: red}\n"
              "    action: drop\n")
    b = write(tmp_path / "20-b.yaml", "rules:\n  - name: b\n    when: {prefix: ['1']}\n"
              "    action: block\n")
    wheres = sorted(p.split(": ", 1)[0] for p in lint_problems(a, b))
    assert wheres == [f"{a}:3", f"{a}:4", f"{b}:3"]


def test_load_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="not found"):
        rules.load_dir(tmp_path / "missing")
    with pytest.raises(RulesError, match="no \\*.yaml"):
        rules.load_dir(tmp_path)


def test_load_dir_reads_files_in_filename_order(tmp_path: Path) -> None:
    write(tmp_path / "20-b.yaml", "rules:\n  - {name: b, when: {}, action: block}\n")
    write(tmp_path / "10-a.yaml", "rules:\n  - {name: a, when: {}, score: 1}\n")
    write(tmp_path / "15-off.yaml", "rules:\n  - {name: switched-off, when: {}, action: allow, "
          "enabled: false}\n")
    ruleset = rules.load_dir(tmp_path)
    assert [r.name for r in ruleset.rules] == ["a", "b"]


@pytest.mark.parametrize("prefix", ["+0162", "+０162"])
def test_prefix_that_can_never_match_is_a_lint_error(tmp_path: Path, prefix: str) -> None:
    path = write(tmp_path / "10-x.yaml", f"rules:\n  - name: a\n    when: {{prefix: ['{prefix}']}}"
                 "\n    action: block\n")
    assert lint_problems(path)[0].startswith(f"{path}:3: ")


# -- CLI rules lint --------------------------------------------------------------------------------

def test_cli_lint_shipped_rules_exits_0() -> None:
    result = CliRunner().invoke(cli.main, ["rules", "lint", str(RULES_DIR)])
    assert result.exit_code == 0, result.output
    shipped = rules.load_dir(RULES_DIR)
    assert f"{len(shipped.rules)} rules OK" in result.output
    for rule in shipped.rules:
        assert rule.name in result.output


def test_cli_lint_broken_dir_prints_file_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "10-x.yaml", "rules:\n  - name: a\n    when: {colour: red}\n"
                "    action: block\n")
    result = CliRunner().invoke(cli.main, ["rules", "lint", str(tmp_path)])
    assert result.exit_code != 0
    assert f"{bad}:3: unknown condition 'colour'" in result.output


# -- evaluation ------------------------------------------------------------------------------------

CFG = config_mod.load_text("""
region: FR
lines:
  - {number: "01 99 00 00 01", name: home, timezone: Europe/Paris}
""", "test.yaml")
LINE = CFG.lines[0]
TUESDAY_11 = dt.datetime(2026, 6, 2, 11, 0, tzinfo=PARIS)


def facts(score: float = 0.0, velocity: int = 0, **kw: object) -> StoreFacts:
    return dataclasses.replace(EMPTY_FACTS, record=Record(score=score), velocity=velocity, **kw)


def verdict(ruleset: RuleSet, caller: str = "0353010203", store: StoreFacts | None = EMPTY_FACTS,
            at: dt.datetime = TUESDAY_11, cfg: Config = CFG, pres: str | None = None) -> Verdict:
    call = Call(normalise(caller, "FR", callingpres=pres), LINE, at)
    return decide(call, store, ruleset, cfg)


def one_rule(when: str) -> RuleSet:
    return rules.load_text(f"rules:\n  - name: r\n    when: {when}\n    action: block\n")


@pytest.mark.parametrize(
    ("when", "caller", "matches"),
    [
        ("{any: [{anonymous: true}, {prefix: ['+33353']}]}", "0353010203", True),
        ("{any: [{anonymous: true}, {prefix: ['+33353']}]}", "anonymous", True),
        ("{any: [{anonymous: true}, {prefix: ['+33353']}]}", "0261910001", False),
        ("{all: [{valid: true}, {prefix: ['+33353']}]}", "0353010203", True),
        ("{all: [{valid: true}, {prefix: ['+33353']}]}", "0261910001", False),
        ("{not: {prefix: ['+33353']}}", "0353010203", False),
        ("{not: {prefix: ['+33353']}}", "0261910001", True),
        ("{not: {not: {anonymous: true}}}", "private", True),
        ("{prefix: ['+33353'], valid: true}", "0353010203", True),  # a mapping is an AND
        ("{prefix: ['+33353'], anonymous: true}", "0353010203", False),
        ("{any: [{all: [{country: [GB]}, {valid: false}]}, {own_number: true}]}",
         "+447700900123", True),
        ("{any: [{all: [{country: [GB]}, {valid: false}]}, {own_number: true}]}",
         "+442079460123", False),
        ("{foreign: true}", "+442079460123", True),
        ("{foreign: true}", "0353010203", False),
        ("{number_type: [voip]}", "0948123456", True),
        ("{}", "0353010203", True),
    ],
)
def test_combinators(when: str, caller: str, matches: bool) -> None:
    v = verdict(one_rule(when), caller)
    assert (v.rule == "r") is matches, [str(s) for s in v.trace]


@pytest.mark.parametrize(
    ("hours", "days", "local", "inside"),
    [
        ("22:00-07:00", "mon-sun", (2026, 6, 2, 23, 30), True),
        ("22:00-07:00", "mon-sun", (2026, 6, 2, 0, 0), True),
        ("22:00-07:00", "mon-sun", (2026, 6, 2, 6, 59), True),
        ("22:00-07:00", "mon-sun", (2026, 6, 2, 7, 0), False),
        ("22:00-07:00", "mon-sun", (2026, 6, 2, 21, 59), False),
        ("22:00-07:00", "mon-sun", (2026, 6, 2, 22, 0), True),
        ("20:00-24:00", "mon-sun", (2026, 6, 2, 23, 59), True),
        ("20:00-24:00", "mon-sun", (2026, 6, 2, 0, 0), False),
        ("00:00-24:00", "sat-sun", (2026, 6, 6, 12, 0), True),  # Saturday
        ("00:00-24:00", "sat-sun", (2026, 6, 5, 12, 0), False),  # Friday
        ("00:00-24:00", "fri-mon", (2026, 6, 8, 12, 0), True),  # wrapping day range: Monday
        ("00:00-24:00", "fri-mon", (2026, 6, 9, 12, 0), False),  # Tuesday
        ("10:00-13:00", "mon-fri", (2026, 3, 29, 11, 0), False),  # Sunday of the DST change
        ("10:00-13:00", "mon-fri", (2026, 3, 30, 10, 0), True),  # CEST Monday
    ],
)
def test_time_windows(hours: str, days: str, local: tuple[int, ...], inside: bool) -> None:
    ruleset = one_rule(f"{{time: {{days: {days}, hours: ['{hours}']}}}}")
    at = dt.datetime(*local, tzinfo=PARIS)
    assert (verdict(ruleset, at=at).rule == "r") is inside


def test_time_is_the_lines_local_time() -> None:
    ruleset = one_rule("{time: {hours: ['10:00-11:00']}}")
    utc = dt.datetime(2026, 6, 2, 8, 30, tzinfo=dt.UTC)  # 10:30 in Paris (CEST)
    assert verdict(ruleset, at=utc).rule == "r"


def test_holiday_condition() -> None:
    ruleset = one_rule("{holiday: true}")
    assert verdict(ruleset, at=dt.datetime(2026, 7, 14, 11, 0, tzinfo=PARIS)).rule == "r"
    assert verdict(ruleset, at=dt.datetime(2026, 7, 15, 11, 0, tzinfo=PARIS)).rule == "default"


SCORING = rules.load_text("""
rules:
  - {name: plus-20, when: {prefix: ['+33353']}, score: 20}
  - {name: plus-15, when: {valid: true}, score: 15}
  - {name: never, when: {anonymous: true}, score: 100}
""")


@pytest.mark.parametrize(
    ("caller", "stored", "action", "rule", "total"),
    [
        ("0353010203", 0, "challenge", "threshold:challenge", 35),  # 20 + 15
        ("0353010203", 25, "voicemail", "threshold:voicemail", 60),  # exactly the threshold
        ("0353010203", 115, "block", "threshold:block", 150),
        ("0353010203", 114.9, "voicemail", "threshold:voicemail", 149.9),
        ("0261910001", 0, "allow", "default", 15),  # only +15 matched
    ],
)
def test_score_rules_accumulate_to_thresholds(caller: str, stored: float, action: str, rule: str,
                                              total: float) -> None:
    v = verdict(SCORING, caller, store=facts(score=stored))
    assert (v.action, v.rule) == (action, rule)
    assert v.score == pytest.approx(total)
    assert [s.rule for s in v.trace if s.matched and s.effect.startswith("score")] == (
        ["plus-20", "plus-15"] if caller == "0353010203" else ["plus-15"])


def test_terminal_rule_stops_evaluation_and_keeps_running_score() -> None:
    ruleset = rules.load_text("""
rules:
  - {name: add, when: {}, score: 10}
  - {name: stop, when: {valid: true}, action: voicemail, reason: stopped}
  - {name: later, when: {}, action: block}
""")
    v = verdict(ruleset, store=facts(score=5))
    assert (v.action, v.rule, v.reason, v.score) == ("voicemail", "stop", "stopped", 15)
    assert [s.rule for s in v.trace] == ["add", "stop"]


def test_custom_thresholds() -> None:
    cfg = dataclasses.replace(CFG, thresholds=config_mod.Thresholds(10, 20, 30))
    assert verdict(SCORING, cfg=cfg).action == "block"  # 35 >= 30


# -- degraded evaluation ---------------------------------------------------------------------------

SHIPPED = rules.load_dir(RULES_DIR)


@pytest.mark.parametrize(("fail_mode", "action"),
                         [("open", "allow"), ("challenge", "challenge"), ("closed", "voicemail")])
def test_degraded_store_conditions_are_unknown_and_fail_mode_decides(fail_mode: str,
                                                                     action: str) -> None:
    cfg = dataclasses.replace(CFG, fail_mode=fail_mode)
    v = verdict(SHIPPED, "0353010203", store=None, cfg=cfg)
    assert (v.action, v.rule, v.reason, v.degraded) == (action, "fail-mode", "degraded", True)
    by_rule = {s.rule: s for s in v.trace}
    for name in ("allowlist", "blocklist", "known-contact", "passed-challenge",
                 "calling-everyone", "bad-reputation"):
        assert by_rule[name].matched is None
        assert "store unavailable" in by_rule[name].detail
    assert "store unavailable" in by_rule["fail-mode"].detail


@pytest.mark.parametrize(
    ("caller", "at", "action", "rule"),
    [
        ("0162123456", dt.datetime(2026, 6, 2, 21, 0, tzinfo=PARIS), "block",
         "arcep-outside-legal-hours"),
        ("0162123456", TUESDAY_11, "voicemail", "arcep-telemarketing"),
        ("anonymous", TUESDAY_11, "challenge", "anonymous"),
        ("0639980001", TUESDAY_11, "challenge", "invalid-number"),
        ("0199000001", TUESDAY_11, "challenge", "own-number"),
    ],
)
def test_degraded_pure_rules_still_decide(caller: str, at: dt.datetime, action: str,
                                          rule: str) -> None:
    cfg = dataclasses.replace(CFG, fail_mode="closed")
    v = verdict(SHIPPED, caller, store=None, at=at, cfg=cfg)
    assert (v.action, v.rule, v.degraded) == (action, rule, True)


def test_degraded_neighbour_is_not_challenged_without_history_facts() -> None:
    """neighbour AND history=false: history is unknown, so the rule cannot match."""
    v = verdict(SHIPPED, "0199000002", store=None)
    assert v.rule == "fail-mode"
    assert {s.rule: s.matched for s in v.trace}["neighbour-spoofing"] is None


@pytest.mark.parametrize(
    ("when", "matched"),
    [
        ("{any: [{blocklisted: true}, {anonymous: true}]}", None),  # false | unknown
        ("{any: [{blocklisted: true}, {valid: true}]}", True),  # true wins over unknown
        ("{all: [{blocklisted: true}, {anonymous: true}]}", False),  # false wins over unknown
        ("{all: [{blocklisted: true}, {valid: true}]}", None),
        ("{not: {blocklisted: true}}", None),  # not(unknown) stays unknown
        ("{score_below: 10}", None),
    ],
)
def test_unknown_propagates_through_combinators(when: str, matched: bool | None) -> None:
    v = verdict(one_rule(when), "0353010203", store=None)
    assert v.trace[0].matched is matched
    assert (v.rule == "r") is bool(matched)


def test_store_facts_make_store_rules_decide() -> None:
    assert verdict(SHIPPED, store=facts(block_global="+33353*")).rule == "blocklist"
    assert verdict(SHIPPED, store=facts(allow_line="+33353010203")).rule == "allowlist"
    assert verdict(SHIPPED, store=facts(score=60)).rule == "bad-reputation"
    assert verdict(SHIPPED, store=facts(lines_called=5)).rule == "threshold:challenge"
    assert verdict(SHIPPED, "0199000002",
                   store=dataclasses.replace(EMPTY_FACTS, record=Record(calls=1))).rule == "default"
