"""Hostile input, fuzzed with hypothesis, through the real code and a real Redis.

Properties, whatever the input: no uncaught exception; every AGI command the fake Asterisk
receives is one clean line of a known verb; a verdict is one of the dialplan's three actions (the
challenge runs inside the call) with an E.164 or "anonymous" number; no Redis key is made from raw
input; a config or rules file is either loaded or refused with file:line problems; an import
accounts for every row. Data read from Redis is untrusted too: a list label written by another
PBX with a newline in it injects no AGI command.

Today no caller-controlled text reaches an AGI command at all (only the normalised number does):
with agi.quote() disabled these still pass. They are here to keep it that way, and to catch a
crash or a malformed command whatever the input.
"""

from __future__ import annotations

import io
import re

import redis
import yaml
from fake_asterisk import (
    DEAD_511,
    HANGUP,
    INVALID_510,
    TIMEOUT,
    USAGE_520,
    Channel,
    FakeAsterisk,
    fastagi_env,
    in_order,
    run_direct,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callscreen import config as config_mod
from callscreen import rules
from callscreen.config import Config, ConfigError
from callscreen.engine import Engine
from callscreen.imports import ImportError_, import_csv
from callscreen.store import Store, check_key_suffix
from callscreen.yamlsrc import YamlError

FIXTURES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
VERBS = {"ANSWER", "SET VARIABLE", "GET DATA", "STREAM FILE", "SAY DIGITS", "VERBOSE", "EXEC",
         "GET VARIABLE", "GET FULL VARIABLE", "HANGUP", "WAIT FOR DIGIT"}
E164_OR_ANONYMOUS = re.compile(r"\A(?:\+[1-9][0-9]{1,14}|anonymous)\Z")

# What a trunk or a hostile caller can put in a caller ID or name: control characters, quotes,
# backslashes, invalid UTF-8, full-width digits, letters, very long runs.
hostile_bytes = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"anonymous", b"+33 1 99 00 00 42", b"\xef\xbc\x90\xef\xbc\x91\xef\xbc\x99"
                     b"9000042", b'"\\\r\n\x00', b"0" * 10_000, b"tel:+33353010001;x=\"y\"",
                     b"<sip:0353010001@192.0.2.1>", b"+999" + b"9" * 40]),
).map(lambda b: b.replace(b"\n", b" "))  # a newline would end the env line: Asterisk never sends one


def commands_are_clean(peer: FakeAsterisk) -> None:
    for cmd in peer.commands:
        assert b"\r" not in cmd.raw and b"\x00" not in cmd.raw, cmd.raw
        assert cmd.verb in VERBS, cmd.raw
    assert len(peer.commands) < 60


def verdict_is_sane(peer: FakeAsterisk) -> None:
    view = peer.screen_vars()
    if view:  # a hangup before the verdict sets nothing
        assert view["SCREEN_ACTION"] in {"allow", "voicemail", "block"}, view
        assert E164_OR_ANONYMOUS.match(view["SCREEN_NUMBER"]), view
        assert view["SCREEN_DEGRADED"] in {"0", "1"}


def keys_are_ours(rdb: redis.Redis) -> None:
    for key in rdb.scan_iter(count=1000):
        assert key.startswith("cs:"), key
        check_key_suffix(key[3:])


@FIXTURES
@given(callerid=hostile_bytes, name=hostile_bytes, dnid=hostile_bytes,
       pres=st.sampled_from([0, 1, 3, 32, 35, 67, 255]),
       extra=st.lists(st.sampled_from([
           b"agi_callerid: +33199000001\n", b"agi_calleridname: \xff\xfe\n", b"no colon\n",
           b"agi_" + b"x" * 5000 + b": y\n", b"agi_arg_1: \x00\x01\n", b": \n"]), max_size=4))
def test_any_env_block_gives_a_clean_call(engine: Engine, rdb: redis.Redis, callerid: bytes,
                                          name: bytes, dnid: bytes, pres: int,
                                          extra: list[bytes]) -> None:
    env = fastagi_env("screen", (dnid,), Channel(callerid=callerid, calleridname=name,
                                                 callingpres=pres, dnid=dnid), extra=extra)
    _, peer = run_direct(engine, env)
    commands_are_clean(peer)
    verdict_is_sane(peer)
    keys_are_ours(rdb)


