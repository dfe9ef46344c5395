"""Smoke tests of the Asterisk sandbox itself: calls without phones, caller ID, variables, DTMF.

They pin down the mechanics the product's end-to-end tests rely on (see README.md).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from callscreen.sandbox.asterisk import AsteriskSandbox, SandboxFactory, mounts_under, pids_rooted_in

pytestmark = pytest.mark.asterisk

# Fiction numbers only (DESIGN.md): FR 01 99 00 xx xx.
DID = "0199000101"
CALLER = "+33199000102"

DIALPLAN = r"""
[test-reached]
exten => _X.,1,Set(NAME=${CALLERID(name)})
 same => n,UserEvent(Reached,CALLERID: ${CALLERID(num)},NAME: ${NAME},VAR: ${MYVAR},EXTEN: ${EXTEN})
 same => n,Hangup()

[test-read]
exten => _X.,1,Answer()
 same => n,Read(DIGITS,beep,4,,1,10)
 same => n,UserEvent(ReadDone,DIGITS: ${DIGITS},STATUS: ${READSTATUS})
 same => n,Hangup()

[test-process-agi]
exten => _X.,1,AGI(hello.sh,${CALLERID(num)})
 same => n,UserEvent(ScriptDone,GREETING: ${GREETING},STATUS: ${AGISTATUS})
 same => n,Hangup()

[test-agi]
exten => _X.,1,Answer()
 same => n,AGI(agi://127.0.0.1:${AGI_PORT}/getdigits)
 same => n,UserEvent(AgiDone,DIGITS: ${AGI_DIGITS},STATUS: ${AGISTATUS})
 same => n,Hangup()
"""


def test_call_carries_callerid_and_variables(asterisk_sandbox_factory: SandboxFactory) -> None:
    sb = asterisk_sandbox_factory(dialplan={"smoke.conf": DIALPLAN})

    call = sb.call(
        DID, "test-reached", callerid=f'"Smoke Test" <{CALLER}>', variables={"MYVAR": "hello world"}
    )
    event = call.wait_user_event("Reached")

    assert event["CALLERID"] == CALLER
    assert event["NAME"] == "Smoke Test"
    assert event["VAR"] == "hello world"
    assert event["EXTEN"] == DID
    assert event["Uniqueid"] == call.callee_uniqueid  # raised on the ;2 leg
    # This context never answers: the originate reports failure once ;2 hangs up.
    assert call.wait_answered()["Response"] == "Failure"


def test_dtmf_from_caller_leg_reaches_read(asterisk_sandbox_factory: SandboxFactory) -> None:
    sb = asterisk_sandbox_factory(dialplan={"smoke.conf": DIALPLAN})

    call = sb.call(DID, "test-read", callerid=CALLER)
    assert call.wait_answered()["Response"] == "Success"
    call.wait_app("Read")  # digits typed before the collector runs may be lost
    call.send_dtmf("1234")

    event = call.wait_user_event("ReadDone")
    assert (event["DIGITS"], event["STATUS"]) == ("1234", "OK")
    assert call.wait_hangup()["Cause"] == "16"  # normal clearing


class _OneShotFastAGI:
    """A minimal FastAGI server on the host: answers one request with GET DATA, stores the
    digits in AGI_DIGITS. Proves the chroot reaches the host's 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(15)
        self.port = self.sock.getsockname()[1]
        self.env: dict[str, str] = {}
        self.replies: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as stream:
                conn.settimeout(15)
                for line in stream:
                    if not line.strip():
                        break
                    key, _, value = line.rstrip("\n").partition(": ")
                    self.env[key] = value

                def send(command: str) -> str:
                    stream.write(command + "\n")
                    stream.flush()
                    reply = stream.readline().rstrip("\n")
                    self.replies.append(reply)
                    return reply

                reply = send("GET DATA beep 10000 4")
                digits = reply.partition("result=")[2].split(" ")[0]
                send(f'SET VARIABLE AGI_DIGITS "{digits}"')
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def fastagi() -> Iterator[_OneShotFastAGI]:
    server = _OneShotFastAGI()
    yield server
    server.close()


def test_dtmf_reaches_fastagi_get_data(
    asterisk_sandbox_factory: SandboxFactory, fastagi: _OneShotFastAGI
) -> None:
    sb = asterisk_sandbox_factory(
        dialplan={"smoke.conf": DIALPLAN}, dialplan_globals={"AGI_PORT": str(fastagi.port)}
    )

    call = sb.call(DID, "test-agi", callerid=CALLER)
    call.wait_agi("GET DATA")  # AGI drops digits that arrive between two commands
    call.send_dtmf("4321")
    event = call.wait_user_event("AgiDone")
    fastagi.thread.join(timeout=5)

    assert fastagi.error is None
    assert (event["DIGITS"], event["STATUS"]) == ("4321", "SUCCESS")
    assert fastagi.env["agi_network_script"] == "getdigits"
    assert fastagi.env["agi_callerid"] == CALLER
    assert fastagi.replies[0] == "200 result=4321"
    # `agi set debug on` transcript, as the product's tests will read it.
    transcript = "\n".join(sb.agi_debug_lines())
    assert f"AGI Tx >> agi_callerid: {CALLER}" in transcript
    assert "AGI Rx << GET DATA beep 10000 4" in transcript
    assert "AGI Tx >> 200 result=4321" in transcript


HELLO_AGI = """#!/bin/sh
# Process AGI over stdio: skip the environment block, then one command.
while read -r line && [ -n "$line" ]; do :; done
echo "SET VARIABLE GREETING \\"hello $1\\""
read -r reply
"""


def test_process_agi_script_runs_inside_chroot(
    asterisk_sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    script = tmp_path / "hello.sh"
    script.write_text(HELLO_AGI)
    sb = asterisk_sandbox_factory(dialplan={"smoke.conf": DIALPLAN}, agi_scripts=[script])

    event = sb.call(DID, "test-process-agi", callerid=CALLER).wait_user_event("ScriptDone")

    assert (event["GREETING"], event["STATUS"]) == (f"hello {CALLER}", "SUCCESS")
    assert sb.agi_dir.joinpath("hello.sh").stat().st_mode & 0o111


def test_stop_leaves_no_process_or_mount(asterisk_sandbox: AsteriskSandbox) -> None:
    assert "Local" in asterisk_sandbox.cli("core show channeltypes")
    assert pids_rooted_in(asterisk_sandbox.root)
    asterisk_sandbox.stop()

    assert pids_rooted_in(asterisk_sandbox.root) == []
    assert mounts_under(asterisk_sandbox.root) == []
