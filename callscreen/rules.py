"""Rules: load, lint and evaluate the ordered YAML rules (pure: no I/O at evaluation time).

A rules file holds ``rules:``, a list of rules. Files in ``rules_dir`` are read in filename order
(``10-lists.yaml`` before ``20-telemarketing.yaml``). A rule::

    - name: arcep-telemarketing          # unique, [a-z0-9_-]
      description: free text
      when:                              # every condition must hold (see CONDITIONS)
        prefix: ["+33162", "+33163"]
      action: voicemail                  # allow | challenge | voicemail | block  (terminal)
      reason: telemarketing              # short, machine-readable; defaults to the name
    - name: premium-rate
      when: {number_type: [premium_rate]}
      score: 20                          # or: adjust the score and go on

Conditions that need Redis (lists, reputation, contacts, velocity) are *unknown* when Redis is
unavailable: a rule with an unknown condition does not match, and the verdict says ``degraded``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

from callscreen import numbers, yamlsrc
from callscreen.config import ACTIONS, Config, Line
from callscreen.numbers import NumberFacts
from callscreen.store import StoreFacts
from callscreen.yamlsrc import SourceDict, SourceList, YamlError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_HOURS = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)-([01]?\d|2[0-4]):([0-5]\d)$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ATTESTATIONS = ("A", "B", "C", "failed", "unknown")
RULE_KEYS = {"name", "description", "when", "action", "reason", "score", "enabled", "challenge"}
CHALLENGE_KINDS = ("digits", "storm")


class RulesError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class EvalContext:
    """Everything a condition may look at for one call."""

    def __init__(
        self,
        caller: NumberFacts,
        line: Line | None,
        at: dt.datetime,
        cfg: Config,
        store: StoreFacts | None,
        attestation: str = "unknown",
    ):
        self.caller = caller
        self.line = line
        self.at = at
        self.cfg = cfg
        self.store = store  # None: Redis unavailable, store conditions are unknown
        self.attestation = attestation

    @cached_property
    def local(self) -> dt.datetime:
        tz = self.line.timezone if self.line else self.cfg.timezone
        return self.at.astimezone(ZoneInfo(tz))

    @cached_property
    def own_number(self) -> bool:
        if self.caller.e164 is None:
            return False
        return any(line.did == self.caller.e164 for line in self.cfg.lines) or (
            self.line is not None and self.line.did == self.caller.e164
        )

    @cached_property
    def neighbour(self) -> bool:
        if self.line is None:
            return False
        return numbers.is_neighbour(self.caller, self.line.facts, self.cfg.neighbour_digits)

    @cached_property
    def home_country(self) -> str:
        return (self.line.country if self.line else None) or self.cfg.region

    @cached_property
    def holiday(self) -> str | None:
        """Name of today's public holiday in the line's country, or None."""
        country = self.cfg.holidays.country or self.home_country
        table = _holiday_table(country, self.cfg.holidays.subdivision, self.local.year)
        return table.get(self.local.date()) if table is not None else None


@functools.lru_cache(maxsize=64)
def _holiday_table(country: str, subdivision: str, year: int) -> Any:
    import holidays as holidays_lib  # imported on first use: it is slow to import (process AGI)

    try:
        return holidays_lib.country_holidays(country, subdiv=subdivision or None, years=year)
    except (NotImplementedError, KeyError):
        log.warning("no public holiday calendar for %s/%s", country, subdivision)
        return None


Result = tuple[bool | None, str]  # matched (None = unknown), explanation
Test = Callable[[EvalContext], Result]


@dataclass(frozen=True)
class Rule:
    name: str
    where: str
    test: Test
    action: str | None
    reason: str
    score: float
    description: str = ""
    challenge: str = "digits"  # for action challenge: digits (type the code) | storm


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    files: tuple[str, ...]


# -- condition compilers: (value, where) -> Test ------------------------------------------------


class _Bad(ValueError):
    pass


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"'{key}' takes true or false, got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"'{key}' takes a number, got {value!r}")
    return float(value)


def _str_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str | int):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Bad(f"'{key}' takes a list, got {value!r}")
    return [str(v) for v in value]


def _flag(key: str, getter: Callable[[EvalContext], bool], store: bool = False) -> Any:
    def compile_(value: Any) -> Test:
        wanted = _bool(value, key)

        def test(ctx: EvalContext) -> Result:
            if store and ctx.store is None:
                return None, f"{key} unknown (store unavailable)"
            actual = getter(ctx)
            return actual == wanted, f"{key}={str(actual).lower()}"

        return test

    return compile_


def _at_least(key: str, label: str, getter: Callable[[StoreFacts], float]) -> Any:
    def compile_(value: Any) -> Test:
        limit = _number(value, key)

        def test(ctx: EvalContext) -> Result:
            if ctx.store is None:
                return None, f"{label} unknown (store unavailable)"
            actual = getter(ctx.store)
            return actual >= limit, f"{label} {actual:g} {'>=' if actual >= limit else '<'} {limit:g}"

        return test

    return compile_


def _score_below(value: Any) -> Test:
    limit = _number(value, "score_below")

    def test(ctx: EvalContext) -> Result:
        if ctx.store is None:
            return None, "score unknown (store unavailable)"
        actual = ctx.store.record.score
        return actual < limit, f"score {actual:g} {'<' if actual < limit else '>='} {limit:g}"

    return test


def _prefix(value: Any) -> Test:
    prefixes = _str_list(value, "prefix")
    for p in prefixes:
        body = p[1:]
        if not (p.startswith("+") and body.isascii() and body.isdigit()
                and 1 <= len(body) <= 15 and body[0] != "0"):
            raise _Bad(f"prefix '{p}' must be an E.164 prefix like +33162 (a '+' and digits)")
    ordered = tuple(sorted(prefixes, key=len, reverse=True))

    def test(ctx: EvalContext) -> Result:
        e164 = ctx.caller.e164
        if e164 is None:
            return False, "no number"
        for p in ordered:
            if e164.startswith(p):
                return True, f"number starts with {p}"
        return False, "no listed prefix"

    return test


def _number_type(value: Any) -> Test:
    types = _str_list(value, "number_type")
    for t in types:
        if t not in numbers.NUMBER_TYPES:
            raise _Bad(f"number_type '{t}' is not one of {', '.join(sorted(numbers.NUMBER_TYPES))}")
    wanted = frozenset(types)

    def test(ctx: EvalContext) -> Result:
        return ctx.caller.number_type in wanted, f"number_type={ctx.caller.number_type}"

    return test


def _country(value: Any) -> Test:
    countries = _str_list(value, "country")
    for c in countries:
        if c not in phonenumbers.SUPPORTED_REGIONS:
            raise _Bad(f"country '{c}' is not an ISO country code")
    wanted = frozenset(countries)

    def test(ctx: EvalContext) -> Result:
        return ctx.caller.country in wanted, f"country={ctx.caller.country}"

    return test


def _line(value: Any) -> Test:
    dids = []
    for raw in _str_list(value, "line"):
        if not numbers.is_e164(raw):
            raise _Bad(f"line '{raw}' must be an E.164 number like +33199000001")
        dids.append(raw)
    wanted = frozenset(dids)

    def test(ctx: EvalContext) -> Result:
        did = ctx.line.did if ctx.line else None
        return did in wanted, f"line={did}"

    return test


def _attestation(value: Any) -> Test:
    levels = _str_list(value, "attestation")
    for level in levels:
        if level not in ATTESTATIONS:
            raise _Bad(f"attestation '{level}' is not one of {', '.join(ATTESTATIONS)}")
    wanted = frozenset(levels)

    def test(ctx: EvalContext) -> Result:
        return ctx.attestation in wanted, f"attestation={ctx.attestation}"

    return test


def _parse_days(value: Any) -> frozenset[int]:
    days: set[int] = set()
    for item in _str_list(value, "days"):
        item = item.lower()
        if "-" in item:
            start, _, end = item.partition("-")
            if start not in _DAYS or end not in _DAYS:
                raise _Bad(f"day range '{item}' must look like mon-fri")
            a, b = _DAYS.index(start), _DAYS.index(end)
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        elif item in _DAYS:
            days.add(_DAYS.index(item))
        else:
            raise _Bad(f"day '{item}' is not one of {', '.join(_DAYS)}")
    return frozenset(days)


def _parse_hours(value: Any) -> list[tuple[int, int, str]]:
    windows = []
    for item in _str_list(value, "hours"):
        m = _HOURS.match(item.replace(" ", ""))
        if not m:
            raise _Bad(f"time window '{item}' must look like 10:00-13:00")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start > 24 * 60 or end > 24 * 60 or start == end:
            raise _Bad(f"time window '{item}' is empty or past 24:00")
        windows.append((start, end, item))
    return windows


def _time(value: Any) -> Test:
    if not isinstance(value, dict):
        raise _Bad("'time' takes a mapping with 'days' and/or 'hours'")
    unknown = set(value) - {"days", "hours"}
    if unknown:
        raise _Bad(f"'time' takes only days and hours, not {', '.join(sorted(unknown))}")
    days = _parse_days(value["days"]) if "days" in value else frozenset(range(7))
    hours = _parse_hours(value["hours"]) if "hours" in value else [(0, 24 * 60, "all day")]

    def test(ctx: EvalContext) -> Result:
        local = ctx.local
        minute = local.hour * 60 + local.minute
        stamp = f"{_DAYS[local.weekday()]} {local:%H:%M} {local.tzname()}"
        if local.weekday() not in days:
            return False, f"{stamp} not on listed days"
        for start, end, label in hours:
            inside = start <= minute < end if start < end else (minute >= start or minute < end)
            if inside:
                return True, f"{stamp} within {label}"
        return False, f"{stamp} outside {', '.join(h[2] for h in hours)}"

    return test


def _holiday(value: Any) -> Test:
    wanted = _bool(value, "holiday")

    def test(ctx: EvalContext) -> Result:
        name = ctx.holiday
        return (name is not None) == wanted, f"holiday: {name}" if name else "not a public holiday"

    return test


def _store_flag(key: str, getter: Callable[[StoreFacts], Any]) -> Any:
    def compile_(value: Any) -> Test:
        wanted = _bool(value, key)

        def test(ctx: EvalContext) -> Result:
            if ctx.store is None:
                return None, f"{key} unknown (store unavailable)"
            found = getter(ctx.store)
            detail = f"{key}: {found}" if isinstance(found, str) else f"{key}={str(bool(found)).lower()}"
            return bool(found) == wanted, detail

        return test

    return compile_


CONDITIONS: dict[str, Callable[[Any], Test]] = {
    "allowlisted": _store_flag("allowlisted", lambda s: s.allow_line or s.allow_global),
    "blocklisted": _store_flag("blocklisted", lambda s: s.block_line or s.block_global),
    "contact": _store_flag("contact", lambda s: s.contact),
    "trusted": _store_flag("trusted", lambda s: s.trusted),
    "history": _store_flag("history", lambda s: s.record.history),
    "emergency": _store_flag("emergency", lambda s: s.emergency),
    "storm": _store_flag("storm", lambda s: s.storm),
    "spoofed": _store_flag("spoofed", lambda s: s.record.spoofed),
    "recent_voicemail": _store_flag("recent_voicemail", lambda s: s.recent_voicemail),
    "anonymous": _flag("anonymous", lambda c: c.caller.anonymous),
    "valid": _flag("valid", lambda c: c.caller.valid),
    "possible": _flag("possible", lambda c: c.caller.possible),
    "own_number": _flag("own_number", lambda c: c.own_number),
    "neighbour": _flag("neighbour", lambda c: c.neighbour),
    "foreign": _flag("foreign", lambda c: c.caller.country not in (None, c.home_country)),
    "prefix": _prefix,
    "number_type": _number_type,
    "country": _country,
    "line": _line,
    "attestation": _attestation,
    "time": _time,
    "holiday": _holiday,
    "score_at_least": _at_least("score_at_least", "score", lambda s: s.record.score),
    "score_below": _score_below,
    "reports_at_least": _at_least("reports_at_least", "reports", lambda s: s.record.reports),
    "reporters_at_least": _at_least("reporters_at_least", "reporters",
                                    lambda s: s.record.reporters),
    "calls_at_least": _at_least("calls_at_least", "calls", lambda s: s.record.calls),
    "abandons_at_least": _at_least("abandons_at_least", "abandons", lambda s: s.record.abandons),
    "fails_at_least": _at_least("fails_at_least", "fails", lambda s: s.record.fails),
    "velocity_at_least": _at_least("velocity_at_least", "velocity", lambda s: s.velocity),
    "lines_called_at_least": _at_least("lines_called_at_least", "lines called",
                                       lambda s: s.lines_called),
    "pbxs_at_least": _at_least("pbxs_at_least", "reporting PBXs", lambda s: s.record.pbxs),
    "neighbour_burst_at_least": _at_least("neighbour_burst_at_least", "neighbour-prefix callers",
                                          lambda s: s.neighbour_burst),
}
_COMBINATORS = ("any", "all", "not")


def compile_when(when: Any, where: str) -> Test:
    """Compile a `when` mapping (AND of its conditions); raise RulesError listing problems."""
    problems: list[str] = []
    test = _compile(when, where, problems)
    if problems:
        raise RulesError(problems)
    return test


def _compile(when: Any, where: str, problems: list[str]) -> Test:
    if not isinstance(when, dict):
        problems.append(f"{where}: 'when' must be a mapping of conditions, got {when!r}")
        return lambda ctx: (False, "invalid")
    tests: list[Test] = []
    for key, value in when.items():
        here = when.where(key) if isinstance(when, SourceDict) else where
        if key in ("any", "all"):
            if not isinstance(value, list) or not value:
                problems.append(f"{here}: '{key}' takes a list of condition mappings")
                continue
            subs = [
                _compile(item, value.where(i) if isinstance(value, SourceList) else here, problems)
                for i, item in enumerate(value)
            ]
            tests.append(_any(subs) if key == "any" else _all(subs))
        elif key == "not":
            tests.append(_not(_compile(value, here, problems)))
        elif key in CONDITIONS:
            try:
                tests.append(CONDITIONS[key](value))
            except _Bad as exc:
                problems.append(f"{here}: {exc}")
        else:
            known = ", ".join(sorted([*CONDITIONS, *_COMBINATORS]))
            problems.append(f"{here}: unknown condition '{key}' (known: {known})")
    return _all(tests)


def _all(tests: list[Test]) -> Test:
    def test(ctx: EvalContext) -> Result:
        details = []
        unknown = False
        for t in tests:
            matched, why = t(ctx)
            details.append(why)
            if matched is False:
                return False, "; ".join(details)
            if matched is None:
                unknown = True
        return (None if unknown else True), "; ".join(details) or "always"

    return test


def _any(tests: list[Test]) -> Test:
    def test(ctx: EvalContext) -> Result:
        details = []
        unknown = False
        for t in tests:
            matched, why = t(ctx)
            if matched:
                return True, why
            details.append(why)
            unknown = unknown or matched is None
        return (None if unknown else False), "none of: " + " | ".join(details)

    return test


def _not(inner: Test) -> Test:
    def test(ctx: EvalContext) -> Result:
        matched, why = inner(ctx)
        # The inner explanation already states the fact ("outside 10:00-13:00"); only say when
        # a match of the inner condition is what made the negation fail.
        if matched is None:
            return None, why
        return (not matched), (why if not matched else f"excluded by: {why}")

    return test


# -- loading ------------------------------------------------------------------------------------


def parse_document(doc: Any, filename: str, seen: dict[str, str]) -> tuple[list[Rule], list[str]]:
    problems: list[str] = []
    rules: list[Rule] = []
    if doc is None:
        return rules, problems
    items = doc.get("rules") if isinstance(doc, SourceDict) else None
    if not isinstance(doc, SourceDict) or not isinstance(items, list):
        problems.append(f"{filename}:1: a rules file is a mapping with a 'rules:' list")
        return rules, problems
    extra = set(doc) - {"rules"}
    for key in sorted(extra):
        problems.append(f"{doc.where(key)}: unknown top-level key '{key}' (only 'rules')")
    for index, item in enumerate(items):
        where = items.where(index) if isinstance(items, SourceList) else filename
        if not isinstance(item, SourceDict):
            problems.append(f"{where}: a rule is a mapping with name, when and action or score")
            continue
        rule, rule_problems = _parse_rule(item, where, seen)
        problems.extend(rule_problems)
        if rule is not None:
            rules.append(rule)
    return rules, problems


def _parse_rule(
    item: SourceDict, where: str, seen: dict[str, str]
) -> tuple[Rule | None, list[str]]:
    problems: list[str] = []
    for key in sorted(set(item) - RULE_KEYS):
        problems.append(f"{item.where(key)}: unknown rule key '{key}' "
                        f"(known: {', '.join(sorted(RULE_KEYS))})")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"{item.where('name') if 'name' in item else where}: rule name "
                        f"{name!r} must be lowercase letters, digits, '-' or '_'")
        name = None
    elif name in seen:
        problems.append(f"{item.where('name')}: duplicate rule name '{name}' (first at "
                        f"{seen[name]})")
    else:
        seen[name] = item.where("name")
    action = item.get("action")
    score = item.get("score")
    if action is not None and action not in ACTIONS:
        problems.append(f"{item.where('action')}: action '{action}' is not one of "
                        f"{', '.join(ACTIONS)}")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        problems.append(f"{item.where('score')}: score must be a number, got {score!r}")
    if (action is None) == (score is None):
        problems.append(f"{where}: rule {name!r} needs exactly one of 'action' or 'score'")
    reason = item.get("reason", name)
    if not isinstance(reason, str) or not re.match(r"^[a-z0-9_-]{1,40}$", reason or ""):
        problems.append(f"{item.where('reason') if 'reason' in item else where}: reason "
                        f"{reason!r} must be short lowercase letters, digits, '-' or '_'")
    challenge = item.get("challenge", "digits")
    if challenge not in CHALLENGE_KINDS:
        problems.append(f"{item.where('challenge')}: challenge '{challenge}' is not one of "
                        f"{', '.join(CHALLENGE_KINDS)}")
    elif "challenge" in item and action != "challenge":
        problems.append(f"{item.where('challenge')}: 'challenge' goes with action: challenge")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"{item.where('enabled')}: enabled must be true or false")
    if "when" not in item:
        problems.append(f"{where}: rule {name!r} has no 'when' (use 'when: {{}}' to always match)")
        when_test: Test | None = None
    else:
        when_problems: list[str] = []
        when_test = _compile(item["when"], item.where("when"), when_problems)
        problems.extend(when_problems)
    description = item.get("description", "")
    if problems or when_test is None or name is None or enabled is False:
        return None, problems
    return Rule(
        name=name,
        where=item.where("name"),
        test=when_test,
        action=action,
        reason=str(reason),
        score=float(score or 0),
        description=str(description),
        challenge=str(challenge),
    ), problems


def rule_files(rules_dir: Path) -> list[Path]:
    return sorted(p for p in rules_dir.glob("*.yaml") if p.is_file())


def load_dir(rules_dir: Path) -> RuleSet:
    """Load every rules file; raise RulesError with every problem of every file."""
    if not rules_dir.is_dir():
        raise RulesError([f"{rules_dir}: rules directory not found"])
    files = rule_files(rules_dir)
    if not files:
        raise RulesError([f"{rules_dir}: no *.yaml rules files"])
    return load_files(files)


def load_files(files: Iterable[Path]) -> RuleSet:
    problems: list[str] = []
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    names = []
    for path in files:
        names.append(str(path))
        try:
            doc = yamlsrc.load_file(path)
        except YamlError as exc:
            problems.append(str(exc))
            continue
        file_rules, file_problems = parse_document(doc, str(path), seen)
        rules.extend(file_rules)
        problems.extend(file_problems)
    if problems:
        raise RulesError(problems)
    return RuleSet(tuple(rules), tuple(names))


def load_text(text: str, filename: str = "<rules>") -> RuleSet:
    try:
        doc = yamlsrc.load_text(text, filename)
    except YamlError as exc:
        raise RulesError([str(exc)]) from None
    rules, problems = parse_document(doc, filename, {})
    if problems:
        raise RulesError(problems)
    return RuleSet(tuple(rules), (filename,))
