"""AGI handlers end to end: the real routes over a socketpair with the fake Asterisk on the other
end (handlers.run(SocketTransport(sock), lambda: engine)), on the real session Redis.

Verdict variables are read as the dialplan sees them after the [callscreen] subroutine
(FakeAsterisk.screen_vars): the screener may answer with six SET VARIABLE commands or with one
SCREEN_RESULT that the subroutine splits; the contract is the six SCREEN_* variables either way.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import redis
from fake_asterisk import (
    HANGUP,
    SCREEN_FIELDS,
    TIMEOUT,
    Channel,
    FakeAsterisk,
    by_verb,
    fastagi_env,
    run_direct,
    type_code,
    typed,
)
from support import RedisServer, lines_config

from callscreen import challenge
from callscreen.agi import SocketTransport
from callscreen.config import Config
from callscreen.engine import Engine
from callscreen.rules import Rule, RuleSet
from callscreen.store import Record, Store, StoreFacts

LINE = "+33199000001"
LINE_US = "+12025550100"
ORDINARY = "+33353010001"
NEIGHBOUR = "+33199000002"
INVALID = "+33639980001"  # FR 06 39 98: invalid on purpose
BUDGET_S = 2.0  # Redis socket/connect timeouts are 200 ms; generous for a loaded machine
LINES_YAML = """
region: FR
lines:
  - {number: "01 99 00 00 01", name: home, timezone: Europe/Paris}
  - {number: "+12025550100", name: us-office, timezone: America/New_York}
