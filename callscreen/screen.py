"""The decision: Call + Facts + rules -> Verdict (pure: no I/O, no side effects).

Order: rules in file order; the first matching rule with an ``action`` wins. Rules with a
``score`` add to the caller's reputation score as they match. If no terminal rule matched, the
total score meets the thresholds (block, then voicemail, then challenge); otherwise the default
action. When the store was unavailable, store conditions are unknown (never match), the verdict is
``degraded`` and the fail mode replaces the default action.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from callscreen.config import Config, Line
from callscreen.numbers import NumberFacts
from callscreen.rules import EvalContext, RuleSet
from callscreen.store import StoreFacts


@dataclass(frozen=True)
class Call:
    caller: NumberFacts
    line: Line | None
    at: dt.datetime  # timezone-aware
    attestation: str = "unknown"  # A | B | C | failed | unknown


@dataclass(frozen=True)
class TraceStep:
    rule: str
    matched: bool | None  # None: could not tell (store unavailable)
    detail: str
    effect: str = ""  # "action voicemail", "score +20", ""

    def __str__(self) -> str:
        mark = {True: "match", False: "no", None: "unknown"}[self.matched]
        effect = f" -> {self.effect}" if self.effect else ""
        return f"{self.rule:<28} {mark:<7} {self.detail}{effect}"


@dataclass(frozen=True)
class Verdict:
    action: str  # allow | challenge | voicemail | block
    rule: str  # the rule that decided, or "threshold:<name>", "default", "fail-mode"
    reason: str
    score: float
    degraded: bool
    trace: tuple[TraceStep, ...] = field(default=())
    number: str = "anonymous"
    challenge: str = "digits"  # kind of challenge when action == "challenge"


def decide(call: Call, facts: StoreFacts | None, ruleset: RuleSet, cfg: Config) -> Verdict:
    ctx = EvalContext(call.caller, call.line, call.at, cfg, facts, call.attestation)
    degraded = facts is None
    score = facts.record.score if facts is not None else 0.0
    trace: list[TraceStep] = []
    number = call.caller.display

    for rule in ruleset.rules:
        matched, detail = rule.test(ctx)
        if not matched:
            trace.append(TraceStep(rule.name, matched, detail))
            continue
        if rule.action is not None:
            trace.append(TraceStep(rule.name, True, detail, f"action {rule.action}"))
            return Verdict(rule.action, rule.name, rule.reason, round(score, 2), degraded,
                           tuple(trace), number, rule.challenge)
        score += rule.score
        trace.append(TraceStep(rule.name, True, detail, f"score {rule.score:+g}"))

    t = cfg.thresholds
    for action, limit in (("block", t.block), ("voicemail", t.voicemail),
                          ("challenge", t.challenge)):
        if score >= limit:
            trace.append(TraceStep(f"threshold:{action}", True, f"score {score:g} >= {limit:g}",
                                   f"action {action}"))
            return Verdict(action, f"threshold:{action}", "score", round(score, 2), degraded,
                           tuple(trace), number)

    if degraded:
        action = cfg.fail_action
        trace.append(TraceStep("fail-mode", True, f"store unavailable, fail_mode={cfg.fail_mode}",
                               f"action {action}"))
        return Verdict(action, "fail-mode", "degraded", round(score, 2), True, tuple(trace),
                       number)
    trace.append(TraceStep("default", True, "no rule decided", f"action {cfg.default_action}"))
    return Verdict(cfg.default_action, "default", "default", round(score, 2), False,
                   tuple(trace), number)
