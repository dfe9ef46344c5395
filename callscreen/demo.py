"""`callscreen demo`: try callscreen without a PBX.

Starts the same Asterisk 22 sandbox the integration tests use (a Debian sid chroot), a private
redis-server and the real FastAGI server, loads the shipped dialplan unchanged, places five calls
and prints what happened to each and why. Needs root, mmdebstrap (first run builds the chroot,
~20 s) and redis-server; runs from a source checkout.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from callscreen.sandbox import asterisk as sb_mod
from callscreen.sandbox import product

DID = "0199000001"
DEMO_DIALPLAN = r"""
[demo-in]
exten => _X.,1,Gosub(callscreen,s,1(${EXTEN}))
 same => n,UserEvent(Screened,ACTION: ${SCREEN_ACTION},REASON: ${SCREEN_REASON},RULE: ${SCREEN_RULE},SCORE: ${SCREEN_SCORE},NUMBER: ${SCREEN_NUMBER},DEGRADED: ${SCREEN_DEGRADED})
 same => n,Hangup()

[demo-phone]
exten => _X.,1,Gosub(callscreen-outbound,s,1(${EXTEN}))
 same => n,UserEvent(Learned,RESULT: ${CALLSCREEN_RESULT})
 same => n,Hangup()
"""


@dataclass
class Scene:
    who: str
    callerid: str
    behaviour: str  # "types the code" | "stays silent" | "" (no challenge expected)


SCENES = [
    Scene("a known contact (we called them last week)", "+33353010001", ""),
    Scene("a robot spoofing a neighbour's number", "+33199000042", "stays silent"),
    Scene("a neighbour, a real person", "+33199000043", "types the code"),
    Scene("a telemarketing platform (ARCEP range 0162)", "+33162000000", ""),
    Scene("an anonymous caller who types the code", "anonymous", "types the code"),
]


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("callscreen demo needs redis-server (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


def run(echo: Callable[[str], None] = print) -> int:
    reason = sb_mod.unavailable_reason()
    if reason is not None:
        echo(f"callscreen demo cannot run here: {reason}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="callscreen-demo-"))
    redis_proc, redis_url = _start_redis(workdir)
    screener = None
    try:
        echo("preparing the Asterisk 22 sandbox (the first run builds it, ~20 s)...")
        root = sb_mod.ensure_rootfs()
        product.install(root)
        screener = product.Screener(workdir, root, redis_url, DID)
        port = screener.start()
        script = product.agi_script(workdir)
        with sb_mod.AsteriskSandbox(
            root, dialplan_files=[product.DIALPLAN_FILE], dialplan={"demo.conf": DEMO_DIALPLAN},
            dialplan_globals={"CALLSCREEN_SERVER": f"127.0.0.1:{port}"}, agi_scripts=[script],
        ) as sb:
            echo(f"our line: {DID} (home, France). Placing five calls.\n")
            learned = sb.call("0353010001", "demo-phone", callerid="100")
            learned.wait_user_event("Learned")
            time.sleep(0.2)  # the contact is written once the outbound call moved on
            for scene in SCENES:
                _play(sb, scene, echo)
        return 0
    finally:
        if screener is not None:
            screener.stop()
        redis_proc.terminate()
        redis_proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def _play(sb: sb_mod.AsteriskSandbox, scene: Scene, echo: Callable[[str], None]) -> None:
    call = sb.call(DID, "demo-in", callerid=scene.callerid)
    heard = ""
    if scene.behaviour:
        call.wait_agi("GET DATA", timeout=20)
        assert sb.ami is not None
        code = sb.ami.getvar(call.callee_channel(), "SCREEN_CHALLENGE_CODE")
        heard = f"challenged with code {code}, {scene.behaviour}; "
        if scene.behaviour == "types the code":
            call.send_dtmf(code)
    ev = call.wait_user_event("Screened", timeout=40)
    echo(f"{scene.callerid:<14} {scene.who}")
    echo(f"{'':<14} -> {ev['ACTION'].upper()}: {heard}rule {ev['RULE']}, reason "
         f"{ev['REASON']}, score {ev['SCORE']}\n")