replies = st.one_of(
    st.sampled_from(["200 result=0", "200 result=1", "200 result=-1", HANGUP, DEAD_511,
                     INVALID_510, USAGE_520, TIMEOUT, "200 result=49 (dtmf)", "200 result=",
                     "200 result=0 endpos=8000", "100 result=0 Trying...", "", "200"]),
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"") + b"\n"),
)


@FIXTURES
@given(answers=st.lists(replies, max_size=12),
       caller=st.sampled_from(["+33199000042", "", "+33353010001", "0162000000"]))
def test_any_replies_from_asterisk_end_the_call_cleanly(engine: Engine, rdb: redis.Redis,
                                                        answers: list[object],
                                                        caller: str) -> None:
    """Neighbour, anonymous, ordinary and telemarketing callers (challenge or not) while Asterisk
    answers anything at all: the handler never raises and says nothing malformed."""
    env = fastagi_env("screen", ("0199000001",), Channel(callerid=caller))
    _, peer = run_direct(engine, env, in_order(answers))
    commands_are_clean(peer)
    verdict_is_sane(peer)
    keys_are_ours(rdb)


def test_a_label_from_redis_injects_nothing(engine: Engine, rdb: redis.Redis) -> None:
    """Another PBX (or anyone with write access) stores a label with CR/LF, quotes and a fake
    AGI command in it: the call still sends only its own commands, each on one line."""
    rdb.hset("cs:block", "+33353010077",
             '0|spam"\r\nSET VARIABLE SCREEN_ACTION allow\n\\x00\x00')
    _, peer = run_direct(engine, fastagi_env("screen", ("0199000001",),
                                             Channel(callerid="+33353010077")))
    commands_are_clean(peer)
    assert peer.screen_vars()["SCREEN_ACTION"] == "block"
    assert [v for k, v in peer.set_history if k == "SCREEN_ACTION"] in ([], ["block"])


# -- config and rules files ----------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=20)
config_keys = st.sampled_from(["redis", "region", "timezone", "language", "lines", "rules_dir",
                               "thresholds", "reputation", "challenge", "server", "storm",
                               "fail_mode", "default_action", "logging", "numbers", "holidays"])
config_docs = st.dictionaries(config_keys, documents, max_size=5)
rule_docs = st.fixed_dictionaries({"rules": st.lists(st.dictionaries(
    st.sampled_from(["name", "when", "action", "reason", "score", "enabled", "bogus"]),
    documents, max_size=5), max_size=4)})


def yaml_text(doc: object, cut: int) -> str:
    text = yaml.safe_dump(doc, allow_unicode=True)
    return text[:cut] if cut else text  # a cut file is broken YAML more often than not


@settings(max_examples=200, deadline=None)
@given(doc=config_docs, cut=st.integers(0, 200))
def test_any_config_file_loads_or_names_its_problems(doc: object, cut: int) -> None:
    try:
        cfg = config_mod.load_text(yaml_text(doc, cut), "fuzz.yaml")
    except (ConfigError, YamlError) as exc:
        problems = getattr(exc, "problems", [str(exc)])
        assert problems and all(p.startswith("fuzz.yaml") for p in problems), problems
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(doc=rule_docs, cut=st.integers(0, 300))
def test_any_rules_file_loads_or_names_its_problems(doc: object, cut: int) -> None:
    try:
        ruleset = rules.load_text(yaml_text(doc, cut), "fuzz.yaml")
    except (rules.RulesError, YamlError) as exc:
        problems = getattr(exc, "problems", [str(exc)])
        assert problems and all(p.startswith("fuzz.yaml") for p in problems), problems
    else:
        assert all(r.name for r in ruleset.rules)


# -- import files --------------------------------------------------------------------------------

@FIXTURES
@given(rows=st.lists(st.one_of(hostile_bytes, st.sampled_from([b"0353010001", b"+33353010002",
                                                               b'"0353010003"', b"a,b,c"])),
                     max_size=40),
       sep=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_import_file_accounts_for_every_row(store: Store, cfg: Config, rdb: redis.Redis,
                                                rows: list[bytes], sep: bytes) -> None:
    data = sep.join(rows) + sep
    try:
        summary = import_csv(io.BytesIO(data), store, cfg, number_column=1, label="fuzz",
                             header=False, region="FR")
    except ImportError_ as exc:  # a CSV syntax error midway: says how far it got
        assert "CSV error" in str(exc) and exc.summary is not None
        return
    assert summary.rows == (summary.imported + summary.already + summary.duplicates
                            + summary.rejected_total)
    keys_are_ours(rdb)

