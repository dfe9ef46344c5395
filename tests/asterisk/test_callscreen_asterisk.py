"""End to end through a real Asterisk 22: the SHIPPED dialplan, the real FastAGI server, the real
process AGI inside the chroot, a real redis-server. Calls are Local channels originated over AMI;
the caller's leg types DTMF (see README.md in this folder).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from asterisk_calls import TEST_DIALPLAN, answer_challenge, record, screened
from support import wait_for

from callscreen.sandbox import product
from callscreen.sandbox.asterisk import AsteriskSandbox, SandboxFactory
from callscreen.sandbox.product import DIALPLAN_FILE, Screener

pytestmark = pytest.mark.asterisk

REPO = Path(__file__).resolve().parents[2]
# Fiction numbers only (DESIGN.md).
DID = "0199000001"
LINE = "+33199000001"
ORDINARY = "+33353010001"
NEIGHBOUR = "+33199000002"



@pytest.fixture
def make_screener(tmp_path: Path, chroot_product: Path) -> Iterator[Callable[..., Screener]]:
    made: list[Screener] = []

    def make(redis_url: str, **challenge: Any) -> Screener:
        s = Screener(tmp_path, chroot_product, redis_url, DID, **challenge)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def sandbox_for(factory: SandboxFactory, tmp: Path, server: str) -> AsteriskSandbox:
    return factory(
        dialplan_files=[DIALPLAN_FILE],  # the shipped file, unchanged
        dialplan={"callscreen_test.conf": TEST_DIALPLAN},
        dialplan_globals={"CALLSCREEN_SERVER": server, "CALLSCREEN_LINE": LINE},
        agi_scripts=[product.agi_script(tmp)],
        extra_modules=["func_uri.so"],
    )


@pytest.fixture
def running(make_screener: Callable[..., Screener], asterisk_sandbox_factory: SandboxFactory,
            redis_server: Any, rdb: redis.Redis, tmp_path: Path
            ) -> tuple[AsteriskSandbox, Screener, redis.Redis]:
    screener = make_screener(redis_server.url)
    port = screener.start()
    sb = sandbox_for(asterisk_sandbox_factory, tmp_path, f"127.0.0.1:{port}")
    return sb, screener, rdb


# -- the tests ----------------------------------------------------------------------------------


def test_allowed_caller_rings(running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    ev = screened(sb, ORDINARY)
    assert (ev["ACTION"], ev["RULE"], ev["NUMBER"], ev["DEGRADED"]) == (
        "allow", "default", ORDINARY, "0")
    # The call is counted after the channel was released.
    assert wait_for(lambda: record(rdb, ORDINARY).get("c") == "1")
    assert rdb.lindex(f"cs:l:{LINE}:recent", 0).split("|")[1] == ORDINARY


def test_blocklisted_caller_is_blocked(
        running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    rdb.hset("cs:block", ORDINARY, "0|test")
    ev = screened(sb, "03 53 01 00 01")
    assert (ev["ACTION"], ev["RULE"], ev["REASON"]) == ("block", "blocklist", "blocklisted")


def test_challenge_passed_then_trusted(
        running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    ev, codes = answer_challenge(sb, NEIGHBOUR, lambda code: code)
    assert len(codes[0]) == 3 and codes[0].isdigit()
    assert (ev["ACTION"], ev["REASON"], ev["RULE"]) == ("allow", "challenge-passed",
                                                       "neighbour-spoofing")
    assert wait_for(lambda: record(rdb, NEIGHBOUR).get("p") == "1")
    # The next call from that number rings without a challenge.
    ev2 = screened(sb, NEIGHBOUR)
    assert (ev2["ACTION"], ev2["RULE"]) == ("allow", "passed-challenge")


def test_challenge_failed_goes_to_voicemail(
        running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    wrong = lambda code: "".join(str((int(d) + 1) % 10) for d in code)  # noqa: E731
    ev, codes = answer_challenge(sb, NEIGHBOUR, wrong, rounds=2)
    assert (ev["ACTION"], ev["REASON"]) == ("voicemail", "challenge-failed")
    assert wait_for(lambda: record(rdb, NEIGHBOUR).get("f") == "1")
    assert rdb.hget(f"cs:l:{LINE}:trusted", NEIGHBOUR) is None


def test_robot_silence_goes_to_voicemail(
        running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    ev, _codes = answer_challenge(sb, "+33199000003", None, rounds=2)
    assert (ev["ACTION"], ev["REASON"]) == ("voicemail", "challenge-failed")


def test_hangup_mid_challenge_is_an_abandon(
        running: tuple[AsteriskSandbox, Screener, redis.Redis],
        caplog: pytest.LogCaptureFixture) -> None:
    sb, screener, rdb = running
    threads_before = threading.active_count()
    call = sb.call(DID, "test-in", callerid="+33199000004")
    call.wait_agi("GET DATA", timeout=20)
    call.hangup()
    assert wait_for(lambda: record(rdb, "+33199000004").get("a") == "1")
    assert wait_for(lambda: screener.server.in_flight() == 0)
    assert wait_for(lambda: threading.active_count() <= threads_before)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "challenge-abandoned" in rdb.lindex(f"cs:l:{LINE}:recent", 0)


def test_prompts_generated_by_install_sh_are_played(
        make_screener: Callable[..., Screener], asterisk_sandbox_factory: SandboxFactory,
        redis_server: Any, rdb: redis.Redis, tmp_path: Path, chroot_product: Path) -> None:
    generated = tmp_path / "sounds"
    subprocess.run(["bash", str(REPO / "install.sh"), "--prompts", str(generated)], check=True,
                   capture_output=True, timeout=120)
    # In the chroot, sounds/en is an absolute symlink (/etc/alternatives/...) that only resolves
    # from inside: copy to where it points. The server checks the same files in `generated`.
    sounds = chroot_product / "usr/share/asterisk/sounds"
    for lang, real in (("en", "en_US_f_Allison"), ("fr", "fr_CA_f_June")):
        shutil.copytree(generated / lang / "callscreen", sounds / real / "callscreen",
                        dirs_exist_ok=True)
    screener = make_screener(redis_server.url, sounds_dir=str(generated))
    sb = sandbox_for(asterisk_sandbox_factory, tmp_path, f"127.0.0.1:{screener.start()}")
    ev, _codes = answer_challenge(sb, NEIGHBOUR, lambda code: code)
    assert ev["ACTION"] == "allow"
    played = [line for line in sb.agi_debug_lines() if "STREAM FILE callscreen/" in line]
    assert any("challenge-intro" in line for line in played), played
    # Asterisk found and played the file: a missing one answers result=-1 and hangs up.
    log = sb.read_full_log()
    assert "challenge-intro" in log and "Unable to open" not in log


def test_fastagi_down_falls_back_to_process_agi(
        make_screener: Callable[..., Screener], asterisk_sandbox_factory: SandboxFactory,
        redis_server: Any, rdb: redis.Redis, tmp_path: Path) -> None:
    make_screener(redis_server.url)  # writes the chroot config; its server is never started
    rdb.hset("cs:block", ORDINARY, "0|test")
    sb = sandbox_for(asterisk_sandbox_factory, tmp_path, "127.0.0.1:1")  # nothing listens there
    ev = screened(sb, ORDINARY)
    # Only the rules (in the process AGI, inside the chroot) know this number is blocklisted.
    assert (ev["ACTION"], ev["RULE"], ev["DEGRADED"]) == ("block", "blocklist", "0")
    assert "running the process AGI" in sb.read_full_log()
    assert wait_for(lambda: record(rdb, ORDINARY).get("c") == "1")


def test_both_down_default_route_call_not_lost(
        asterisk_sandbox_factory: SandboxFactory, tmp_path: Path, chroot_product: Path) -> None:
    product.write_chroot_config(chroot_product, "region: [broken\n")  # the process AGI fails too
    sb = sandbox_for(asterisk_sandbox_factory, tmp_path, "127.0.0.1:1")
    ev = screened(sb, ORDINARY)
    assert (ev["ACTION"], ev["RULE"], ev["REASON"], ev["DEGRADED"]) == (
        "allow", "dialplan-default", "unavailable", "1")


def test_redis_down_is_decided_within_budget(
        make_screener: Callable[..., Screener], asterisk_sandbox_factory: SandboxFactory,
        own_redis: Any, tmp_path: Path) -> None:
    screener = make_screener(own_redis.url)
    sb = sandbox_for(asterisk_sandbox_factory, tmp_path, f"127.0.0.1:{screener.start()}")
    screened(sb, ORDINARY)  # warm: the pool holds a connection to the soon-paused server
    own_redis.pause()
    try:
        started = time.monotonic()
        ev = screened(sb, "+33353010002")
        elapsed = time.monotonic() - started
    finally:
        own_redis.resume()
    assert (ev["ACTION"], ev["DEGRADED"], ev["RULE"]) == ("allow", "1", "fail-mode")
    # socket timeout 200 ms + Asterisk's own work; far below a ring cycle.
    assert elapsed < 2.0, elapsed


def test_hostile_caller_name_injects_nothing(
        running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    payload = 'Bob%22%5C%0AEXEC%20System%20%22touch%20/tmp/pwned%22%0D%0A%22'  # " \ LF EXEC...
    ev = screened(sb, ORDINARY, NAME_URI=payload)
    assert ev["ACTION"] == "allow"
    received = [line.split("AGI Rx << ", 1)[1] for line in sb.agi_debug_lines()
                if "AGI Rx << " in line]
    # exactly one command: the verdict, whatever the caller's name tried to add
    assert len(received) == 1 and received[0].startswith('SET VARIABLE SCREEN_RESULT "allow|'), received
    assert not (sb.root / "tmp/pwned").exists()


def test_report_feature_code_raises_the_score(
        running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    first = screened(sb, ORDINARY)
    assert first["SCORE"] == "0"
    assert wait_for(lambda: rdb.llen(f"cs:l:{LINE}:recent") == 1)
    call = sb.call("*60", "test-phone", callerid="100")
    call.wait_hangup(timeout=15)
    assert wait_for(lambda: record(rdb, ORDINARY).get("rep") == "1")
    again = screened(sb, ORDINARY)
    assert float(again["SCORE"]) > 0


def test_outbound_learning_lets_the_number_through(
        running: tuple[AsteriskSandbox, Screener, redis.Redis]) -> None:
    sb, screener, rdb = running
    callee = "+33199000055"  # a neighbour of our line: challenged unless known
    learned = sb.call("0199000055", "test-phone", callerid="100")
    assert learned.wait_user_event("Learned")["RESULT"] == "ok"
    assert wait_for(lambda: rdb.hget(f"cs:l:{LINE}:contacts", callee) is not None)
    ev = screened(sb, callee)
    assert (ev["ACTION"], ev["RULE"]) == ("allow", "known-contact")
