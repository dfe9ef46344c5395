"""The process AGI (agi_scripts/callscreen.agi) as Asterisk runs it: a child process, the env block
on its stdin, commands on its stdout, replies on its stdin, SIGHUP when the channel hangs up.

Asterisk 22 (res_agi.c, agi_exec_full -> launch_script -> setup_env) runs
``AGI(callscreen.agi,screen,<did>,<attestation>)`` as ``callscreen.agi screen <did> <attestation>``
and ALSO sends every AGI() argument after the script as agi_arg_N: agi_arg_1 is the route,
agi_arg_2 the called number. tests/fake_asterisk.process_env reproduces that layout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_asterisk import (
    DEAD_511,
    Channel,
    Do,
    FakeAsterisk,
    PipeIO,
    Slow,
    Steps,
    by_verb,
    process_env,
    realistic_reply,
    type_code,
)
from support import REPO, RedisServer, lines_config

from callscreen.store import Store

SCRIPT = REPO / "agi_scripts" / "callscreen.agi"
LINE = "+33199000001"
ORDINARY = "+33353010001"
NEIGHBOUR = "+33199000002"
INVALID = "+33639980001"  # FR 06 39 98: invalid on purpose, challenged whatever the line
RUN_TIMEOUT_S = 30.0  # a start-up is well under a second; this only stops a hung test


def write_config(path: Path, redis_url: str, extra: str = "") -> Path:
    path.write_text(
        f"redis: {{url: '{redis_url}'}}\n"
        "region: FR\n"
        "lines:\n"
        '  - {number: "01 99 00 00 01", name: home}\n'
        '  - {number: "+12025550100", name: us-office}\n'
        f"rules_dir: {REPO / 'rules'}\n"
        "logging: {level: WARNING, target: stderr}\n" + extra
    )
    return path


@pytest.fixture
def config(tmp_path: Path, redis_server: RedisServer, rdb: Any) -> Path:
    return write_config(tmp_path / "callscreen.yaml", redis_server.url)


@pytest.fixture
def store(config: Path, redis_server: RedisServer) -> Store:
    cfg = lines_config(redis_server.url, "region: FR\nlines: ['01 99 00 00 01']\n")
    return Store.from_config(cfg)


class AGIProcess:
    def __init__(self, config: Path, argv: Sequence[str], stderr_path: Path):
        env = dict(os.environ, CALLSCREEN_CONFIG=str(config), PYTHONPATH=str(REPO))
        self.stderr_file = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr_file, env=env, bufsize=0, cwd="/",
        )
        self.stderr_path = stderr_path

    def sighup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def peer(self, respond: Any = realistic_reply) -> FakeAsterisk:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        return FakeAsterisk(PipeIO(self.proc.stdout, self.proc.stdin), respond, idle_timeout=20)

    def finish(self, peer: FakeAsterisk) -> int:
        rc = self.proc.wait(RUN_TIMEOUT_S)
        peer.join(10)
        peer.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.stderr_file.close()
        return rc

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def agi(tmp_path: Path) -> Iterator[Any]:
    started: list[AGIProcess] = []

    def run(config: Path, env_block: bytes, argv: Sequence[str] = ("screen", "0199000001", ""),
            respond: Any = realistic_reply, make_respond: Any = None
            ) -> tuple[int, FakeAsterisk, AGIProcess]:
        p = AGIProcess(config, argv, tmp_path / f"stderr-{len(started)}.txt")
        started.append(p)
        peer = p.peer(make_respond(p) if make_respond else respond)
        peer.start(env_block)
        return p.finish(peer), peer, p

    yield run
    for p in started:
        p.kill()


def screen_env(caller: str, did: str = "0199000001") -> bytes:
    return process_env(("screen", did, ""), Channel(callerid=caller))


def test_screen_sets_the_verdict_and_exits_0(agi: Any, config: Path, store: Store) -> None:
    rc, peer, p = agi(config, screen_env(ORDINARY))
    assert rc == 0
    assert set(peer.verbs) == {"SET VARIABLE"}
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_NUMBER"], v["SCREEN_DEGRADED"]) == (
        "allow", ORDINARY, "0")
    assert peer.eof  # the process closed its stdout: done
    assert store.facts(ORDINARY, None, time.time()).record.calls == 1
    assert p.stderr == ""  # nothing on Asterisk's console for a normal call (pyst2 would)


def test_blocklisted_caller_is_blocked(agi: Any, config: Path, store: Store) -> None:
    store.list_add("block", ORDINARY, None, None, "test")
    rc, peer, p = agi(config, screen_env(ORDINARY))
    assert rc == 0
    assert (peer.screen_vars()["SCREEN_ACTION"], peer.screen_vars()["SCREEN_RULE"]) == (
        "block", "blocklist")


@pytest.mark.parametrize("content", ["region: [broken\n", "region: XX\n", None])
def test_broken_config_exits_0_without_a_command(agi: Any, tmp_path: Path,
                                                 content: str | None) -> None:
    config = tmp_path / "broken.yaml"
    if content is None:  # the rules directory is missing
        config.write_text(f"rules_dir: {tmp_path / 'no-such-rules'}\n")
    else:
        config.write_text(content)
    rc, peer, p = agi(config, screen_env(ORDINARY))
    assert rc == 0
    assert peer.commands == []  # the dialplan default applies
    assert "callscreen cannot start" in p.stderr


def test_challenge_passed_over_stdio(agi: Any, config: Path, store: Store) -> None:
    rc, peer, p = agi(config, screen_env(INVALID), respond=by_verb({"GET DATA": type_code()}))
    assert rc == 0
    assert peer.verbs[:5] == ["ANSWER", "SET VARIABLE", "STREAM FILE", "SAY DIGITS", "GET DATA"]
    v = peer.screen_vars()
    assert (v["SCREEN_ACTION"], v["SCREEN_REASON"], v["SCREEN_RULE"]) == (
        "allow", "challenge-passed", "invalid-number")
    assert store.facts(INVALID, None, time.time()).record.passes == 1


def test_sighup_mid_challenge_exits_0_and_records_an_abandon(agi: Any, config: Path,
                                                              store: Store) -> None:
    """The caller hangs up while GET DATA runs: Asterisk sends SIGHUP (whose default action
    would kill the process before it records anything) and GET DATA returns -1."""

    def make_respond(p: AGIProcess) -> Any:
        return by_verb({"GET DATA": Steps(Do(p.sighup), Slow(0.2, "200 result=-1"))})

    started = time.monotonic()
    rc, peer, p = agi(config, screen_env(INVALID), make_respond=make_respond)
    assert rc == 0, f"killed by signal {-rc}" if rc < 0 else rc
    assert time.monotonic() - started < 10
    assert peer.verbs[-1] == "GET DATA"  # nothing after the hangup
    assert peer.screen_vars().get("SCREEN_ACTION", "") == ""
    assert store.facts(INVALID, None, time.time()).record.abandons == 1
    assert p.stderr == ""


def test_sighup_between_commands_then_dead_channel(agi: Any, config: Path,
                                                   store: Store) -> None:
    """SIGHUP arrives while the script is between commands; Asterisk then answers in dead mode
    (511 to what a dead channel cannot do)."""

    def make_respond(p: AGIProcess) -> Any:
        return by_verb({
            "STREAM FILE": Steps("200 result=0 endpos=8000", Do(p.sighup)),
            "SAY DIGITS": DEAD_511,
            "GET DATA": DEAD_511,
        })

    rc, peer, p = agi(config, screen_env(INVALID), make_respond=make_respond)
    assert rc == 0
    # The hangup ends the challenge at the command in flight: the one whose reply carried the
    # SIGHUP (a known hangup wins over a reply already in the pipe) or the next one (511).
    assert peer.verbs[-1] in ("STREAM FILE", "SAY DIGITS")
    assert "GET DATA" not in peer.verbs
    assert store.facts(INVALID, None, time.time()).record.abandons == 1


def test_stdin_closed_mid_call_exits_0(agi: Any, config: Path, store: Store) -> None:
    """Asterisk closes the pipes (run_agi ended): EOF is a hangup, not a crash."""
    from fake_asterisk import CLOSE

    rc, peer, p = agi(config, screen_env(INVALID), respond=by_verb({"GET DATA": CLOSE}))
    assert rc == 0
    assert store.facts(INVALID, None, time.time()).record.abandons == 1
    assert "Traceback" not in p.stderr


def test_health_over_stdio(agi: Any, config: Path) -> None:
    rc, peer, p = agi(config, process_env(("health",)), argv=("health",))
    assert rc == 0 and peer.variables == {"CALLSCREEN_HEALTH": "ok"}


def test_neighbour_is_challenged_over_stdio_with_asterisks_argument_layout(
        agi: Any, config: Path) -> None:
    rc, peer, p = agi(config, screen_env(NEIGHBOUR), respond=by_verb({"GET DATA": type_code()}))
    assert rc == 0
    v = peer.screen_vars()
    assert (v["SCREEN_RULE"], v["SCREEN_REASON"]) == ("neighbour-spoofing", "challenge-passed")


def test_report_over_stdio_with_asterisks_argument_layout(agi: Any, config: Path,
                                                          store: Store) -> None:
    rc, peer, p = agi(config, screen_env(ORDINARY))
    assert store.facts(ORDINARY, None, time.time()).record.calls == 1
    rc, peer, p = agi(config, process_env(("report", "0199000001", "")),
                      argv=("report", "0199000001", ""))
    assert peer.variables == {"CALLSCREEN_RESULT": "ok"}
    assert store.facts(ORDINARY, None, time.time()).record.reports == 1
