"""`callscreen serve --workers 2`: a real server process with two forked workers on one port,
a real Redis, calls played by the fake Asterisk peer. Calls are answered by both workers; a
worker killed with SIGKILL is replaced and calls go on; SIGHUP reaches every worker (a broken
rule file is refused by each, the old rules stay); SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_asterisk import Channel, by_verb, fastagi_env, tcp_peer
from support import REPO, RULES_DIR, RedisServer, free_port, wait_for

ORDINARY = "+33353010001"


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, rules: Path):
        self.proc, self.port, self.log, self.rules = proc, port, log, rules

    def workers(self) -> set[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return {int(pid) for pid in path.read_text().split()}
        except OSError:
            return set()

    def call(self) -> dict[str, str]:
        peer = tcp_peer(self.port, by_verb({}))
        peer.start(fastagi_env("screen", ("0199000001",), Channel(callerid=ORDINARY),
                               port=self.port))
        return peer.join(15).screen_vars()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def served(redis_server: RedisServer, tmp_path: Path) -> Iterator[Served]:
    rules = tmp_path / "rules"
    rules.mkdir()
    for rule in RULES_DIR.glob("*.yaml"):
        (rules / rule.name).write_text(rule.read_text())
    config = tmp_path / "callscreen.yaml"
    config.write_text(
        f"redis: {{url: '{redis_server.url}'}}\nregion: FR\nrules_dir: {rules}\n"
        "lines: [{number: '0199000001', name: home}]\nlogging: {level: INFO}\n")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "callscreen", "--config", str(config), "serve", "--port",
             str(port), "--workers", "2"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    srv = Served(proc, port, log, rules)
    try:
        assert wait_for(lambda: len(srv.workers()) == 2, 15), srv.log_text()
        assert wait_for(lambda: "FastAGI listening" in srv.log_text(), 15)
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
            for pid in srv.workers():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(10)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_calls_are_answered_by_both_workers(served: Served) -> None:
    workers = served.workers()
    before = {pid: cpu_ticks(pid) for pid in workers}
    for _ in range(60):
        v = served.call()
        assert (v["SCREEN_ACTION"], v["SCREEN_NUMBER"], v["SCREEN_DEGRADED"]) == (
            "allow", ORDINARY, "0")
    # Both accepted calls: each worker spent CPU (an idle worker spends ~none in this time).
    assert all(cpu_ticks(pid) > before[pid] for pid in workers), (before, workers)


def test_a_killed_worker_is_replaced_and_calls_go_on(served: Served) -> None:
    victim = min(served.workers())
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(served.workers()) == 2 and victim not in served.workers(), 10)
    assert "died (signal SIGKILL): starting another" in served.log_text()
    for _ in range(10):
        assert served.call()["SCREEN_ACTION"] == "allow"


def test_sighup_reaches_every_worker(served: Served) -> None:
    (served.rules / "99-broken.yaml").write_text("rules:\n  - name: x\n    when: [\n")
    served.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: served.log_text().count("reload refused") >= 2, 10), (
        served.log_text())
    assert served.call()["SCREEN_ACTION"] == "allow"  # the old rules are still in force


def test_sigterm_stops_the_parent_and_every_worker(served: Served) -> None:
    workers = served.workers()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(15) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()
    assert "FastAGI server stopped (2 workers)" in served.log_text()


def test_a_worker_started_after_a_reload_serves_the_new_rules(served: Served) -> None:
    (served.rules / "99-local.yaml").write_text(
        "rules:\n  - name: local-block\n    when: {prefix: ['+33353010001']}\n"
        "    action: block\n    reason: local\n")
    served.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: served.log_text().count("reloaded:") >= 2, 10), served.log_text()
    victim = min(served.workers())
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(served.workers()) == 2 and victim not in served.workers(), 10)
    # Whichever worker takes each call, the new rule decides it.
    assert {served.call()["SCREEN_ACTION"] for _ in range(30)} == {"block"}
