"""Calls through a real Asterisk 22 while things break: `python -m bench.soak [--rate 8]`.

A steady stream of Local-channel calls (an allowed caller, through the shipped
`Gosub(callscreen,s,1(...))`) runs through phases of `--phase-seconds` each:

  baseline         nothing wrong
  redis-kill       redis-server SIGKILLed at the start, restarted half-way (same port)
  redis-pause      redis-server SIGSTOPped for the first half, then SIGCONT
  fastagi-restart  `callscreen serve` SIGKILLed at the start (the subroutine falls back to the
                   process AGI), started again half-way
  broken-rules     a broken rules file and SIGHUP at the start (refused: the old rules stay),
                   removed and SIGHUP again half-way
  recovered        nothing wrong again

For each phase: calls placed, calls decided (the dialplan saw SCREEN_ACTION), calls lost (no
decision within 10 s: the target is 0), calls degraded (decided by fail_mode), p50/p99/max time
from Originate to the decision; at the end, the call records the server spooled while Redis was
away and replayed once it was back (left in the spool: the target is 0). Loopback only,
bounded; needs the Asterisk test sandbox (root, mmdebstrap). Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.common import free_port, percentiles, start_callscreen, start_redis
from callscreen.sandbox import asterisk as sb_mod
from callscreen.sandbox import product
from callscreen.spool import Spool

DID = "0199000001"
CALLER = "+33353010001"
DIALPLAN = r"""
[soak]
exten => _X.,1,Gosub(callscreen,s,1(${EXTEN}))
 same => n,UserEvent(Done,ACTION: ${SCREEN_ACTION},DEGRADED: ${SCREEN_DEGRADED})
 same => n,Hangup()
"""
BROKEN_RULES = "rules:\n  - name: broken\n    when: {caller_in: [\n"
PHASES = ("baseline", "redis-kill", "redis-pause", "fastagi-restart", "broken-rules",
          "recovered")


class Process:
    """A child that the soak signals (SIGKILL waits for it to be gone) and stops at the end."""

    proc: subprocess.Popen[bytes] | None = None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)


class Redis(Process):
    """A redis-server on a fixed port that can be killed, paused and restarted."""

    def __init__(self, workdir: Path):
        self.port, self.workdir = free_port(), workdir
        self.start()

    def start(self) -> None:
        self.proc = start_redis(self.workdir, self.port)


class Server(Process):
    """`callscreen serve` in its own process, restartable on the same port."""

    def __init__(self, config: Path):
        self.config, self.port = config, free_port()
        self.start()

    def start(self) -> None:
        self.proc = start_callscreen(self.config, self.port)


@dataclass
class Phase:
    name: str
    placed: int = 0
    decided: int = 0
    degraded: int = 0
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self) -> dict[str, object]:
        return {"placed": self.placed, "decided": self.decided,
                "lost": self.placed - self.decided, "degraded": self.degraded,
                **(percentiles(self.latencies) if self.latencies else {})}


def one_call(sb: sb_mod.AsteriskSandbox, phase: Phase) -> None:
    started = time.perf_counter()
    with phase.lock:
        phase.placed += 1
    try:
        event = sb.call(DID, "soak", callerid=CALLER).wait_user_event("Done", timeout=10)
    except Exception:  # noqa: BLE001 - a lost call, counted by placed - decided
        return
    headers = {k.lower(): v for k, v in event.items()}
    with phase.lock:
        if headers.get("action"):
            phase.decided += 1
            phase.latencies.append(time.perf_counter() - started)
        if headers.get("degraded") == "1":
            phase.degraded += 1


def run_phase(sb: sb_mod.AsteriskSandbox, phase: Phase, seconds: float, rate: float,
              at_start: object, half_way: object) -> None:
    calls: list[threading.Thread] = []
    started = time.monotonic()
    if callable(at_start):
        at_start()
    fixed = False
    n = 0
    while (elapsed := time.monotonic() - started) < seconds:
        if not fixed and elapsed >= seconds / 2:
            if callable(half_way):
                half_way()
            fixed = True
        thread = threading.Thread(target=one_call, args=(sb, phase), daemon=True)
        thread.start()
        calls.append(thread)
        n += 1
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
    for thread in calls:
        thread.join(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=8.0, help="calls per second")
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    args = parser.parse_args()
    reason = sb_mod.unavailable_reason()
    if reason:
        raise SystemExit(f"Asterisk sandbox unavailable: {reason}")
    root = sb_mod.ensure_rootfs()
    product.install(root)
    with tempfile.TemporaryDirectory(prefix="cs-soak-") as tmp:
        workdir = Path(tmp)
        rules = workdir / "rules"
        shutil.copytree(product.RULES, rules)
        db = Redis(workdir)
        url = f"redis://127.0.0.1:{db.port}/0"
        config = workdir / "callscreen.yaml"
        spool_dir = workdir / "spool"
        config.write_text(product.config_text(url, str(rules), DID,
                                              extra=f"spool_dir: {spool_dir}\n"))
        product.write_chroot_config(root, product.config_text(url, f"{product.SRC}/rules", DID))
        server = Server(config)
        broken = rules / "99-broken.yaml"

        def break_rules() -> None:
            broken.write_text(BROKEN_RULES)
            server.signal(signal.SIGHUP)

        def mend_rules() -> None:
            broken.unlink()
            server.signal(signal.SIGHUP)

        faults = {
            "redis-kill": (lambda: db.signal(signal.SIGKILL), db.start),
            "redis-pause": (lambda: db.signal(signal.SIGSTOP),
                            lambda: db.signal(signal.SIGCONT)),
            "fastagi-restart": (lambda: server.signal(signal.SIGKILL), server.start),
            "broken-rules": (break_rules, mend_rules),
        }
        phases = {name: Phase(name) for name in PHASES}
        try:
            with sb_mod.AsteriskSandbox(
                root, dialplan_files=[product.DIALPLAN_FILE], dialplan={"soak.conf": DIALPLAN},
                dialplan_globals={"CALLSCREEN_SERVER": f"127.0.0.1:{server.port}"},
                agi_scripts=[product.agi_script(workdir)], agi_debug=False, verbose=0,
            ) as sb:
                assert sb.ami is not None
                sb.ami.action("Events", {"EventMask": "call,user"})
                for name in PHASES:
                    at_start, half_way = faults.get(name, (None, None))
                    run_phase(sb, phases[name], args.phase_seconds, args.rate, at_start,
                              half_way)
            # The server replays its spool every 15 s: wait for it, then count what it applied.
            waiting = Spool(spool_dir)
            deadline = time.monotonic() + 40
            while waiting.pending() and time.monotonic() < deadline:
                time.sleep(0.5)
            left = waiting.pending()
            replayed = sum(1 for _ in redis.Redis(port=db.port).scan_iter("cs:w:*", count=1000))
        finally:
            server.stop()
            db.stop()
    reports = {name: phase.report() for name, phase in phases.items()}
    print(json.dumps({"rate_per_s": args.rate, "phase_seconds": args.phase_seconds,
                      "phases": reports,
                      "lost_total": sum(p.placed - p.decided for p in phases.values()),
                      "writes_spooled_and_replayed": replayed, "writes_left_in_spool": left},
                     indent=2))


if __name__ == "__main__":
    main()
