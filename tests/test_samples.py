"""Sample-driven screening tests (fail2ban style): tests/samples/calls.yaml.

Each sample is a call as a trunk delivers it (raw caller ID, called DID, local time, presentation,
attestation), optional stored state written through the Store API, and the verdict the shipped
rules must give. Every sample is its own test case (id = the sample's name); it asserts the action
AND the rule that decided, on the real session Redis.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from callscreen.config import Config
from callscreen.engine import Engine
from callscreen.rules import RuleSet
from callscreen.store import Store

SAMPLES_FILE = Path(__file__).parent / "samples" / "calls.yaml"
SAMPLE_KEYS = {"name", "caller", "to", "at", "pres", "attestation", "state", "expect", "xfail"}
STATE_KEYS = {"allow", "block", "contacts", "trusted", "reports", "calls", "velocity",
              "emergency", "storm", "spoofed", "neighbour_callers", "voicemailed"}


def load_samples() -> list[dict[str, Any]]:
    data = yaml.safe_load(SAMPLES_FILE.read_text(encoding="utf-8"))
    return list(data["samples"])


SAMPLES = load_samples()


def _params() -> list[Any]:
    params = []
    for sample in SAMPLES:
        marks = []
        if sample.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=str(sample["xfail"])))
        params.append(pytest.param(sample, id=sample["name"], marks=marks))
    return params


def local_time(text: str, tz: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=ZoneInfo(tz))


def set_up_state(store: Store, cfg: Config, state: dict[str, Any], caller: str | None,
                 line: str, now: float) -> None:
    """Write the sample's stored state through the Store API, as production code would."""
    for kind in ("allow", "block"):
        for item in state.get(kind, []):
            spec = {"entry": item} if isinstance(item, str) else dict(item)
            expires = now - 3600 if spec.get("expired") else None
            store.list_add(kind, spec["entry"], spec.get("line"), expires, "sample")
    for number in state.get("contacts", []):
        store.add_contact(line, number, now - 86400, cfg.features.contact_days * 86400)
    for number in state.get("trusted", []):
        store.challenge_outcome(number, line, "pass", now - 86400, cfg.challenge.trust_days)
    for number, reporters in state.get("reports", {}).items():
        for i in range(int(reporters)):
            assert store.report(number, f"+3346571{i:04d}", now - 600)
    if state.get("calls"):
        assert caller is not None, "calls: needs a caller with a number"
        for i in range(int(state["calls"])):
            store.record_call(caller, line, now - 86400 - i, "allow", "default")
    if state.get("velocity"):
        # velocity: N calls from the caller to N distinct lines (of this or other PBXs).
        assert caller is not None, "velocity: needs a caller with a number"
        for i in range(int(state["velocity"])):
            store.record_call(caller, f"+3346571{i:04d}", now - 60 * (i + 1), "allow",
                              "default")
    if state.get("emergency"):
        store.emergency_start(now - 600, cfg.emergency.minutes, "112")
    if state.get("storm"):
        store.storm_start(line, now - 600)
    for number in state.get("spoofed", []):
        store.set_spoofed(number, now + 86400)
    for i in range(int(state.get("neighbour_callers", 0))):
        # distinct callers sharing the line's leading digits (+3319900 for +33199000001)
        store.record_call(f"+331990099{i:02d}", line, now - 60 * (i + 1), "challenge",
                          "neighbour", neighbour=True)
    if state.get("voicemailed"):
        assert caller is not None
        store.record_call(caller, line, now - 120, "voicemail", "reputation")


def test_samples_are_well_formed() -> None:
    """Unique names, known fields, one expectation each: a typo must not pass silently."""
    names = [s["name"] for s in SAMPLES]
    assert len(names) == len(set(names))
    for sample in SAMPLES:
        assert set(sample) <= SAMPLE_KEYS, sample["name"]
        assert {"caller", "to", "at", "expect"} <= set(sample), sample["name"]
        assert set(sample["expect"]) == {"action", "rule"}, sample["name"]
        assert set(sample.get("state") or {}) <= STATE_KEYS, sample["name"]


def test_every_shipped_rule_has_a_sample(shipped_rules: RuleSet) -> None:
    """Each shipped rule, and the thresholds and default, decide at least one passing sample."""
    decided = {s["expect"]["rule"] for s in SAMPLES if not s.get("xfail")}
    wanted = {r.name for r in shipped_rules.rules if r.action} | {"default",
                                                                   "threshold:challenge"}
    assert wanted <= decided
    # Score rules cannot decide; each must appear in a sample reaching a threshold through it.
    assert any(s.get("state", {}).get("velocity", 0) >= 3
               and s["expect"]["rule"].startswith("threshold:") for s in SAMPLES)
    assert any(s.get("attestation") == "failed"
               and s["expect"]["rule"].startswith("threshold:") for s in SAMPLES)
    assert any(s.get("state", {}).get("neighbour_callers", 0) >= 4
               and s["expect"]["rule"].startswith("threshold:") for s in SAMPLES)


@pytest.mark.parametrize("sample", _params())
def test_sample(sample: dict[str, Any], engine: Engine, store: Store, cfg: Config) -> None:
    if (sample.get("state") or {}).get("voicemailed"):
        # the greylist is off by default: these samples run with it on (10 minutes)
        cfg = dataclasses.replace(cfg, learning=dataclasses.replace(cfg.learning,
                                                                    greylist_minutes=10))
        store = Store.from_config(cfg, store.r)
        engine = Engine(cfg, engine.ruleset, store)
    line = engine.resolve_line(str(sample["to"]), strict=True)
    assert line is not None
    at = local_time(str(sample["at"]), line.timezone)
    pres = sample.get("pres")
    call = engine.make_call(str(sample["caller"]), line, at,
                            str(sample.get("attestation", "unknown")),
                            None if pres is None else str(pres))
    set_up_state(store, cfg, sample.get("state") or {}, call.caller.e164, line.did,
                 at.timestamp())

    decision = engine.decide(call)

    v = decision.verdict
    trace = "\n".join(str(step) for step in v.trace)
    assert not v.degraded, trace
    assert (v.action, v.rule) == (sample["expect"]["action"], sample["expect"]["rule"]), (
        f"caller {sample['caller']!r} read as {call.caller.e164} ({call.caller.raw_kind})\n{trace}"
    )
