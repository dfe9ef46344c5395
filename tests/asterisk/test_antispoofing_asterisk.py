"""Anti-spoofing features end to end through a real Asterisk 22: callback storms, reports from
several lines, spoofed numbers, emergency bypass, STIR/SHAKEN attestation.

STIR/SHAKEN: the sandbox has no carrier to sign identities, so the attestation reaches the
shipped subroutine through its documented second argument (the test hook); the res_stir_shaken
branch of the subroutine is not exercised here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from asterisk_calls import DID, LINE, TEST_DIALPLAN, answer_challenge, record, screened
from support import wait_for

from callscreen.sandbox import product
from callscreen.sandbox.asterisk import AsteriskSandbox, SandboxFactory
from callscreen.sandbox.product import DIALPLAN_FILE, Screener

pytestmark = pytest.mark.asterisk

DID2 = "0261910001"
LINE2 = "+33261910001"


STORM = "storm: {min_callers: 6, window_minutes: 60, quiet_minutes: 0.1}\n"


@pytest.fixture
def setup(asterisk_sandbox_factory: SandboxFactory, redis_server: Any, rdb: redis.Redis,
          tmp_path: Path, chroot_product: Path
          ) -> Iterator[Callable[..., tuple[AsteriskSandbox, Screener]]]:
    made: list[Screener] = []

    def make(extra: str = "", dids: list[str] | None = None) -> tuple[AsteriskSandbox, Screener]:
        screener = Screener(tmp_path, chroot_product, redis_server.url, dids or [DID],
                            extra=extra)
        made.append(screener)
        port = screener.start()
        sb = asterisk_sandbox_factory(
            dialplan_files=[DIALPLAN_FILE], dialplan={"callscreen_test.conf": TEST_DIALPLAN},
            dialplan_globals={"CALLSCREEN_SERVER": f"127.0.0.1:{port}"},
            agi_scripts=[product.agi_script(tmp_path)],
        )
        return sb, screener

    yield make
    for screener in made:
        screener.stop()


def test_storm_shields_the_owner_of_a_spoofed_number(
        setup: Callable[..., tuple[AsteriskSandbox, Screener]], rdb: redis.Redis) -> None:
    sb, screener = setup(STORM)
    # The storm notice goes to Asterisk's own manager (AMI UserEvent): point the config at it
    # and reload, as `systemctl reload callscreen` (SIGHUP) would.
    screener.config.write_text(screener.config.read_text().replace(
        "quiet_minutes: 0.1}", f"quiet_minutes: 0.1, notify_ami: "
        f"'ami://sandbox:{sb._secret}@127.0.0.1:{sb.ami_port}'}}"))
    assert screener.server.reload()
    rdb.hset(f"cs:l:{LINE}:contacts", "+33465710001", f"{time.time() + 86400:.0f}|outbound")

    # Angry people calling back: distinct, unknown, ordinary numbers.
    for i in range(6):
        ev = screened(sb, f"+3335301041{i}")
        assert (ev["ACTION"], ev["RULE"]) == ("allow", "default"), i
    assert sb.ami is not None
    started = sb.ami.wait_event(lambda m: m.get("UserEvent") == "CallscreenStorm"
                                and m.get("State") == "start", 10)
    assert started["Line"] == LINE
    assert rdb.exists(f"cs:l:{LINE}:storm")

    # The 7th and 8th hear the explanation (a beep stands in for the missing prompt file here)
    # and go to voicemail with SCREEN_REASON storm.
    for i in (6, 7):
        call = sb.call(DID, "test-in", callerid=f"+3335301041{i}")
        call.wait_agi("GET DATA", timeout=15)
        ev = dict(call.wait_user_event("Screened", timeout=15))
        assert (ev["ACTION"], ev["REASON"], ev["RULE"]) == ("voicemail", "storm",
                                                            "callback-storm")
    # Pressing 1 gets a person through (storm.press1: allow).
    call = sb.call(DID, "test-in", callerid="+33353010420")
    call.wait_agi("GET DATA", timeout=15)
    call.send_dtmf("1")
    ev = dict(call.wait_user_event("Screened", timeout=15))
    assert (ev["ACTION"], ev["REASON"]) == ("allow", "storm")
    # A known contact still rings as usual.
    ev = screened(sb, "+33465710001")
    assert (ev["ACTION"], ev["RULE"]) == ("allow", "known-contact")
    # What they heard is kept as evidence; the owner's own number is flagged as spoofed.
    assert wait_for(lambda: rdb.llen(f"cs:l:{LINE}:storm:ev") == 3)
    outcomes = sorted(e.split("|")[3] for e in rdb.lrange(f"cs:l:{LINE}:storm:ev", 0, -1))
    assert outcomes == ["no-key:voicemail", "no-key:voicemail", "pressed-1:allow"]
    assert float(record(rdb, LINE)["sp"]) > time.time()

    # The storm ends by itself after the quiet period (6 s here); the next call says so.
    assert wait_for(lambda: not rdb.exists(f"cs:l:{LINE}:storm"), timeout=15)
    ev = screened(sb, "+33353010430")
    assert (ev["ACTION"], ev["RULE"]) == ("allow", "default")
    ended = sb.ami.wait_event(lambda m: m.get("UserEvent") == "CallscreenStorm"
                              and m.get("State") == "end", 10)
    assert ended["Line"] == LINE


def test_reports_from_two_lines_count_twice_one_line_once(
        setup: Callable[..., tuple[AsteriskSandbox, Screener]], rdb: redis.Redis) -> None:
    sb, _screener = setup(dids=[DID, DID2])
    caller = "+33536490001"

    def star60(line: str) -> None:
        call = sb.call("*60", "test-phone", callerid="100", variables={"CALLSCREEN_LINE": line})
        call.wait_hangup(timeout=15)

    screened(sb, caller)
    assert wait_for(lambda: rdb.llen(f"cs:l:{LINE}:recent") == 1)
    star60(LINE)
    star60(LINE)  # the same line again: one vote per line
    assert wait_for(lambda: record(rdb, caller).get("rep") == "1")
    one_line = float(screened(sb, caller)["SCORE"])

    screened(sb, caller, did=DID2)
    assert wait_for(lambda: rdb.llen(f"cs:l:{LINE2}:recent") == 1)
    star60(LINE2)
    assert wait_for(lambda: record(rdb, caller).get("rps") == "2")
    rec = record(rdb, caller)
    assert (rec["rep"], rec["rps"], rec["rpb"]) == ("2", "2", "1")  # 2 lines, 1 PBX
    two_lines = float(screened(sb, caller)["SCORE"])
    assert two_lines > one_line > 0


def test_spoofed_number_is_challenged_not_blocked(
        setup: Callable[..., tuple[AsteriskSandbox, Screener]], rdb: redis.Redis) -> None:
    sb, _screener = setup()
    caller = "+33536490002"
    now = time.time()
    rdb.hset(f"cs:n:{caller}", mapping={"s": "120", "st": f"{now:.0f}", "rep": 5, "rps": 5,
                                        "sp": f"{now + 86400:.0f}"})
    ev, _codes = answer_challenge(sb, caller, lambda code: code)
    assert (ev["ACTION"], ev["REASON"], ev["RULE"]) == ("allow", "challenge-passed",
                                                       "spoofed-number")


def test_after_an_emergency_call_every_call_rings(
        setup: Callable[..., tuple[AsteriskSandbox, Screener]], rdb: redis.Redis) -> None:
    sb, _screener = setup()
    blocked = "+33536490003"
    rdb.hset("cs:block", blocked, "0|test")
    assert screened(sb, blocked)["ACTION"] == "block"
    learned = sb.call("112", "test-phone", callerid="100")
    assert learned.wait_user_event("Learned")["RESULT"] == "emergency"
    assert wait_for(lambda: bool(rdb.exists("cs:emergency")))
    assert 0 < rdb.ttl("cs:emergency") <= 120 * 60
    for caller in (blocked, "anonymous", "+33199000009", "+33162000009"):
        ev = screened(sb, caller)
        assert (ev["ACTION"], ev["RULE"]) == ("allow", "emergency-callback"), caller


def test_attestation_a_neighbour_passes_failed_is_challenged(
        setup: Callable[..., tuple[AsteriskSandbox, Screener]], rdb: redis.Redis) -> None:
    sb, _screener = setup()
    ev = screened(sb, "+33199000011", ATTEST="A")
    assert (ev["ACTION"], ev["RULE"]) == ("allow", "default")
    ev, _codes = answer_challenge(sb, "+33199000012", lambda code: code, ATTEST="failed")
    assert (ev["ACTION"], ev["RULE"], ev["REASON"]) == ("allow", "neighbour-spoofing",
                                                       "challenge-passed")
    assert float(ev["SCORE"]) == 30  # failed-verification's score rule counted
    assert wait_for(lambda: str(rdb.lindex(f"cs:l:{LINE}:recent", 0)).endswith("|failed"))
