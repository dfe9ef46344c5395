"""AGI handlers and the route table, shared by the FastAGI server and the process AGI.

A handler talks to Asterisk through a :class:`Session` and returns an optional *after* job: the
Redis writes that can wait until Asterisk has its answer (counting the call, recording a challenge
outcome). The transport runs it once the channel is released, so writes never delay a call.

Channel variables (the public contract with the dialplan, see config/extensions_callscreen.conf):
SCREEN_ACTION allow|voicemail|block, SCREEN_REASON, SCREEN_RULE, SCREEN_SCORE, SCREEN_NUMBER,
SCREEN_DEGRADED (1/0), which the [callscreen] subroutine splits out of the one SCREEN_RESULT
this module sets; SCREEN_CHALLENGE_CODE while a challenge runs; CALLSCREEN_RESULT for
feature codes (ok|none|error) and CALLSCREEN_HEALTH for the health route (ok|degraded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import redis

from callscreen import challenge, numbers
from callscreen.agi import AGIDeadline, AGIHangup, AGIProtocolError, Session, Transport
from callscreen.config import Config, Line
from callscreen.engine import Decision, Engine
from callscreen.screen import Verdict
from callscreen.store import StoreUnavailable

log = logging.getLogger(__name__)

VAR_VERDICT = "SCREEN_RESULT"  # action|reason|rule|score|number|degraded, split by the dialplan
RESULT_SEPARATOR = "|"
VAR_RESULT = "CALLSCREEN_RESULT"
VAR_HEALTH = "CALLSCREEN_HEALTH"
SOUND_OK = "auth-thankyou"
SOUND_NOTHING = "beeperr"
SOUND_DIRS = (Path("/usr/share/asterisk/sounds"), Path("/var/lib/asterisk/sounds"))
ATTESTATION_VALUES = {"A": "A", "B": "B", "C": "C", "FAILED": "failed", "FAIL": "failed"}

After = Callable[[], None]
Handler = Callable[[Session, Engine], After | None]


def args_of(session: Session) -> list[str]:
    """The AGI() arguments after the route. Asterisk sends every AGI() argument after the script
    as agi_arg_N: FastAGI carries the route in the URL (AGI(agi://h/screen,<did>): agi_arg_1 is
    the did), the process AGI as its first argument (AGI(callscreen.agi,screen,<did>): agi_arg_1
    is 'screen', agi_arg_2 the did)."""
    first = 1 if session.env.get("agi_network") == "yes" else 2
    out = []
    for i in range(first, 32):
        value = session.env.get(f"agi_arg_{i}")
        if value is None:
            break
        out.append(value)
    return out


def route_of(session: Session, fallback: str = "") -> str:
    """FastAGI: agi_network_script ('screen' from agi://host:port/screen?x=y)."""
    script = session.env.get("agi_network_script", "") or fallback
    return script.split("?", 1)[0].strip("/").lower()


def sounds_dir(cfg: Config) -> Path | None:
    if cfg.challenge.sounds_dir:
        return Path(cfg.challenge.sounds_dir)
    for candidate in SOUND_DIRS:
        if candidate.is_dir():
            return candidate
    return None


def set_verdict(session: Session, verdict: Verdict, action: str, reason: str) -> None:
    """The verdict in ONE AGI command: every command is a round trip through Asterisk, and six
    of them cost a third of the server's time per call. The [callscreen] subroutine splits
    SCREEN_RESULT into the six SCREEN_* variables. No field can contain the separator: actions,
    rules and reasons are [a-z0-9_:-], the number is E.164 or 'anonymous', the score a number."""
    fields = (action, reason, verdict.rule, f"{verdict.score:g}", verdict.number,
              "1" if verdict.degraded else "0")
    session.set_var(VAR_VERDICT, RESULT_SEPARATOR.join(f.replace(RESULT_SEPARATOR, "")
                                                       for f in fields))


def _set_verdict_unless_gone(session: Session, verdict: Verdict, action: str,
                             reason: str) -> None:
    """A caller who leaves after the decision (or after typing the code) still made a call:
    the after-job must run and keep the outcome; the dialplan has nothing left to route."""
    try:
        set_verdict(session, verdict, action, reason)
    except AGIHangup:
        log.info("%s hung up before the verdict was set", verdict.number)


def screen(session: Session, engine: Engine) -> After | None:
    env, cfg = session.env, engine.cfg
    args = args_of(session)
    called = (args[0] if args else "") or env.get("agi_dnid", "") or env.get("agi_extension", "")
    line = engine.resolve_line(called, strict=False)
    attestation = ATTESTATION_VALUES.get((args[1] if len(args) > 1 else "").strip().upper(),
                                         "unknown")
    call = engine.make_call(env.get("agi_callerid"), line, attestation=attestation,
                            callingpres=env.get("agi_callingpres"))
    decision = engine.decide(call)
    verdict = decision.verdict
    action, reason = verdict.action, verdict.reason
    outcome = None
    if action == "challenge":
        language = cfg.challenge.language or env.get("agi_language") or (
            line.language if line else cfg.language)
        if language != env.get("agi_language"):
            session.set_var(challenge.VAR_LANGUAGE, language)
        _extend_for_challenge(session, cfg)
        if verdict.challenge == "storm":
            return _storm(session, engine, decision, language)
        result = challenge.run(session, cfg.challenge, language, sounds_dir(cfg))
        outcome = result.outcome
        log.info("challenge %s for %s after %d attempt(s)", outcome, call.caller.display,
                 result.attempts)
        if outcome == "pass":
            action, reason = "allow", "challenge-passed"
        elif outcome == "fail":
            action, reason = cfg.challenge.on_fail, "challenge-failed"
        else:
            return _after(engine, decision, "abandon", "challenge-abandoned", outcome)
    _set_verdict_unless_gone(session, verdict, action, reason)
    log.info("screened %s -> %s (rule %s, reason %s, score %g%s)", call.caller.display, action,
             verdict.rule, reason, verdict.score, ", degraded" if verdict.degraded else "")
    return _after(engine, decision, action, reason, outcome)


def _storm(session: Session, engine: Engine, decision: Decision, language: str) -> After:
    """A caller of a line in a callback storm: explain, press 1 to ring (if the policy allows)."""
    cfg, verdict, call = engine.cfg, decision.verdict, decision.call
    result = challenge.run_storm(session, cfg.challenge, language, sounds_dir(cfg))
    action = "allow" if result.outcome == "pressed-1" and cfg.storm.press1 == "allow" else (
        "voicemail")
    if result.outcome != "abandon":
        _set_verdict_unless_gone(session, verdict, action, "storm")
    log.info("storm on %s: %s heard the explanation, %s -> %s", call.line.did if call.line
             else "?", call.caller.display, result.outcome, action)

    def job() -> None:
        final = replace(decision, verdict=replace(verdict, action=action, reason="storm"))
        engine.record(final)
        if engine.store is not None and call.line is not None:
            try:
                engine.store.storm_evidence_add(call.line.did, call.caller.e164,
                                                call.at.timestamp(), result.heard,
                                                f"{result.outcome}:{action}")
            except Exception as exc:  # noqa: BLE001 - best effort after the call moved on
                log.warning("could not keep storm evidence: %s", exc)

    return job


def _after(engine: Engine, decision: Decision, action: str, reason: str,
           outcome: str | None) -> After:
    def job() -> None:
        final = replace(decision, verdict=replace(decision.verdict, action=action, reason=reason))
        engine.record(final)
        call = decision.call
        if outcome and call.caller.e164 and engine.store is not None:
            try:
                engine.store.durable(
                    "challenge_outcome", e164=call.caller.e164,
                    line=call.line.did if call.line else None, outcome=outcome,
                    now=call.at.timestamp(), trust_days=engine.cfg.challenge.trust_days)
            except Exception as exc:  # noqa: BLE001 - best effort after the call moved on
                log.warning("could not record challenge %s for %s: %s", outcome,
                            call.caller.display, exc)

    return job


def _feature_line(session: Session, engine: Engine) -> Line | None:
    """The line a feature code acts for: the first argument, or the only configured line."""
    args = args_of(session)
    if args and args[0]:
        return engine.resolve_line(args[0], strict=False)
    if len(engine.cfg.lines) == 1:
        return engine.cfg.lines[0]
    return None


def _last_caller(session: Session, engine: Engine) -> tuple[Line, str, str] | None:
    """(line, number, reason) of the last call this line received within the report window;
    plays the "nothing to do" tone when there is none."""
    line = _feature_line(session, engine)
    last = engine.store.last_caller(line.did) if line and engine.store else None
    window_s = engine.cfg.features.report_window_minutes * 60
    if line is None or engine.store is None:
        log.warning("feature code: no line (pass the DID as argument or configure one line)")
    elif last is not None and numbers.is_e164(last[1]) and time.time() - last[0] <= window_s:
        return line, last[1], last[3]
    _feedback(session, "none")
    return None


def _feature_code(handler: Handler) -> Handler:
    """A feature code needs Redis (the last caller lives there): when it cannot answer, the
    person hears the error tone and can try again; nothing is remembered locally."""
    def run(session: Session, engine: Engine) -> After | None:
        try:
            return handler(session, engine)
        except (redis.RedisError, StoreUnavailable) as exc:
            log.warning("%s: store unavailable (%s): nothing recorded", handler.__name__, exc)
            _feedback(session, "unavailable")
            return None

    run.__doc__ = handler.__doc__
    return run


@_feature_code
def report(session: Session, engine: Engine) -> After | None:
    """*60: report the last caller received on this line (never a typed number)."""
    found = _last_caller(session, engine)
    if found is None or engine.store is None:
        return None
    line, number, reason = found
    rep = engine.cfg.reputation
    weight = rep.report_weight
    attestation = engine.store.recent_attestation(line.did)
    if reason == "storm":
        # A person calling back the victim of a spoofing campaign is not a spammer.
        weight = 0.0
    elif attestation == "C":
        weight *= rep.weight_attestation_c
    elif attestation == "failed":
        weight *= rep.weight_failed_verification
    if weight > 0:
        counted, why = engine.store.vote(number, line.did, time.time(), weight)
        log.info("line %s reported %s (weight %g): %s", line.did, number, weight,
                 "counted" if counted else why)
    else:
        log.info("line %s: %s called during a storm, report not counted", line.did, number)
    _feedback(session, "ok")
    return None


@_feature_code
def allow(session: Session, engine: Engine) -> After | None:
    """*61: put the last caller on this line's allowlist."""
    found = _last_caller(session, engine)
    if found is None or engine.store is None:
        return None
    line, number, _reason = found
    engine.store.list_add("allow", number, line.did, None, "feature-code")
    log.info("line %s allowed %s", line.did, number)
    _feedback(session, "ok")
    return None


def learn(session: Session, engine: Engine) -> After | None:
    """Outbound hook: the dialled number becomes a contact of the line(s)."""
    args = args_of(session)
    dialled = args[0] if args else ""
    digits = "".join(ch for ch in dialled if ch.isascii() and ch.isdigit())
    if digits and digits in engine.cfg.emergency_numbers:
        session.set_var(VAR_RESULT, "emergency")
        minutes = engine.cfg.emergency.minutes

        def emergency_job() -> None:
            log.warning("emergency number %s dialled: every call rings for %d minutes",
                        digits, minutes)
            if engine.store is not None:
                engine.store.emergency_start(time.time(), minutes, digits)

        return emergency_job
    facts = numbers.normalise(dialled, engine.cfg.region, strip_prefixes=engine.cfg.strip_prefixes)
    if facts.e164 is None or not facts.possible:
        session.set_var(VAR_RESULT, "none")
        return None
    line = engine.resolve_line(args[1], strict=False) if len(args) > 1 and args[1] else None
    lines = [line] if line else list(engine.cfg.lines)
    session.set_var(VAR_RESULT, "ok" if lines else "none")
    e164 = facts.e164

    def job() -> None:
        if engine.store is None:
            return
        ttl = engine.cfg.features.contact_days * 86400
        for target in lines:
            try:
                engine.store.durable("add_contact", line=target.did, e164=e164,
                                     now=time.time(), ttl_s=ttl, source="outbound")
            except Exception as exc:  # noqa: BLE001 - best effort after the call moved on
                log.warning("could not learn contact %s for %s: %s", e164, target.did, exc)

    return job


def health(session: Session, engine: Engine) -> After | None:
    ok = False
    if engine.store is not None:
        try:
            ok = bool(engine.store.r.ping())
        except Exception:  # noqa: BLE001 - health reports, never raises
            ok = False
    session.set_var(VAR_HEALTH, "ok" if ok else "degraded")
    return None


def _feedback(session: Session, result: str) -> None:
    session.set_var(VAR_RESULT, result)
    session.execute("ANSWER")
    session.play(SOUND_OK if result == "ok" else SOUND_NOTHING)


ROUTES: dict[str, Handler] = {
    "screen": screen,
    "report": report,
    "allow": allow,
    "learn": learn,
    "health": health,
}


@dataclass
class Outcome:
    route: str
    ok: bool
    error: str = ""
    after: After | None = None


def dispatch(session: Session, engine: Engine, route: str) -> Outcome:
    """Run one route; never raises. On a crash the screen route still sets the fail action."""
    handler = ROUTES.get(route)
    if handler is None:
        log.warning("unknown AGI route %r: the call continues", route[:40])
        return Outcome(route, False, "unknown route")
    try:
        return Outcome(route, True, after=handler(session, engine))
    except AGIHangup as exc:
        log.info("%s: channel hung up (%s)", route, exc)
        return Outcome(route, False, "hangup")
    except (AGIDeadline, AGIProtocolError) as exc:
        log.warning("%s: AGI problem: %s", route, exc)
        return Outcome(route, False, str(exc))
    except Exception as exc:
        log.exception("%s handler crashed", route)
        if route == "screen":
            _fail_safe(session, engine.cfg)
        return Outcome(route, False, f"crash: {type(exc).__name__}")


def _fail_safe(session: Session, cfg: Config) -> None:
    """After a crash, still hand the dialplan a verdict (the fail mode), if the channel is up."""
    action = "allow" if cfg.fail_action == "challenge" else cfg.fail_action
    try:
        session.set_var(VAR_VERDICT, f"{action}|error|fail-mode|0|anonymous|1")
    except Exception:  # noqa: BLE001 - the dialplan default covers us
        log.warning("could not set the fail-safe verdict; the dialplan default applies")


def deadline_for(cfg: Config, route: str) -> float:
    """Seconds a call may stay in a route before any challenge (config: server.call_deadline_s)."""
    return float(cfg.server.call_deadline_s)


def challenge_budget(cfg: Config) -> float:
    """Seconds a challenge may add once it starts: per attempt, intro/retry prompt (~5 s) + code
    (~1 s a digit) + the digit timeout."""
    c = cfg.challenge
    return c.attempts * (8 + c.digits + c.timeout_ms / 1000) + 5


def _extend_for_challenge(session: Session, cfg: Config) -> None:
    session.deadline = max(session.deadline, time.monotonic() + challenge_budget(cfg))


def run(transport: Transport, engine_of: Callable[[], Engine], route_hint: str = "",
        on_session: Callable[[Session], None] | None = None) -> Outcome:
    """One AGI connection from start to end, whatever the transport. Never raises.

    on_session: called with the session once its env is read (the server's watchdog follows
    session.deadline, which a challenge extends)."""
    started = time.monotonic()
    try:
        session = Session(transport, deadline_s=60.0)
    except (AGIHangup, AGIDeadline, AGIProtocolError) as exc:
        log.warning("AGI session not started: %s", exc)
        transport.close()
        return Outcome("", False, str(exc))
    if on_session is not None:
        on_session(session)
    engine = engine_of()  # taken once: a reload during the call does not change its rules
    route = route_of(session, route_hint)
    session.deadline = started + deadline_for(engine.cfg, route)
    outcome = dispatch(session, engine, route)
    transport.close()  # release the channel before the writes that can wait
    if outcome.after is not None:
        try:
            outcome.after()
        except Exception:
            log.exception("%s: after-call job failed", route)
    return outcome
