"""Helpers shared by the end-to-end tests: place calls, answer challenges, read Redis.

(Named asterisk_calls, not helpers: this folder is on sys.path for the tests.)
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from callscreen.sandbox.asterisk import AsteriskSandbox

DID = "0199000001"
LINE = "+33199000001"

# The test contexts: [test-in] screens a call like an inbound route (NAME_URI: a caller name to
# URI-decode first, ATTEST: the STIR/SHAKEN test hook) and reports the verdict as a UserEvent;
# [test-phone] is a phone with the feature codes and the outbound hook.
TEST_DIALPLAN = r"""
[test-in]
exten => _X.,1,GotoIf($["${NAME_URI}" = ""]?screen)
 same => n,Set(CALLERID(name)=${URIDECODE(${NAME_URI})})
 same => n(screen),Gosub(callscreen,s,1(${EXTEN},${ATTEST}))
 same => n,UserEvent(Screened,ACTION: ${SCREEN_ACTION},REASON: ${SCREEN_REASON},RULE: ${SCREEN_RULE},SCORE: ${SCREEN_SCORE},NUMBER: ${SCREEN_NUMBER},DEGRADED: ${SCREEN_DEGRADED})
 same => n,Hangup()

[test-phone]
include => callscreen-features
exten => _X.,1,Gosub(callscreen-outbound,s,1(${EXTEN}))
 same => n,UserEvent(Learned,RESULT: ${CALLSCREEN_RESULT})
 same => n,Hangup()
"""


def screened(sb: AsteriskSandbox, caller: str, timeout: float = 15, did: str = DID,
             context: str = "test-in", **variables: str) -> dict[str, str]:
    call = sb.call(did, context, callerid=caller, variables=variables or None)
    return dict(call.wait_user_event("Screened", timeout=timeout))


def answer_challenge(sb: AsteriskSandbox, caller: str, digits: Callable[[str], str] | None,
                     rounds: int = 1, context: str = "test-in", **variables: str
                     ) -> tuple[dict[str, str], list[str]]:
    """Place a call that gets challenged; type digits(code) on each of `rounds` GET DATA."""
    call = sb.call(DID, context, callerid=caller, variables=variables or None)
    codes = []
    for _ in range(rounds):
        call.wait_agi("GET DATA", timeout=20)
        code = sb.ami.getvar(call.callee_channel(), "SCREEN_CHALLENGE_CODE") if sb.ami else ""
        codes.append(code)
        if digits is not None:
            call.send_dtmf(digits(code))
    return dict(call.wait_user_event("Screened", timeout=30)), codes


def record(rdb: redis.Redis, number: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in rdb.hgetall(f"cs:n:{number}").items()}