"""


def env(caller: str = ORDINARY, route: str = "screen", args: tuple[str, ...] = ("0199000001",),
        **channel: Any) -> bytes:
    return fastagi_env(route, args, Channel(callerid=caller, **channel))


def facts(store: Store | None, number: str, line: str | None = LINE) -> StoreFacts:
    assert store is not None
    return store.facts(number, line, time.time())


def record(store: Store | None, number: str) -> Record:
    return facts(store, number, None).record


def shift(code: str) -> str:
    """A wrong code: every digit moved by one."""
    return "".join(str((int(d) + 1) % 10) for d in code)


# -- screen -------------------------------------------------------------------------------------


def test_ordinary_caller_gets_the_six_variables_and_is_recorded_after_release(
        engine: Engine) -> None:
    at_release: dict[str, int] = {}

    class Probe(SocketTransport):
        """Looks at Redis at the moment the channel is released to Asterisk."""

        def close(self) -> None:
            at_release["calls"] = record(engine.store, ORDINARY).calls
            super().close()

    outcome, peer = run_direct(engine, env(ORDINARY), transport_cls=Probe)
    assert outcome.ok and outcome.route == "screen" and outcome.error == ""
    assert set(peer.verbs) == {"SET VARIABLE"}
    assert set(peer.dialplan_view()) == set(SCREEN_FIELDS)
    assert peer.screen_vars() == {
        "SCREEN_ACTION": "allow", "SCREEN_REASON": "default", "SCREEN_RULE": "default",
        "SCREEN_SCORE": "0", "SCREEN_NUMBER": ORDINARY, "SCREEN_DEGRADED": "0",
    }
    assert peer.eof  # we closed the conversation: Asterisk continues the dialplan
    assert at_release["calls"] == 0  # nothing written before Asterisk had its answer
    assert record(engine.store, ORDINARY).calls == 1
    assert engine.store is not None
    last = engine.store.last_caller(LINE)
    assert last is not None and last[1:] == (ORDINARY, "allow", "default")


def test_national_caller_id_is_normalised(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env("0353010001"))
    assert peer.screen_vars()["SCREEN_NUMBER"] == ORDINARY


def test_route_with_query_and_slashes_is_screen(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(route="/Screen?line=1"))
    assert outcome.route == "screen" and peer.screen_vars()["SCREEN_ACTION"] == "allow"


def test_line_from_dnid_when_no_argument(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(NEIGHBOUR, args=()))
    assert peer.screen_vars()["SCREEN_RULE"] == "neighbour-spoofing"  # the line was found


def test_blocklisted_caller_is_blocked(engine: Engine) -> None:
    assert engine.store is not None
    engine.store.list_add("block", ORDINARY, None, None, "test")
    outcome, peer = run_direct(engine, env(ORDINARY))
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_RULE"], v["SCREEN_REASON"]) == (
        "block", "blocklist", "blocklisted")
    assert "ANSWER" not in peer.verbs
    assert record(engine.store, ORDINARY).calls == 1


HOSTILE_NAME = b'Bob "\\" \\\\ \'; EXEC System "rm -rf /" \r\x00 \xff'


def test_hostile_caller_name_sends_no_extra_command(engine: Engine) -> None:
    # The name cannot carry a newline inside the env (it would end the line): what follows it
    # arrives as a separate, foreign env line, which must be ignored too.
    block = env(ORDINARY, calleridname=HOSTILE_NAME)
    block = block.replace(b"agi_callingpres", b'EXEC System "rm -rf /"\nagi_callingpres', 1)
    outcome, peer = run_direct(engine, block)
    assert outcome.ok
    assert set(peer.verbs) == {"SET VARIABLE"}
    for cmd in peer.commands:
        assert len(cmd.argv) == 4, cmd.line  # SET VARIABLE <name> <one value>
        assert "EXEC" not in cmd.line
    assert peer.received.count(b"\n") == len(peer.commands)
    assert peer.screen_vars()["SCREEN_ACTION"] == "allow"


def test_hostile_caller_id_sends_no_extra_command(engine: Engine) -> None:
    hostile = '+33353010001" \\"\tEXEC System "rm -rf /'
    outcome, peer = run_direct(engine, env(hostile), by_verb({"GET DATA": TIMEOUT}))
    assert outcome.ok
    assert not any(c.verb not in ("SET VARIABLE", "ANSWER", "STREAM FILE", "SAY DIGITS",
                                  "GET DATA") for c in peer.commands), peer.lines
    assert all("EXEC" not in c.line for c in peer.commands)
    number = peer.screen_vars()["SCREEN_NUMBER"]
    assert number == "anonymous" or number.startswith("+")


# -- challenge ----------------------------------------------------------------------------------


def test_neighbour_passes_the_challenge_and_is_trusted(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(NEIGHBOUR), by_verb({"GET DATA": type_code()}))
    assert outcome.ok
    assert peer.verbs[:5] == ["ANSWER", "SET VARIABLE", "STREAM FILE", "SAY DIGITS", "GET DATA"]
    code_cmd = peer.commands[1]
    assert code_cmd.argv[2] == challenge.VAR_CODE
    code = code_cmd.argv[3]
    assert len(code) == engine.cfg.challenge.digits and code.isdigit()
    assert peer.commands[3].argv[2] == code  # SAY DIGITS <code>
    assert peer.commands[4].argv[2:] == ["beep", str(engine.cfg.challenge.timeout_ms),
                                         str(len(code))]
    assert peer.variables[challenge.VAR_CODE] == ""  # cleared once typed
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"], v["SCREEN_RULE"]) == (
        "allow", "challenge-passed", "neighbour-spoofing")
    f = facts(engine.store, NEIGHBOUR)
    assert f.trusted and f.record.passes == 1 and f.record.fails == 0
    # the next call from them rings at once, without a challenge
    outcome, peer = run_direct(engine, env(NEIGHBOUR))
    assert set(peer.verbs) == {"SET VARIABLE"}
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_RULE"]) == ("allow", "passed-challenge")


def test_trust_is_per_line(engine: Engine) -> None:
    run_direct(engine, env(NEIGHBOUR), by_verb({"GET DATA": type_code()}))
    assert facts(engine.store, NEIGHBOUR, LINE).trusted
    assert not facts(engine.store, NEIGHBOUR, LINE_US).trusted


def test_digits_typed_during_the_prompts_count(engine: Engine) -> None:
    """Digits pressed during STREAM FILE / SAY DIGITS interrupt them (result = ASCII code)."""

    def code(peer: FakeAsterisk) -> str:
        return peer.variables[challenge.VAR_CODE]

    respond = by_verb({
        "STREAM FILE": lambda c, p: (f"200 result={ord(code(p)[0])} endpos=100"
                                     if c.argv[2].endswith("challenge-intro") else
                                     "200 result=0 endpos=8000"),
        "SAY DIGITS": lambda c, p: f"200 result={ord(code(p)[1])}",
        "GET DATA": lambda c, p: typed(code(p)[2:]),
    })
    outcome, peer = run_direct(engine, env(NEIGHBOUR), respond)
    get_data = [c for c in peer.commands if c.verb == "GET DATA"]
    assert len(get_data) == 1 and get_data[0].argv[-1] == "1"  # only the missing digit asked
    assert peer.screen_vars()["SCREEN_REASON"] == "challenge-passed"


def test_wrong_digits_twice_goes_to_voicemail(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(NEIGHBOUR), by_verb({"GET DATA": type_code(shift)}))
    assert peer.verbs.count("GET DATA") == engine.cfg.challenge.attempts == 2
    retry = [c for c in peer.commands if c.verb == "STREAM FILE"][1]
    assert retry.argv[2] == "callscreen/challenge-retry"
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"]) == (engine.cfg.challenge.on_fail,
                                                       "challenge-failed")
    assert v["SCREEN_ACTION"] == "voicemail"
    f = facts(engine.store, NEIGHBOUR)
    assert f.record.fails == 1 and f.record.passes == 0 and not f.trusted


def test_wrong_then_right_passes(engine: Engine) -> None:
    attempts: list[int] = []

    def respond(cmd: Any, peer: FakeAsterisk) -> str:
        attempts.append(1)
        code = peer.variables[challenge.VAR_CODE]
        return typed(shift(code) if len(attempts) == 1 else code)

    outcome, peer = run_direct(engine, env(NEIGHBOUR), by_verb({"GET DATA": respond}))
    assert len(attempts) == 2
    assert peer.screen_vars()["SCREEN_REASON"] == "challenge-passed"


def test_on_fail_block(engine: Engine) -> None:
    eng = Engine(replace(engine.cfg, challenge=replace(engine.cfg.challenge, on_fail="block")),
                 engine.ruleset, engine.store)
    outcome, peer = run_direct(eng, env(NEIGHBOUR))
    assert peer.screen_vars()["SCREEN_ACTION"] == "block"


def test_silence_goes_to_voicemail(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(NEIGHBOUR), by_verb({"GET DATA": TIMEOUT}))
    assert peer.verbs.count("GET DATA") == 2
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"]) == ("voicemail", "challenge-failed")
    assert record(engine.store, NEIGHBOUR).fails == 1


def test_hangup_during_get_data_is_an_abandon(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(NEIGHBOUR), by_verb({"GET DATA": HANGUP}))
    assert outcome.ok  # an outcome, not a crash
    assert peer.verbs[-1] == "GET DATA"  # nothing sent after the hangup
    assert peer.screen_vars().get("SCREEN_ACTION", "") == ""  # the dialplan default applies
    rec = record(engine.store, NEIGHBOUR)
    assert rec.abandons == 1 and rec.passes == 0 and rec.fails == 0
    assert engine.store is not None
    last = engine.store.last_caller(LINE)
    assert last is not None and last[1:3] == (NEIGHBOUR, "abandon")


def test_dead_channel_result_during_get_data_is_an_abandon(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(NEIGHBOUR), by_verb({"GET DATA": "200 result=-1"}))
    assert record(engine.store, NEIGHBOUR).abandons == 1


def test_hangup_after_typing_the_right_code_is_still_a_pass(engine: Engine) -> None:
    respond = by_verb({
        "GET DATA": type_code(),
        "STREAM FILE": lambda c, p: HANGUP if c.argv[2].endswith("thanks") else
        "200 result=0 endpos=8000",
    })
    run_direct(engine, env(NEIGHBOUR), respond)
    f = facts(engine.store, NEIGHBOUR)
    assert f.record.abandons == 0
    assert f.record.passes == 1 and f.trusted


def test_challenge_language_follows_the_config(engine: Engine) -> None:
    eng = Engine(replace(engine.cfg, challenge=replace(engine.cfg.challenge, language="fr")),
                 engine.ruleset, engine.store)
    outcome, peer = run_direct(eng, env(NEIGHBOUR, language="en"))
    assert peer.commands[0].argv == ["SET", "VARIABLE", "CHANNEL(language)", "fr"]
    assert peer.verbs[1] == "ANSWER"


def test_storm_caller_pressing_1_rings(engine: Engine) -> None:
    assert engine.store is not None
    engine.store.storm_start(LINE, time.time())
    respond = by_verb({"GET DATA": typed("1")})
    outcome, peer = run_direct(engine, env(ORDINARY), respond)
    assert peer.verbs[:3] == ["ANSWER", "STREAM FILE", "GET DATA"]
    assert peer.commands[1].argv[2] == "callscreen/storm-explain"
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"]) == ("allow", "storm")
    evidence = engine.store.storm_evidence(LINE)
    assert evidence and evidence[-1]["caller"] == ORDINARY


def test_storm_caller_pressing_nothing_goes_to_voicemail(engine: Engine) -> None:
    assert engine.store is not None
    engine.store.storm_start(LINE, time.time())
    outcome, peer = run_direct(engine, env(ORDINARY))
    assert peer.screen_vars()["SCREEN_ACTION"] == "voicemail"


# -- failures -----------------------------------------------------------------------------------


def stopped_redis_engine(own_redis: RedisServer, shipped_rules: RuleSet) -> Engine:
    cfg = lines_config(own_redis.url, LINES_YAML)
    own_redis.stop()
    return Engine(cfg, shipped_rules, Store.from_config(cfg))


def test_redis_down_fails_open_within_budget(own_redis: RedisServer,
                                             shipped_rules: RuleSet) -> None:
    eng = stopped_redis_engine(own_redis, shipped_rules)
    started = time.monotonic()
    outcome, peer = run_direct(eng, env(ORDINARY))
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_S, elapsed
    assert outcome.ok
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_DEGRADED"], v["SCREEN_RULE"]) == (
        "allow", "1", "fail-mode")


@pytest.mark.parametrize("route", ["report", "allow"])
def test_feature_codes_with_redis_down_play_the_error_tone(own_redis: RedisServer,
                                                           shipped_rules: RuleSet,
                                                           route: str) -> None:
    eng = stopped_redis_engine(own_redis, shipped_rules)
    started = time.monotonic()
    outcome, peer = run_direct(eng, env(LINE, route=route, args=(LINE,)))
    assert time.monotonic() - started < BUDGET_S
    assert outcome.ok  # handled, not a crash
    assert peer.variables == {"CALLSCREEN_RESULT": "unavailable"}
    assert peer.verbs == ["SET VARIABLE", "ANSWER", "STREAM FILE"]
    assert peer.commands[-1].argv[2] == "beeperr"


def test_redis_down_still_challenges_what_needs_no_redis(own_redis: RedisServer,
                                                         shipped_rules: RuleSet) -> None:
    eng = stopped_redis_engine(own_redis, shipped_rules)
    started = time.monotonic()
    outcome, peer = run_direct(eng, env(INVALID), by_verb({"GET DATA": type_code()}))
    assert time.monotonic() - started < BUDGET_S
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"], v["SCREEN_DEGRADED"]) == (
        "allow", "challenge-passed", "1")


def boom(_ctx: Any) -> tuple[bool | None, str]:
    raise RuntimeError("a rule that crashes")


@pytest.mark.parametrize(("fail_mode", "action"), [("open", "allow"), ("closed", "voicemail"),
                                                   ("challenge", "allow")])
def test_handler_crash_sets_the_fail_action(engine: Engine, shipped_rules: RuleSet,
                                            fail_mode: str, action: str) -> None:
    crashing = Rule(name="crash", where="test:1", test=boom, action="allow", reason="x",
                    score=0.0)
    eng = Engine(replace(engine.cfg, fail_mode=fail_mode),
                 RuleSet((crashing, *shipped_rules.rules), ("test",)), engine.store)
    outcome, peer = run_direct(eng, env(ORDINARY))
    assert not outcome.ok and outcome.error == "crash: RuntimeError"
    assert set(peer.verbs) == {"SET VARIABLE"}
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"], v["SCREEN_RULE"], v["SCREEN_DEGRADED"]) == (
        action, "error", "fail-mode", "1")


def test_unknown_route_sends_nothing(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(route="nosuch"))
    assert not outcome.ok and outcome.error == "unknown route"
    assert peer.commands == [] and peer.eof


def test_no_route_at_all_sends_nothing(engine: Engine) -> None:
    block = fastagi_env("", ("0199000001",))
    outcome, peer = run_direct(engine, block)
    assert not outcome.ok and peer.commands == []


def test_hangup_before_the_verdict_is_not_a_crash(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(ORDINARY), lambda c, p: HANGUP)
    assert not outcome.error.startswith("crash")
    assert len(peer.commands) == 1  # no retry and no fail-safe verdict on a gone channel


def test_520_on_set_variable_is_not_a_crash(engine: Engine) -> None:
    from fake_asterisk import USAGE_520

    outcome, peer = run_direct(engine, env(ORDINARY), lambda c, p: USAGE_520)
    assert not outcome.ok and "520" in outcome.error
    assert len(peer.commands) == 1  # gave up on the first error, no retry storm


# -- feature codes and the outbound hook --------------------------------------------------------


def test_report_last_caller(engine: Engine) -> None:
    run_direct(engine, env(ORDINARY))
    outcome, peer = run_direct(engine, env(LINE, route="report", args=(LINE,)))
    assert outcome.ok
    assert peer.variables == {"CALLSCREEN_RESULT": "ok"}
    assert peer.verbs == ["SET VARIABLE", "ANSWER", "STREAM FILE"]
    assert peer.commands[2].argv[2] == "auth-thankyou"
    rec = record(engine.store, ORDINARY)
    assert rec.reports == 1 and rec.score > 0


def test_report_with_the_national_line_number(engine: Engine) -> None:
    run_direct(engine, env(ORDINARY))
    outcome, peer = run_direct(engine, env(LINE, route="report", args=("0199000001",)))
    assert peer.variables == {"CALLSCREEN_RESULT": "ok"}
    assert record(engine.store, ORDINARY).reports == 1


def test_report_with_no_recent_caller(engine: Engine) -> None:
    run_direct(engine, env(ORDINARY))  # a call to the FR line, not the US one
    outcome, peer = run_direct(engine, env(LINE_US, route="report", args=(LINE_US,)))
    assert peer.variables == {"CALLSCREEN_RESULT": "none"}
    assert peer.commands[-1].argv[2] == "beeperr"
    assert record(engine.store, ORDINARY).reports == 0


def test_report_without_a_line_among_several_is_none(engine: Engine) -> None:
    run_direct(engine, env(ORDINARY))
    outcome, peer = run_direct(engine, env(LINE, route="report", args=()))
    assert peer.variables == {"CALLSCREEN_RESULT": "none"}
    assert record(engine.store, ORDINARY).reports == 0


def test_allow_last_caller(engine: Engine) -> None:
    caller = "+33353010003"
    run_direct(engine, env(caller))
    outcome, peer = run_direct(engine, env(LINE, route="allow", args=(LINE,)))
    assert peer.variables == {"CALLSCREEN_RESULT": "ok"}
    assert facts(engine.store, caller).allow_line == caller
    assert not facts(engine.store, caller, LINE_US).allowlisted
    outcome, peer = run_direct(engine, env(caller))
    assert peer.screen_vars()["SCREEN_RULE"] == "allowlist"


def test_learn_makes_a_contact_of_every_line(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(LINE, route="learn", args=("0353010002",)))
    assert outcome.ok and peer.variables == {"CALLSCREEN_RESULT": "ok"}
    assert facts(engine.store, "+33353010002", LINE).contact
    assert facts(engine.store, "+33353010002", LINE_US).contact
    outcome, peer = run_direct(engine, env("+33353010002"))
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_RULE"]) == ("allow", "known-contact")


def test_learn_for_one_line(engine: Engine) -> None:
    run_direct(engine, env(LINE, route="learn", args=("0353010004", "0199000001")))
    assert facts(engine.store, "+33353010004", LINE).contact
    assert not facts(engine.store, "+33353010004", LINE_US).contact


def test_learn_a_neighbour_skips_the_challenge(engine: Engine) -> None:
    run_direct(engine, env(LINE, route="learn", args=("0199000002",)))
    outcome, peer = run_direct(engine, env(NEIGHBOUR))
    assert "ANSWER" not in peer.verbs
    assert peer.screen_vars()["SCREEN_RULE"] == "known-contact"


@pytest.mark.parametrize("dialled", ["123", "", "abc"])
def test_learn_nothing_learnable(engine: Engine, dialled: str) -> None:
    outcome, peer = run_direct(engine, env(LINE, route="learn", args=(dialled,)))
    assert peer.variables == {"CALLSCREEN_RESULT": "none"}


def test_learn_emergency_number_lets_every_call_ring(engine: Engine) -> None:
    assert engine.store is not None
    engine.store.list_add("block", ORDINARY, None, None, "test")
    outcome, peer = run_direct(engine, env(LINE, route="learn", args=("112",)))
    assert peer.variables == {"CALLSCREEN_RESULT": "emergency"}
    outcome, peer = run_direct(engine, env(ORDINARY))
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_RULE"]) == ("allow", "emergency-callback")


def test_health_ok(engine: Engine) -> None:
    outcome, peer = run_direct(engine, env(route="health", args=()))
    assert outcome.ok and peer.variables == {"CALLSCREEN_HEALTH": "ok"}


def test_health_degraded_when_redis_is_down(own_redis: RedisServer,
                                            shipped_rules: RuleSet) -> None:
    eng = stopped_redis_engine(own_redis, shipped_rules)
    started = time.monotonic()
    outcome, peer = run_direct(eng, env(route="health", args=()))
    assert time.monotonic() - started < BUDGET_S
    assert peer.variables == {"CALLSCREEN_HEALTH": "degraded"}


def test_health_degraded_when_redis_is_paused(own_redis: RedisServer,
                                              shipped_rules: RuleSet) -> None:
    cfg = lines_config(own_redis.url, LINES_YAML)
    eng = Engine(cfg, shipped_rules, Store.from_config(cfg))
    own_redis.pause()
    try:
        started = time.monotonic()
        outcome, peer = run_direct(eng, env(route="health", args=()))
        elapsed = time.monotonic() - started
    finally:
        own_redis.resume()
    assert elapsed < BUDGET_S, elapsed
    assert peer.variables == {"CALLSCREEN_HEALTH": "degraded"}


# -- the code -------------------------------------------------------------------------------


def test_new_code_never_repeats_the_previous_one() -> None:
    codes = [challenge.new_code(1) for _ in range(3000)]
    assert all(a != b for a, b in zip(codes, codes[1:], strict=False))
    assert set(codes) == set("0123456789")  # still random over every digit


@pytest.mark.parametrize("digits", [2, 3, 8])
def test_new_code_shape(digits: int) -> None:
    codes = [challenge.new_code(digits) for _ in range(200)]
    assert all(len(c) == digits and c.isdigit() and c.isascii() for c in codes)
    assert all(a != b for a, b in zip(codes, codes[1:], strict=False))
    assert len(set(codes)) > 100 if digits > 2 else len(set(codes)) > 50


def test_fixtures_are_what_these_tests_assume(cfg: Config, rdb: redis.Redis) -> None:
    """The lines these tests call: the FR line first, the US line second, on a live Redis."""
    assert [line.did for line in cfg.lines] == [LINE, LINE_US]
    assert rdb.ping()

