"""The screening engine: raw call data in, verdict out, outcome recorded after.

This is the one place that strings the rooms together (numbers -> store -> screen), so the CLI's
``check`` and the AGI handlers run exactly the same code. Deciding never writes; recording is a
separate step that the caller runs after acting on the verdict.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from callscreen import notify, numbers
from callscreen.config import Config, Line
from callscreen.rules import RuleSet
from callscreen.screen import Call, Verdict, decide
from callscreen.store import Store, StoreFacts, StoreUnavailable

log = logging.getLogger(__name__)


class UnknownLine(ValueError):
    """The called number is not one of our lines."""


@dataclass(frozen=True)
class Decision:
    call: Call
    facts: StoreFacts | None
    verdict: Verdict
    store_error: str | None = None


class Engine:
    def __init__(self, cfg: Config, ruleset: RuleSet, store: Store | None):
        self.cfg = cfg
        self.ruleset = ruleset
        self.store = store

    def resolve_line(self, called: str | None, *, strict: bool) -> Line | None:
        """Map the called number (any notation) to one of our lines.

        strict: an unknown DID is an error (CLI); otherwise it is screened without line facts.
        With no lines configured, any valid called number acts as an ad-hoc line.
        """
        if not called:
            return None
        facts = numbers.normalise(called, self.cfg.region, strip_prefixes=self.cfg.strip_prefixes)
        line = self.cfg.line_for(facts.e164)
        if line is not None:
            return line
        # A national DID of a line in another country (a US line on a French PBX).
        for country in {ln.country for ln in self.cfg.lines if ln.country != self.cfg.region}:
            if country is None:
                continue
            other = numbers.normalise(called, country, strip_prefixes=self.cfg.strip_prefixes)
            line = self.cfg.line_for(other.e164)
            if line is not None:
                return line
        if not self.cfg.lines and facts.e164 and facts.possible:
            return Line(facts.e164, facts.e164, self.cfg.timezone, self.cfg.language, facts)
        if strict:
            known = ", ".join(ln.did for ln in self.cfg.lines) or "none"
            raise UnknownLine(f"'{called}' is not one of our lines (configured: {known})")
        return None

    def make_call(
        self,
        raw_caller: str | None,
        line: Line | None,
        at: dt.datetime | None = None,
        attestation: str = "unknown",
        callingpres: str | None = None,
    ) -> Call:
        # A trunk delivering calls to a line sends national numbers of the line's country.
        region = (line.country if line is not None else None) or self.cfg.region
        caller = numbers.normalise(
            raw_caller, region, callingpres=callingpres,
            strip_prefixes=self.cfg.strip_prefixes,
        )
        when = at or dt.datetime.now(dt.UTC)
        return Call(caller=caller, line=line, at=when, attestation=attestation)

    def decide(self, call: Call) -> Decision:
        facts: StoreFacts | None = None
        error = None
        if self.store is None:
            error = "no store configured"
        else:
            try:
                facts = self.store.facts(
                    call.caller.e164, call.line.did if call.line else None, call.at.timestamp()
                )
            except StoreUnavailable as exc:
                error = str(exc)
                log.warning("store unavailable, deciding by fail mode: %s", exc)
        verdict = decide(call, facts, self.ruleset, self.cfg)
        return Decision(call, facts, verdict, error)

    def record(self, decision: Decision) -> bool:
        """Count the call and index it; never raises (a failed write must not touch the call).

        Storm transitions detected while recording are announced (log, AMI, command)."""
        if self.store is None:
            return False
        call, verdict, facts = decision.call, decision.verdict, decision.facts
        line = call.line.did if call.line else None
        # Unknown = nobody this line knows: what a callback storm is made of.
        unknown = facts is not None and not (facts.contact or facts.trusted or facts.allowlisted)
        neighbour = bool(call.line and numbers.is_neighbour(
            call.caller, call.line.facts, self.cfg.neighbour_digits))
        try:
            transition = self.store.durable(
                "record_call", e164=call.caller.e164, line=line,
                now=call.at.timestamp() if call.at else time.time(), action=verdict.action,
                reason=verdict.reason, unknown=unknown and call.caller.e164 is not None,
                neighbour=neighbour, attestation=call.attestation,
            )
            if transition is None:
                return False  # spooled: applied when Redis is back
        except Exception as exc:  # noqa: BLE001 - recording is best effort on the call path
            log.warning("could not record call from %s: %s", call.caller.display, exc)
            return False
        if transition and line:
            self.announce_storm("start" if transition == "started" else "end", line)
        return True

    def announce_storm(self, state: str, line: str) -> None:
        callers = 0
        if self.store is not None and state == "start":
            try:
                callers = int(self.store.storm_state(line).get("callers", 0))
            except Exception:  # noqa: BLE001 - the notice matters more than the count
                callers = 0
        notify.storm(self.cfg.storm, state, line, callers)
