"""The soak benchmark, short: calls through the real Asterisk while Redis is killed and paused,
the FastAGI server is killed and restarted and a broken rules file is reloaded. No call may be
lost (every call gets a decision), and the faults must really have been felt (degraded calls
while Redis was away)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_call_is_lost_while_things_break(asterisk_rootfs: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--rate", "4",
                           "--phase-seconds", "3"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    phases = data["phases"]
    assert data["lost_total"] == 0, phases
    assert all(p["placed"] > 0 and p["decided"] == p["placed"] for p in phases.values())
    assert phases["baseline"]["degraded"] == 0
    assert phases["redis-kill"]["degraded"] > 0 and phases["redis-pause"]["degraded"] > 0
    assert phases["broken-rules"]["degraded"] == 0
